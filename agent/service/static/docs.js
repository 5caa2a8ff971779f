// Swagger UI over this service's OpenAPI schema; its files are served from here, as the CSP allows no CDN.
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
