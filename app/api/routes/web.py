"""The browser playground: static HTML, CSS and ES modules from app/web, no build step."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

WEB_DIR = Path(__file__).resolve().parent.parent.parent / "web"
# Swagger UI's and ReDoc's bundles (swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js) come from the
# fastapi-offline package's files, served beside the playground's own under /web: /docs works offline.
DOCS_ASSETS = ("fastapi_offline", "static")


def content_security_policy(
    *, script_src: Iterable[str] = (), style_src: Iterable[str] = (), worker_src: Iterable[str] = ()
) -> str:
    """Scripts, styles and fetches only from this origin (plus the given sources, e.g. one inline script's
    hash), no plugins, no framing. Model output is put on the page as text nodes; this is the second line
    of defence."""
    return "; ".join(
        [
            "default-src 'self'",
            " ".join(["script-src 'self'", *script_src]),
            " ".join(["style-src 'self'", *style_src]),
            " ".join(["worker-src 'self'", *worker_src]),
            "img-src 'self' data:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def page_headers(policy: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": policy,
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        # Revalidate every time (cheap: ETag / Last-Modified), so a new deployment's modules load together.
        "Cache-Control": "no-cache",
    }


CONTENT_SECURITY_POLICY = content_security_policy()
PAGE_HEADERS = page_headers(CONTENT_SECURITY_POLICY)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def playground() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


class WebFiles(StaticFiles):
    """The playground's files, with the page's headers (and JavaScript served as such for ES modules)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        for name, value in PAGE_HEADERS.items():
            response.headers.setdefault(name, value)
        if path.endswith(".js"):
            response.headers["Content-Type"] = "text/javascript; charset=utf-8"
        return response


def static_files() -> StaticFiles:
    # The playground's own directory comes first: a file of the same name in the package never shadows it.
    return WebFiles(directory=WEB_DIR, packages=[DOCS_ASSETS], check_dir=False)
