"""/docs and /redoc: FastAPI's own Swagger UI and ReDoc pages, with their bundles served by this server (see
`web.DOCS_ASSETS`) instead of a CDN, so they work offline.

FastAPI writes these pages with inline code (Swagger UI's start-up script, ReDoc's page style); each page's
Content-Security-Policy allows exactly that, by hash, and no other inline script. ReDoc needs two more: its
styled-components write `<style>` elements as it starts, before it reads any nonce, and its search runs in a
worker made from a blob: URL; so /redoc allows inline styles and blob: workers (never an inline script; the
page shows nothing but this server's own OpenAPI document). Its "API docs by Redocly" logo, an image from
Redocly's CDN, stays blocked: ReDoc then leaves it out."""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.responses import HTMLResponse

from app.api.routes.web import content_security_policy, page_headers

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS = "/web"

# An inline <script> or <style>: one without a src attribute.
_INLINE = re.compile(r"<(script|style)\b(?P<attrs>[^>]*)>(?P<body>.*?)</\1\s*>", re.DOTALL | re.IGNORECASE)

router = APIRouter(include_in_schema=False)


def _source_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def with_policy(page: HTMLResponse, *, for_redoc: bool = False) -> HTMLResponse:
    """The page with a Content-Security-Policy that allows its own inline scripts and styles by hash."""
    scripts: list[str] = []
    styles: list[str] = []
    for match in _INLINE.finditer(bytes(page.body).decode()):
        if re.search(r"\bsrc\s*=", match["attrs"]):
            continue
        (scripts if match[1].lower() == "script" else styles).append(_source_hash(match["body"]))
    workers: list[str] = []
    if for_redoc:
        # With a hash beside it, a browser would ignore 'unsafe-inline'.
        styles = ["'unsafe-inline'"]
        workers = ["blob:"]
    policy = content_security_policy(script_src=scripts, style_src=styles, worker_src=workers)
    page.headers.update(page_headers(policy))
    return page


def _root_path(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get(DOCS_URL)
async def get_swagger_ui(request: Request) -> HTMLResponse:
    root = _root_path(request)
    app = request.app
    return with_policy(
        get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.svg",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
    )


@router.get(OAUTH2_REDIRECT_URL)
async def get_swagger_ui_oauth2_redirect() -> HTMLResponse:
    return with_policy(get_swagger_ui_oauth2_redirect_html())


@router.get(REDOC_URL)
async def get_redoc(request: Request) -> HTMLResponse:
    root = _root_path(request)
    app = request.app
    return with_policy(
        get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS}/favicon.svg",
            with_google_fonts=False,
        ),
        for_redoc=True,
    )
