"""docs/api.md documents exactly the routes the application serves, and the README points to it."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import Route

from app.main import create_app
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
API_DOC = ROOT / "docs" / "api.md"
README = ROOT / "README.md"
# FastAPI's own documentation routes: described in prose, not in the table.
FASTAPI_DOCS_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
AUTO_METHODS = {"HEAD", "OPTIONS"}

Endpoint = tuple[str, str]


def served_routes() -> set[Endpoint]:
    """(method, path) of every route of the app's own router; mounted apps (/web, /simulator) left out."""
    app = create_app(Settings(_env_file=None, database_url="sqlite+aiosqlite:///:memory:"))
    routes: set[Endpoint] = set()
    for context in iter_route_contexts(app.routes):
        path = context.path
        if isinstance(context.original_route, APIRoute | Route) and path and path not in FASTAPI_DOCS_ROUTES:
            routes.update((method, path) for method in (context.methods or set()) - AUTO_METHODS)
    return routes


def documented_routes(markdown: str) -> set[Endpoint]:
    """The rows of the table under `## Routes`: its first two columns are method and path."""
    section = re.search(r"^## Routes\n(.*?)(?=^## |\Z)", markdown, flags=re.MULTILINE | re.DOTALL)
    assert section is not None, "docs/api.md has no '## Routes' section"
    rows: set[Endpoint] = set()
    for line in section.group(1).splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and len(cells) >= 2 and cells[0].isupper() and cells[1].startswith("/"):
            rows.add((cells[0], cells[1]))
    return rows


def test_the_route_table_lists_exactly_the_served_routes() -> None:
    served = served_routes()
    documented = documented_routes(API_DOC.read_text(encoding="utf-8"))
    missing = sorted(served - documented)
    unserved = sorted(documented - served)
    assert (missing, unserved) == ([], []), (
        f"docs/api.md's route table is out of date.\nServed but not documented: {missing}\n"
        f"Documented but not served: {unserved}"
    )


def test_the_readme_links_to_the_api_doc() -> None:
    assert "(docs/api.md)" in README.read_text(encoding="utf-8"), "README.md does not link to docs/api.md"
