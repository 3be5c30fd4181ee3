"""The OpenAPI document is the contract, and schemathesis holds the live API to it.

A real `python -m services.api` process (against the session's Valkey and Postgres) is tested
with every schemathesis check, signed in as a user who owns a document; the run fails on any
finding: a server error, an answer the document does not declare (status, media type, headers,
body), valid input refused, invalid input accepted, a 405 without `Allow`, ... It is bounded in
examples and time (a fixed seed, so a failure reproduces) to fit CI on two cores.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from deploy.embedded import free_port
from shared.domain import snapshots, trending
from shared.settings import Settings
from shared.store.keys import Keys
from tests.support.processes import http_ready, running, settings_env
from tests.support.users import create_doc, signup

SEED = 20_240_601
MAX_EXAMPLES = 10
SLUG = "rock-climbing"


@pytest.fixture
async def live_api(settings: Settings, tmp_path: Path) -> AsyncIterator[str]:
    port = free_port()
    env = settings_env(settings) | {"REDLINE_API_HOST": "127.0.0.1", "REDLINE_API_PORT": str(port)}
    base = f"http://127.0.0.1:{port}"
    async with running("api", "services.api", env, tmp_path, http_ready(f"{base}/readyz")):
        yield base


def config(token: str, logout_token: str, user_id: str, doc_id: str, snapshot_id: str) -> str:
    """The run's schemathesis.toml. Every exception to "all checks, all inputs" is here, each
    with its reason."""
    return f"""
headers = {{ Authorization = "Bearer {token}" }}

[[operations]]
# Logging out ends the session it is called with: it gets a session of its own, so the rest of
# the run stays signed in.
include-path = "/v1/auth/logout"
headers = {{ Authorization = "Bearer {logout_token}" }}

[[operations]]
# A user who exists, so reads get past 404 (nothing in the API lists users to link from).
include-path = "/v1/users/{{user_id}}/profile"
parameters = {{ user_id = "{user_id}" }}

[[operations]]
# A revision that exists (the flusher, which writes them, does not run here).
include-path = "/v1/documents/{{doc_id}}/snapshots/{{snapshot_id}}"
parameters = {{ doc_id = "{doc_id}", snapshot_id = "{snapshot_id}" }}

[[operations]]
# An interest counted today (the matcher, which counts them, does not run here).
include-path = "/v1/trending/interests/{{slug}}"
parameters = {{ slug = "{SLUG}" }}

[[operations]]
# Exception: a cursor is opaque (the API issues it; a schema cannot say which strings it
# issued), so a well-formed string it never issued is refused with 422, as the document says.
include-path = "/v1/documents"
include-method = "GET"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "404", "409", "429", "422"]
"""


async def test_schemathesis_finds_nothing(
    live_api: str, tmp_path: Path, settings: Settings, db: asyncpg.Connection, redis: Redis
) -> None:
    async with httpx.AsyncClient(base_url=live_api) as client:
        alice = await signup(client, "alice")
        doc = await create_doc(client, alice, content="seeded")
        snapshot_id = await snapshots.insert(
            db, doc["id"], "seeded", "seeded", 0, alice.user_id, "seeded-job"
        )
        await trending.bump(redis, Keys(settings.key_prefix, settings.doc_shards), [SLUG])
        r = await client.post(
            "/v1/auth/login", json={"username": "alice", "password": "correct horse"}
        )
        assert r.status_code == 200, r.text
        logout_token = r.json()["token"]
    toml = tmp_path / "schemathesis.toml"
    toml.write_text(config(alice.token, logout_token, alice.user_id, doc["id"], snapshot_id))
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(toml),
        "run",
        f"{live_api}/v1/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        # One worker: Hypothesis parses lambdas' source with ast.parse, which is not thread-safe
        # on CPython 3.11 ("AST constructor recursion depth mismatch" with two workers).
        "--workers",
        "1",
        # An answer slower than this is a finding (a hang), not a wait.
        "--request-timeout",
        "10",
        "--no-color",
        "--generation-database",
        "none",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDLINE_")}
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    report = out.decode(errors="replace")
    print(report)
    print(f"schemathesis ran {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, report[-20_000:]


# The contract's parts, each checked directly (fast, and precise about what broke) ------------
async def _document(api: httpx.AsyncClient) -> dict[str, Any]:
    r = await api.get("/v1/openapi.json")
    assert r.status_code == 200
    document: dict[str, Any] = r.json()
    return document


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


async def test_every_body_is_documented_and_every_error_is_problem_json(
    api: httpx.AsyncClient,
) -> None:
    document = await _document(api)
    bodies = {
        (method, path): op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        for method, path, op in _operations(document)
        if "requestBody" in op
    }
    ref = "#/components/schemas/"
    assert bodies == {
        ("POST", "/v1/auth/signup"): f"{ref}Credentials",
        ("POST", "/v1/auth/login"): f"{ref}Credentials",
        ("POST", "/v1/tenant/members"): f"{ref}Credentials",
        ("POST", "/v1/documents"): f"{ref}DocumentCreate",
        ("PUT", "/v1/documents/{doc_id}/content"): f"{ref}ContentEdit",
        ("POST", "/v1/documents/{doc_id}/snapshots"): f"{ref}SnapshotCreate",
        ("PATCH", "/v1/users/me/profile"): f"{ref}ProfilePatch",
    }
    schemas = document["components"]["schemas"]
    for method, path, op in _operations(document):
        for status, answer in op["responses"].items():
            if int(status) < 400 or path == "/readyz":
                continue
            content = answer["content"]
            assert list(content) == ["application/problem+json"], (method, path, status)
            name = "ValidationProblem" if status == "422" else "Problem"
            assert content["application/problem+json"]["schema"] == {"$ref": f"{ref}{name}"}
        if path.startswith("/v1/") and path not in ("/v1/auth/signup", "/v1/auth/login"):
            assert op["security"] == [{"bearer": []}], (method, path)
            assert "401" in op["responses"] and "503" in op["responses"], (method, path)
    assert "errors" in schemas["ValidationProblem"]["properties"]
    assert schemas["Problem"]["required"] == ["title", "status", "detail"]
    edit = document["paths"]["/v1/documents/{doc_id}/content"]["put"]["responses"]
    assert sorted(edit) == ["202", "401", "404", "409", "413", "422", "429", "503"]
    assert set(edit["429"]["headers"]) == {"Retry-After", "RateLimit-Policy", "RateLimit"}
    assert set(edit["401"]["headers"]) == {"WWW-Authenticate"}


async def test_every_body_route_answers_401_before_reading_the_body(
    api: httpx.AsyncClient,
) -> None:
    """Without a token, a malformed body, a body of the wrong shape and no body at all are all
    401 on every signed-in route that takes a body: the caller first, then the body."""
    alice = await signup(api, "alice")
    doc_id = (await create_doc(api, alice))["id"]
    document = await _document(api)
    checked = 0
    for method, path, op in _operations(document):
        if "requestBody" not in op or "security" not in op:
            continue
        # The lane serves the canonical id, the router the upper-case one: both are checked.
        for target in (doc_id, doc_id.upper()):
            url = path.replace("{doc_id}", target)
            for body in (b"{not json", b'{"unknown": 1}', b""):
                for headers in ({}, {"Authorization": "Bearer nope"}):
                    r = await api.request(
                        method,
                        url,
                        content=body,
                        headers={**headers, "Content-Type": "application/json"},
                    )
                    assert r.status_code == 401, (method, url, body, headers, r.text)
                    assert r.headers["www-authenticate"] == "Bearer"
                    checked += 1
            # Signed in, the same malformed body is a 422 problem.
            r = await api.request(method, url, content=b"{not json", headers=alice.auth)
            assert r.status_code == 422, (method, url, r.text)
            assert r.headers["content-type"] == "application/problem+json"
    assert checked == 5 * 2 * 3 * 2  # five signed-in body routes


async def test_405_allows_every_method_of_the_path(api: httpx.AsyncClient) -> None:
    doc = "/v1/documents/00000000-0000-4000-8000-000000000000"
    cases = {
        "/v1/documents": "GET, POST",
        doc: "DELETE, GET",
        f"{doc}/presence": "DELETE, POST",
        f"{doc}/content": "PUT",
        f"{doc}/snapshots": "GET, POST",
        "/v1/users/me/profile": "GET, PATCH",
    }
    for path, allow in cases.items():
        r = await api.request("OPTIONS", path)
        assert r.status_code == 405, (path, r.text)
        assert r.headers["allow"] == allow, path
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 405


async def test_inputs_the_schema_calls_invalid_are_refused(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    doc_id = (await create_doc(api, alice))["id"]
    # A JSON boolean or string is not an integer version, on the lane and on the route alike.
    for target in (doc_id, doc_id.upper()):
        for base in ("false", '"0"'):
            body = f'{{"content": "x", "base_version": {base}}}'.encode()
            r = await api.put(
                f"/v1/documents/{target}/content",
                content=body,
                headers={**alice.auth, "Content-Type": "application/json"},
            )
            assert r.status_code == 422, (target, base, r.text)
            assert r.json()["errors"][0]["loc"] == ["base_version"]
    # Whitespace the server strips is no title, and the schema's pattern says so.
    r = await api.post("/v1/documents", json={"title": "\u00a0\u3000"}, headers=alice.auth)
    assert r.status_code == 422, r.text
    document = await _document(api)
    pattern = document["components"]["schemas"]["DocumentCreate"]["properties"]["title"]
    assert re.search(pattern["pattern"], "\u00a0\u3000") is None
    assert re.search(pattern["pattern"], "\u00a0a") is not None
    assert re.search(pattern["pattern"], "a\x00") is None  # and a NUL is refused (PgText)
    # null clears a profile's region only; the schema allows null nowhere else.
    patch = document["components"]["schemas"]["ProfilePatch"]["properties"]
    assert patch["bio"] == {
        "type": "string",
        "maxLength": 2000,
        "pattern": "^[^\\x00]*$",
        "title": "Bio",
    }
    assert {"type": "null"} in patch["region"]["anyOf"]
    r = await api.patch("/v1/users/me/profile", json={"bio": None}, headers=alice.auth)
    assert r.status_code == 422
    r = await api.patch("/v1/users/me/profile", json={"region": None}, headers=alice.auth)
    assert r.status_code == 200, r.text
