"""The HTTP edge of real service processes (shared/infra/edge.py), over raw sockets: a client that
sends headers or a body too slowly is cut within the configured bound, an oversized header is
refused, connections over the per-process cap get 503, a forwarded address from loopback is not
believed, and normal requests are unaffected.

The bounds here are 1 s; each wait gives the server 5 s more (without the edge, uvicorn held such
clients for as long as they liked, so a missing limit fails as a timeout, not as a slow pass)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect

from deploy.embedded import free_port
from tests.conftest import Servers, make_settings
from tests.support.processes import http_ready, running, settings_env

BOUND_S = 1.0
WAIT_S = BOUND_S + 5
MAX_CONNECTIONS = 8
MAX_HEADER = 8192

EDGE = dict(
    http_header_timeout_s=BOUND_S,
    http_body_timeout_s=BOUND_S,
    http_max_header_bytes=MAX_HEADER,
    api_max_connections=MAX_CONNECTIONS,
    matcher_max_connections=MAX_CONNECTIONS,
    login_rate=5,
    login_period_s=60,
)


@pytest.fixture(scope="module")
async def api_port(
    migrated: Servers, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[int]:
    port = free_port()
    env = settings_env(make_settings(migrated, api_port=port, **EDGE))
    log_dir = tmp_path_factory.mktemp("edge-api")
    ready = http_ready(f"http://127.0.0.1:{port}/healthz")
    async with running("api", "services.api", env, log_dir, ready):
        yield port


@pytest.fixture(scope="module")
async def matcher_port(
    migrated: Servers, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[int]:
    port = free_port()
    env = settings_env(make_settings(migrated, matcher_port=port, **EDGE))
    log_dir = tmp_path_factory.mktemp("edge-matcher")
    ready = http_ready(f"http://127.0.0.1:{port}/healthz")
    async with running("matcher", "services.matcher", env, log_dir, ready):
        yield port


async def exchange(port: int, *parts: bytes) -> tuple[bytes, float]:
    """Send `parts`, then read until the server closes; (everything read, seconds it took)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
        started = loop.time()
        async with asyncio.timeout(WAIT_S):
            answer = await reader.read()  # b"" only at EOF: the server closed
        return answer, loop.time() - started
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def problem_of(answer: bytes) -> dict[str, object]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head.lower(), head
    parsed: dict[str, object] = json.loads(body)
    return parsed


LOGIN_HEAD = b"POST /v1/auth/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
BODY = b'{"username": "nobody", "password": "wrong password"}'


async def test_partial_headers_are_cut_with_408(api_port: int) -> None:
    answer, took = await exchange(api_port, b"POST /v1/auth/login HTTP/1.1\r\nHost: t\r\n")
    assert status_of(answer) == 408 and took < WAIT_S
    assert problem_of(answer)["status"] == 408


async def test_a_silent_connection_is_cut(api_port: int) -> None:
    answer, _ = await exchange(api_port)
    assert status_of(answer) == 408


async def test_headers_trickled_a_byte_at_a_time_are_cut_at_the_bound(api_port: int) -> None:
    # Each byte would reset an idle timer; the deadline counts from the first byte regardless.
    reader, writer = await asyncio.open_connection("127.0.0.1", api_port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = asyncio.create_task(reader.read())
    trickle = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100  # 14 s at 10/s
    try:
        for byte in trickle:
            if answer.done():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)
        async with asyncio.timeout(WAIT_S):
            assert status_of(await answer) == 408
        assert loop.time() - started < WAIT_S
    finally:
        answer.cancel()
        writer.close()


async def test_a_short_body_is_cut_with_408(api_port: int) -> None:
    head = LOGIN_HEAD + b"Content-Length: 100\r\n\r\n"
    answer, took = await exchange(api_port, head, BODY[:10])
    assert status_of(answer) == 408 and took < WAIT_S


async def test_an_unfinished_chunked_body_is_cut_with_408(api_port: int) -> None:
    head = LOGIN_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    answer, _ = await exchange(api_port, head, b"a\r\n" + BODY[:10] + b"\r\n")
    assert status_of(answer) == 408


async def test_an_oversized_header_is_431_and_closed(api_port: int) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (2 * MAX_HEADER) + b"\r\n\r\n"
    answer, _ = await exchange(api_port, request)
    assert status_of(answer) == 431
    # Just under the cap is served.
    fits = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: "
    fits += b"a" * (MAX_HEADER - 200) + b"\r\n\r\n"
    answer, _ = await exchange(api_port, fits)
    assert status_of(answer) == 200


async def test_a_16_mb_header_is_not_read_to_the_end(api_port: int) -> None:
    """The api reads MAX_HEADER bytes of a header, then closes: the client's writes fail long
    before it has sent the whole header. How much the client gets to write before it sees the
    close is the kernel's business (its send buffer plus the server's receive window: up to
    tcp_wmem + tcp_rmem, 4 + 32 MB here; one run wrote 4 MB first), so only "before the end" is
    asserted, on a header larger than the buffers usually take."""
    reader, writer = await asyncio.open_connection("127.0.0.1", api_port)
    total = 16 * 1024 * 1024
    sent = 0
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
        with pytest.raises((ConnectionError, OSError)):
            async with asyncio.timeout(WAIT_S):
                while sent < total:
                    writer.write(b"a" * 65_536)
                    await writer.drain()
                    sent += 65_536
                    if reader.at_eof():
                        raise ConnectionError("closed by the server")
                    await asyncio.sleep(0)  # let the reader see the server's answer
    finally:
        writer.close()
    assert sent < total
    answer, _ = await exchange(api_port, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 200


async def test_connections_over_the_cap_get_503_and_normal_requests_pass(api_port: int) -> None:
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        # Kept-alive connections that were answered: they count until they close.
        for _ in range(MAX_CONNECTIONS):
            reader, writer = await asyncio.open_connection("127.0.0.1", api_port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert status_of(await reader.readuntil(b'{"status":"ok"}')) == 200
            held.append((reader, writer))
        answer, _ = await exchange(api_port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert status_of(answer) == 503
        assert b"retry-after: 1" in answer.lower()
        assert "connection limit" in str(problem_of(answer)["detail"])
        # A held connection is still served: the cap refuses new work, not open connections.
        reader, writer = held[0]
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert status_of(await reader.readuntil(b'{"status":"ok"}')) == 200
        # One closes: a new connection is served again.
        held.pop()[1].close()
        await asyncio.sleep(0.2)
        answer, _ = await exchange(api_port, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert status_of(answer) == 200
    finally:
        for _, writer in held:
            writer.close()


async def test_a_body_sent_in_pieces_within_the_bound_is_served(api_port: int) -> None:
    head = LOGIN_HEAD + f"Content-Length: {len(BODY)}\r\nConnection: close\r\n\r\n".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", api_port)
    try:
        writer.write(head + BODY[:10])
        await writer.drain()
        await asyncio.sleep(BOUND_S / 3)
        writer.write(BODY[10:])
        async with asyncio.timeout(WAIT_S):
            answer = await reader.read()
    finally:
        writer.close()
    assert status_of(answer) in (401, 429)  # answered by the app, not cut


async def test_spoofed_forwarded_for_from_loopback_is_not_believed(api_port: int) -> None:
    """uvicorn's own proxy handling (on by default, trusting 127.0.0.1) would have made each
    attempt a new client; a new name each time keeps the per-name budgets out of it."""
    codes = []
    for i in range(15):
        body = json.dumps({"username": f"spoof{i}", "password": "wrong password"}).encode()
        request = (
            LOGIN_HEAD
            + (
                f"X-Forwarded-For: 203.0.113.{i + 1}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
        )
        answer, _ = await exchange(api_port, request + body)
        codes.append(status_of(answer))
    assert 429 in codes, codes
    # Budget 5 per address (the other tests in this module may have spent some of it).
    assert codes.count(401) <= 5 and codes[-1] == 429, codes


# The matcher's handshake server: the same edge.
async def test_matcher_cuts_a_partial_handshake_and_refuses_a_big_one(matcher_port: int) -> None:
    answer, took = await exchange(matcher_port, b"GET /v1/ws HTTP/1.1\r\nHost: t\r\nUpgrade: ")
    assert status_of(answer) == 408 and took < WAIT_S
    big = b"GET /v1/ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    big += b"X-Big: " + b"a" * (2 * MAX_HEADER) + b"\r\n\r\n"
    answer, _ = await exchange(matcher_port, big)
    assert status_of(answer) == 431


async def test_matcher_refuses_handshakes_over_the_connection_cap(matcher_port: int) -> None:
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            reader, writer = await asyncio.open_connection("127.0.0.1", matcher_port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert status_of(await reader.readuntil(b'{"status":"ok"}')) == 200
            held.append((reader, writer))
        with pytest.raises(Exception) as refused:
            async with connect(f"ws://127.0.0.1:{matcher_port}/v1/ws", open_timeout=WAIT_S):
                pass
        assert "503" in str(refused.value), refused.value
    finally:
        for _, writer in held:
            writer.close()
