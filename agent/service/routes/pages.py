"""The web pages (chat, operator console, API docs) and their static files. Pages are public; every call they make
needs a key."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from agent.service.deps import BackendsDep

STATIC = Path(__file__).parent.parent / "static"
SWAGGER_ASSETS = Path(fastapi_offline.__file__).parent / "static"
# Swagger UI styles its elements inline; the rest of its page is ours.
DOCS_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; "
            "base-uri 'none'; form-action 'self'")
router = APIRouter(include_in_schema=False)


def operator_csp(report_style_hash: str) -> str:
    """The console shows gate reports in a sandboxed srcdoc frame, which inherits this policy: their plots are data:
    images and their one stylesheet is allowed by hash."""
    return (f"default-src 'self'; img-src 'self' data:; style-src 'self' {report_style_hash}; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/operator")
def operator_console(backends: BackendsDep) -> FileResponse:
    """The page is public; every call it makes needs an operator key."""
    return FileResponse(STATIC / "operator.html", headers={"Cache-Control": "no-cache",
                                                           "Content-Security-Policy": operator_csp(backends.report_style_hash)})


@router.get("/docs")
def api_docs() -> FileResponse:
    """Swagger UI, from files served here (FastAPI's own page loads them from a CDN, which the CSP blocks)."""
    return FileResponse(STATIC / "docs.html",
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": DOCS_CSP})


def mount_static(app: FastAPI) -> None:
    """Swagger UI's assets and ours; mounted last, after every route."""
    app.mount("/static/docs-assets", StaticFiles(directory=SWAGGER_ASSETS), name="docs-assets")
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
