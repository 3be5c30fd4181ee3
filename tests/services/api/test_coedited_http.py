"""HTTP editors of a co-edited document (shared/domain/coediting.py through PUT …/content): a PUT
without base_version becomes the update from the current text to the new one, so it merges
with socket typing (the socket hears it, and its own typing stays), a stale base_version is
still 409, the co-editing rate answers 429 with its own numbers, and GET returns the merged text."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from shared.settings import Settings
from tests.support.collab import editor, stored_text
from tests.support.users import create_doc, signup


@pytest.fixture
def collab_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"collab_enabled": True, "collab_update_rate": 5})


async def until_text(ed_text: object, want: str) -> None:
    for _ in range(300):
        if str(ed_text) == want:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"editor holds {str(ed_text)!r}, not {want!r}")


async def test_a_put_merges_with_socket_typing_and_both_survive(
    host: str, http: httpx.AsyncClient, collab_settings: Settings
) -> None:
    ada = await signup(http, "ada")
    doc = await create_doc(http, ada, content="hello world")
    path = f"/v1/documents/{doc['id']}/content"
    async with editor(host, ada, doc["id"]) as ed:
        await ed.type(0, ">> ")
        await ed.settled()
        # An HTTP client reads the merged text, changes it and PUTs it back without a
        # base_version: the server appends the difference, so the socket's ">> " stays and the
        # socket hears the HTTP edit as an ordinary update.
        r = await http.get(f"/v1/documents/{doc['id']}", headers=ada.auth)
        assert r.json()["content"] == ">> hello world"
        r = await http.put(path, json={"content": ">> hello, world!"}, headers=ada.auth)
        assert r.status_code == 202, r.text
        assert r.json()["version"] == 2
        await until_text(ed.text, ">> hello, world!")
        await ed.type(len(">> hello, world!"), " bye")
        await ed.settled()
        await until_text(ed.text, ">> hello, world! bye")
    r = await http.get(f"/v1/documents/{doc['id']}", headers=ada.auth)
    assert r.status_code == 200
    assert r.json()["content"] == ">> hello, world! bye"
    assert r.json()["version"] == 3
    assert await stored_text(collab_settings, doc["id"]) == ">> hello, world! bye"


async def test_a_stale_base_version_is_still_409_and_stores_nothing(
    host: str, http: httpx.AsyncClient, collab_settings: Settings
) -> None:
    ada = await signup(http, "ada")
    doc = await create_doc(http, ada, content="abc")
    async with editor(host, ada, doc["id"]) as ed:
        await ed.type(3, "d")
        await ed.settled()
    path = f"/v1/documents/{doc['id']}/content"
    r = await http.put(path, json={"content": "zzz", "base_version": 0}, headers=ada.auth)
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert await stored_text(collab_settings, doc["id"]) == "abcd"
    r = await http.put(path, json={"content": "abcde", "base_version": 1}, headers=ada.auth)
    assert r.status_code == 202, r.text
    assert await stored_text(collab_settings, doc["id"]) == "abcde"


async def test_the_co_editing_rate_answers_429_with_its_own_policy(
    host: str, http: httpx.AsyncClient, collab_settings: Settings
) -> None:
    ada = await signup(http, "ada")
    doc = await create_doc(http, ada, content="")
    async with editor(host, ada, doc["id"]) as ed:  # seeds it: the document is co-edited now
        await ed.type(0, "x")
        await ed.settled()
    path = f"/v1/documents/{doc['id']}/content"
    answers = []
    for i in range(12):  # a burst of 5 a second, one of which the socket spent
        r = await http.put(path, json={"content": "x" + "y" * (i + 1)}, headers=ada.auth)
        answers.append(r)
    codes = [r.status_code for r in answers]
    assert 202 in codes and 429 in codes, codes
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["ratelimit-policy"] == '"collab";q=5;w=1'
    assert int(refused.headers["retry-after"]) >= 1
    # Nothing refused was stored: the text is the last accepted PUT's.
    last_ok = max(i for i, r in enumerate(answers) if r.status_code == 202)
    assert await stored_text(collab_settings, doc["id"]) == "x" + "y" * (last_ok + 1)
