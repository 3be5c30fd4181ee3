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
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from shared.embedded import free_port
from shared.settings import Settings
from tests.support.processes import http_ready, running, settings_env
from tests.support.users import create_doc, signup

SEED = 20_240_601
MAX_EXAMPLES = 12


@pytest.fixture
async def live_api(settings: Settings, tmp_path: Path) -> AsyncIterator[str]:
    port = free_port()
    env = settings_env(settings) | {"REDLINE_API_HOST": "127.0.0.1", "REDLINE_API_PORT": str(port)}
    base = f"http://127.0.0.1:{port}"
    async with running("api", "services.api", env, tmp_path, http_ready(f"{base}/readyz")):
        yield base


def config(token: str, logout_token: str, user_id: str) -> str:
    """The run's schemathesis.toml. Every exception to "all checks, all inputs" is here, each
    with its reason."""
    return f"""
headers = {{ Authorization = "Bearer {token}" }}

[generation]
# Exception, until NUL-safe text lands (issue 10, item 1: another branch refuses NUL with 422 at
# every entrance and publishes the rule in the schema): today a NUL in a title or a profile
# reaches Postgres, which refuses it (500). Remove this line when that lands.
allow-x00 = false

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
# Exception: a cursor is opaque (the API issues it; a schema cannot say which strings it
# issued), so a well-formed string it never issued is refused with 422, as the document says.
include-path = "/v1/documents"
include-method = "GET"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "404", "409", "429", "422"]
"""


async def test_schemathesis_finds_nothing(live_api: str, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=live_api) as client:
        alice = await signup(client, "alice")
        await create_doc(client, alice, content="seeded")
        r = await client.post(
            "/v1/auth/login", json={"username": "alice", "password": "correct horse"}
        )
        assert r.status_code == 200, r.text
        logout_token = r.json()["token"]
    toml = tmp_path / "schemathesis.toml"
    toml.write_text(config(alice.token, logout_token, alice.user_id))
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
