"""The edit lane (services/api/editlane.py) answers PUT content in front of the router: it must
answer exactly as the regular route does, which still serves ids in any other spelling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deploy.embedded import Valkey, free_port
from services.api.editlane import PATH
from shared.settings import Settings
from tests.conftest import Servers, make_settings
from tests.support.apps import api_app
from tests.support.users import User, create_doc, edit, signup

MISSING = "deadbeef-0000-4000-8000-00000000000a"  # letters, so its upper case is the route's
TOO_LARGE = json.dumps({"content": "x" * (64 * 1024 + 1)}).encode()  # make_settings' limit


@dataclass(frozen=True)
class Case:
    status: int
    body: bytes
    edits_before: int = 0  # edits the document has had, through the lane, before the case
    token: str | None = None  # instead of the caller's own
    target: str | None = None  # instead of the document's id


# Every answer of the edit's contract; `limited` allows 3 edits a minute per user and document.
CASES = {
    "good edit": Case(202, b'{"content": "one", "base_version": 1}', edits_before=1),
    "stale base_version": Case(409, b'{"content": "x", "base_version": 0}', edits_before=1),
    "bad token": Case(401, b'{"content": "x"}', token="no-such-token"),
    "no token, bad JSON": Case(401, b"{not json", token=""),
    "bad JSON": Case(422, b"{not json"),
    "wrong shape": Case(422, b'{"content": 5}'),
    "NUL": Case(422, b'{"content": "a\\u0000b"}'),
    "too large": Case(413, TOO_LARGE),
    "rate limited": Case(429, b'{"content": "x"}', edits_before=3),
    "unknown document": Case(404, b'{"content": "x"}', target=MISSING),
}


async def through(
    api: httpx.AsyncClient, alice: User, case: Case, door: str
) -> tuple[int, list[tuple[str, str]], bytes]:
    """The case's answer through one door, on a document of its own: status, every header, and
    the body with the document's id replaced (each door edits its own document)."""
    doc_id = (await create_doc(api, alice))["id"]
    for n in range(case.edits_before):
        assert (await edit(api, alice, doc_id, f"v{n}")).status_code == 202
    target = case.target or doc_id
    path = f"/v1/documents/{target if door == 'lane' else target.upper()}/content"
    # The lane takes the canonical spelling only; the router serves the upper-case one.
    assert (PATH.fullmatch(path) is not None) == (door == "lane")
    token = alice.token if case.token is None else case.token
    headers = {"Content-Type": "application/json", "X-Request-ID": "same-for-both-doors"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    r = await api.put(path, content=case.body, headers=headers)
    # Nothing but a 202 is applied.
    got = (await api.get(f"/v1/documents/{doc_id}", headers=alice.auth)).json()
    assert got["version"] == case.edits_before + (r.status_code == 202), (door, r.text)
    return r.status_code, r.headers.multi_items(), r.content.replace(doc_id.encode(), b"<id>")


@pytest.mark.parametrize("name", CASES)
async def test_lane_and_route_give_the_same_answers(
    limited_api: httpx.AsyncClient, name: str
) -> None:
    alice = await signup(limited_api, "alice")
    lane = await through(limited_api, alice, CASES[name], "lane")
    route = await through(limited_api, alice, CASES[name], "route")
    assert lane == route
    status, headers, body = lane
    assert status == CASES[name].status, body
    if status == 202:
        reply = {"id": "<id>", "version": 2, "saved_version": 0, "status": "saving"}
        assert json.loads(body) == reply
        assert dict(headers)["content-type"] == "application/json"
    else:
        assert dict(headers)["content-type"] == "application/problem+json"


async def test_an_id_that_is_no_uuid_is_refused_after_the_caller(api: httpx.AsyncClient) -> None:
    """The route checks what the lane's path already guarantees: 401 first, then 422 naming the
    path parameter, as for every other route."""
    alice = await signup(api, "alice")
    url, body = "/v1/documents/not-a-uuid/content", b'{"content": "x"}'
    r = await api.put(url, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 401, r.text
    r = await api.put(url, content=body, headers={**alice.auth, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["errors"]] == [["path", "doc_id"]]
    # The body is checked before the path, as FastAPI resolves a route's dependencies first.
    headers = {**alice.auth, "Content-Type": "application/json"}
    r = await api.put(url, content=b"{not json", headers=headers)
    assert [e["type"] for e in r.json()["errors"]] == ["json_invalid"]


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
    async with api_app(limited) as (_, client):
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


async def test_a_stale_edit_spends_no_rate_budget(limited_api: httpx.AsyncClient) -> None:
    """A 409 is not an edit: as collab_append.lua, edit.lua checks base_version before it takes
    a token, so a client refetching after conflicts keeps its whole burst."""
    api = limited_api
    alice = await signup(api, "alice")
    doc_id = (await create_doc(api, alice))["id"]
    assert (await edit(api, alice, doc_id, "v1", base=0)).status_code == 202
    for _ in range(5):
        assert (await edit(api, alice, doc_id, "stale", base=0)).status_code == 409
    assert (await edit(api, alice, doc_id, "v2", base=1)).status_code == 202
    assert (await edit(api, alice, doc_id, "v3", base=2)).status_code == 202
    assert (await edit(api, alice, doc_id, "v4", base=3)).status_code == 429


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
        async with api_app(settings) as (_, api):
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


async def test_both_doors_are_counted_under_the_route_template(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    for target in (doc["id"], doc["id"], doc["id"].upper()):  # the lane twice, the route once
        assert (await edit(api, alice, target, "x")).status_code == 202
    metrics = (await api.get("/metrics")).text
    series = (
        'redline_http_requests_total{method="PUT",route="/v1/documents/{doc_id}/content",'
        'status="202"} 3.0'
    )
    assert series in metrics
