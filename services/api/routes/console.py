"""The console (services/api/console/): its built files at `/`, `/d/{id}` (a document's own
address, so a link can be shared: the page routes itself) and `/assets/…`, and the little it
must know about this deployment at `/console/config.json`.

The build is committed (`make console` rebuilds it), so serving it needs no Node. None of these
routes is part of the API contract: they stay out of the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse, JSONResponse

from shared.infra.problems import problem
from shared.settings import Settings

DIST = Path(__file__).resolve().parent.parent / "console" / "dist"
# The page itself is revalidated on every load (it names the current assets); the assets have
# content hashes in their names, so they never change under one name.
PAGE_CACHE = {"Cache-Control": "no-cache"}
ASSET_CACHE = {"Cache-Control": "public, max-age=31536000, immutable"}
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def router(settings: Settings, dist: Path = DIST) -> APIRouter:
    r = APIRouter(include_in_schema=False)
    # Only the files the build wrote are served: a name is looked up, never joined into a path.
    assets = {p.name: p for p in (dist / "assets").glob("*") if p.is_file()}
    index = dist / "index.html"
    config = {
        # The browser reaches the matcher on the host it reached us on, at the matcher's port.
        "matcher_port": settings.matcher_port,
        "collab_enabled": settings.collab_enabled,
    }

    def page() -> Response:
        if not index.is_file():
            return problem(503, "the console is not built: run `make console`")
        return FileResponse(index, media_type="text/html; charset=utf-8", headers=PAGE_CACHE)

    @r.get("/")
    async def home() -> Response:
        return page()

    @r.get("/d/{document_id}")
    async def document(document_id: str) -> Response:
        # Any id: the page asks the api for the document and says plainly if it cannot be opened.
        return page()

    @r.get("/console/config.json")
    async def console_config() -> Response:
        return JSONResponse(config, headers=PAGE_CACHE)

    @r.get("/assets/{name}")
    async def asset(name: str) -> Response:
        path = assets.get(name)
        if path is None:
            return problem(404, f"no console asset {name}")
        media = TYPES.get(path.suffix)
        return FileResponse(path, media_type=media, headers=ASSET_CACHE)

    return r
