"""The committed build is the build of the committed sources, and the api serves it.

`dist/source-hash.txt` is written by the build (services/api/console/vite.config.js) from every
source file it read; recomputed here by the same rule, a source edited without `make console`
fails this test. No Node is needed to run it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from services.api.routes.console import DIST
from shared.settings import Settings
from tests.support.apps import api_app

CONSOLE = DIST.parent
SOURCES = ("index.html", "package.json", "package-lock.json", "vite.config.js", "src")


def source_hash(root: Path = CONSOLE) -> str:
    """sha256 over "<posix path>\\n<sha256 of its bytes>\\n" for each source file, by path."""
    paths: list[Path] = []
    for name in SOURCES:
        top = root / name
        paths.extend(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else paths.append(
            top
        )
    whole = hashlib.sha256()
    for rel in sorted(p.relative_to(root).as_posix() for p in paths):
        one = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        whole.update(f"{rel}\n{one}\n".encode())
    return whole.hexdigest()


def test_the_committed_build_is_of_the_committed_sources() -> None:
    recorded = (DIST / "source-hash.txt").read_text().strip()
    assert recorded == source_hash(), (
        "services/api/console/dist is stale: its sources changed since it was built."
        " Run `make console` and commit dist/"
    )


def test_the_hash_sees_a_changed_source(tmp_path: Path) -> None:
    for name in SOURCES:
        src = CONSOLE / name
        dst = tmp_path / name
        if src.is_dir():
            for p in src.rglob("*"):
                if p.is_file():
                    (dst / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                    (dst / p.relative_to(src)).write_bytes(p.read_bytes())
        else:
            dst.write_bytes(src.read_bytes())
    assert source_hash(tmp_path) == source_hash()
    (tmp_path / "src" / "main.js").write_text("// edited\n", encoding="utf-8")
    assert source_hash(tmp_path) != source_hash()


def test_the_page_names_only_built_assets() -> None:
    page = (DIST / "index.html").read_text()
    named = re.findall(r'(?:src|href)="/assets/([^"]+)"', page)
    assert named, page
    assert all((DIST / "assets" / n).is_file() for n in named), named


async def test_the_api_serves_the_console(settings: Settings) -> None:
    async with api_app(settings.model_copy(update={"collab_enabled": True})) as (_, http):
        page = (DIST / "index.html").read_text()
        for path in ("/", "/d/0f8fad5b-d9cb-469f-a165-70867728950e", "/d/anything"):
            r = await http.get(path)
            assert r.status_code == 200, path
            assert r.text == page
            assert r.headers["content-type"].startswith("text/html")
            assert r.headers["cache-control"] == "no-cache"
        asset = re.findall(r'src="/assets/([^"]+\.js)"', page)[0]
        r = await http.get(f"/assets/{asset}")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/javascript")
        assert "immutable" in r.headers["cache-control"]
        for missing in ("/assets/nope.js", "/assets/..%2Fsource-hash.txt", "/assets/../index.html"):
            r = await http.get(missing)
            assert r.status_code == 404, missing
        r = await http.get("/console/config.json")
        assert r.json() == {"matcher_port": settings.matcher_port, "collab_enabled": True}
        # The console is not part of the API contract.
        spec = (await http.get("/v1/openapi.json")).json()
        console = {"/", "/d/{document_id}", "/assets/{name}", "/console/config.json"}
        assert console.isdisjoint(spec["paths"]), sorted(spec["paths"])
