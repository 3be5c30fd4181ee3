"""The edit lane (services/api/editlane.py) answers PUT content in front of the router: it must
answer exactly as the regular route does, which still serves ids in any other spelling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from deploy.embedded import Valkey, free_port
from services.api.app import create_app
from shared.settings import Settings
from tests.conftest import Servers, make_settings
from tests.support.users import User, create_doc, edit, signup


async def put(api: httpx.AsyncClient, user: User, doc_id: str, body: bytes) -> httpx.Response:
    headers = {**user.auth, "Content-Type": "application/json"}
    return await api.put(f"/v1/documents/{doc_id}/content", content=body, headers=headers)


def same(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code
    assert a.headers["content-type"] == b.headers["content-type"]
    assert a.headers.get("www-authenticate") == b.headers.get("www-authenticate")


async def test_lane_and_route_give_the_same_answers(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    doc_id = (await create_doc(api, alice))["id"]
    # Lowercase: the lane. Uppercase is a valid UUID the lane leaves to the router.
    lane = await edit(api, alice, doc_id, "one")
    route = await edit(api, alice, doc_id.upper(), "two")
    same(lane, route)
    assert lane.json() == {"id": doc_id, "version": 1, "saved_version": 0, "status": "saving"}
    assert route.json() == {"id": doc_id, "version": 2, "saved_version": 0, "status": "saving"}
    got = (await api.get(f"/v1/documents/{doc_id}", headers=alice.auth)).json()
    assert (got["content"], got["version"]) == ("two", 2)

    cases: list[tuple[User, str, bytes]] = [
        (alice, doc_id, b'{"content": "x", "base_version": 0}'),  # stale: 409
        (alice, doc_id, b'{"content": 5}'),  # 422
        (alice, doc_id, b"{not json"),  # 422
        (alice, "00000000-0000-4000-8000-000000000000", b'{"content": "x"}'),  # 404
        (User(alice.user_id, alice.tenant_id, "no-such-token"), doc_id, b'{"content": "x"}'),
    ]
    for user, target, body in cases:
        a = await put(api, user, target, body)
        b = await put(api, user, target.upper(), body)
        same(a, b)
        assert a.status_code in (401, 404, 409, 422), a.text
        assert a.json() == b.json() or a.status_code == 404  # 404 details name the id as sent
    # Nothing above was applied.
    got = (await api.get(f"/v1/documents/{doc_id}", headers=alice.auth)).json()
    assert got["version"] == 2


async def test_other_tenants_document_is_404_on_the_lane(api: httpx.AsyncClient) -> None:
    alice, mallory = await signup(api, "alice"), await signup(api, "mallory")
    doc_id = (await create_doc(api, alice, content="secret"))["id"]
    r = await edit(api, mallory, doc_id, "mine now")
    assert r.status_code == 404
    missing = await edit(api, mallory, "00000000-0000-4000-8000-000000000000", "x")
    assert r.json()["title"] == missing.json()["title"] == "Not Found"
    got = (await api.get(f"/v1/documents/{doc_id}", headers=alice.auth)).json()
    assert (got["content"], got["version"]) == ("secret", 0)


@pytest.fixture
def limited(migrated: Servers) -> Settings:
    return make_settings(migrated, edit_rate=3, edit_period_s=60)


@pytest.fixture
async def limited_api(limited: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(limited)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


async def test_edits_are_rate_limited_per_user_and_document(
    limited_api: httpx.AsyncClient,
) -> None:
    api = limited_api
    alice = await signup(api, "alice")
    doc_id = (await create_doc(api, alice))["id"]
    other_id = (await create_doc(api, alice))["id"]
    for n in range(3):
        assert (await edit(api, alice, doc_id, f"v{n}")).status_code == 202
    refused = await edit(api, alice, doc_id, "too fast")
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    # One edit per 20 s after the burst of 3 a minute.
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    assert refused.headers["ratelimit-policy"] == '"edit";q=3;w=60'
    # Through the regular route (an uppercase id) the same budget applies.
    assert (await edit(api, alice, doc_id.upper(), "still too fast")).status_code == 429
    # A refused edit is not applied.
    got = (await api.get(f"/v1/documents/{doc_id}", headers=alice.auth)).json()
    assert (got["content"], got["version"]) == ("v2", 3)
    # Another document has its own budget.
    assert (await edit(api, alice, other_id, "fine")).status_code == 202


async def test_concurrent_edits_on_the_lane_each_get_their_own_version(
    api: httpx.AsyncClient,
) -> None:
    alice = await signup(api, "alice")
    doc_id = (await create_doc(api, alice))["id"]
    replies = await asyncio.gather(*(edit(api, alice, doc_id, f"c{n}") for n in range(20)))
    assert sorted(r.json()["version"] for r in replies) == list(range(1, 21))


async def test_redis_down_is_503_on_the_lane(migrated: Servers, tmp_path: Path) -> None:
    valkey = Valkey(tmp_path / "valkey", free_port(), aof=False)
    valkey.start()
    try:
        settings = make_settings(migrated, redis_url=valkey.url)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
                alice = await signup(api, "alice")
                doc_id = (await create_doc(api, alice))["id"]
                assert (await edit(api, alice, doc_id, "before")).status_code == 202
                valkey.stop()
                r = await edit(api, alice, doc_id, "while down")
                assert r.status_code == 503
                assert r.headers["retry-after"] == "1"
                assert r.headers["content-type"] == "application/problem+json"
    finally:
        valkey.stop()


async def test_fast_edits_are_counted_under_their_route_template(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    for i in range(3):
        assert (await edit(api, alice, doc["id"], f"v{i}")).status_code == 202
    metrics = (await api.get("/metrics")).text
    series = (
        'redline_http_requests_total{method="PUT",route="/v1/documents/{doc_id}/content",'
        'status="202"} 3.0'
    )
    assert series in metrics
