"""The service's routers, one per concern; ``agent.service.app.assemble`` includes them."""
