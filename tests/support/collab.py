"""pycrdt clients of `/v1/collab/{id}` speaking the y-websocket protocol, for the api, fault and
cluster suites.

`Editor` is one socket, driven step by step by a test. `Typist` is a client that keeps typing
across connections (a killed api, a restarted Valkey): its pycrdt document outlives each socket,
so on reconnect the resync (step 1/2) resends what the server lacks, as y-websocket's provider
does. Both count an update *acknowledged* only when the server relays it back to its sender: the
server relays only what the append script stored. `HttpTypist` edits the same document with
GET + PUT (base_version), acknowledged on a 202.

Typists type tokens `<name.n…>`, each inserted at a token boundary of the typist's own text, so a
concurrent insert never lands inside another token: the final text is a run of whole tokens, and
`tokens()` finds each one (twice would be a duplicated update, a split one a corrupted text).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from services.api.app import create_app
from shared.domain import collab
from shared.infra.clients import redis_client
from shared.infra.edge import EdgeLimits, edge_protocol
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.update_log import UpdateLog, append_options
from tests.support.servers import served
from tests.support.users import User

# A token: the typist's name, its count, and sometimes a character Yjs and pycrdt count
# differently (UTF-16 units vs UTF-8 bytes: an emoji, a combining mark, CJK).
TOKEN = re.compile(r"<([a-z0-9]+)\.(\d+)[^<>]*>")
EXTRAS = ("", "", "😀", "e\u0301", "中")


@asynccontextmanager
async def api_server(settings: Settings) -> AsyncIterator[str]:
    """The api under uvicorn in this event loop, as services/api/__main__.py runs it with
    co-editing on; yields its `host:port`."""
    async with served(
        create_app(settings),
        ws="auto",
        ws_max_size=settings.collab_max_frame_bytes,
        ws_per_message_deflate=False,
        http=edge_protocol(EdgeLimits.of(settings, settings.api_max_connections)),
    ) as port:
        yield f"127.0.0.1:{port}"


async def stored_text(settings: Settings, doc_id: str) -> str:
    """The document's text as its Redis state and log hold it: what the flusher would fold."""
    client = redis_client(settings.state_url, cluster=settings.redis_cluster, binary=True)
    try:
        keys = Keys(settings.key_prefix, settings.doc_shards)
        snap = await UpdateLog(client, keys, append_options(settings)).read(doc_id, 100_000)
        return collab.fold(snap.state, [u for _, u in snap.log]).text
    finally:
        await client.aclose()


def utf8_offset(text: str, at: int) -> int:
    """pycrdt's offset (UTF-8 bytes) of code point `at` of `text`."""
    return len(text[: min(at, len(text))].encode())


class Editor:
    """A y-websocket client: a pycrdt document synced over one socket. An update it typed is
    acknowledged when the server relays it back (the server relays only what it stored)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.doc, self.text = collab.new_doc()
        self.synced = asyncio.Event()
        self.pending: set[bytes] = set()
        self.acked = 0
        self.on_other: Callable[[bytes], None] = lambda frame: None  # awareness, heartbeats
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in self.ws:
                assert isinstance(frame, bytes)
                msg = collab.parse(frame)
                if isinstance(msg, collab.SyncStep1):
                    before = self.doc.get_update(msg.state_vector)
                    await self.ws.send(collab.encode(collab.SyncStep2(before)))
                elif isinstance(msg, collab.SyncStep2):
                    self.doc.apply_update(msg.update)
                    self.synced.set()
                elif isinstance(msg, collab.Update):
                    if msg.update in self.pending:
                        self.pending.discard(msg.update)
                        self.acked += 1
                    self.doc.apply_update(msg.update)
                else:
                    self.on_other(frame)

    async def start(self) -> None:
        await self.ws.send(collab.encode(collab.SyncStep1(self.doc.get_state())))
        await asyncio.wait_for(self.synced.wait(), 5)

    async def type(self, at: int, chars: str) -> None:
        before = self.doc.get_state()
        self.text.insert(utf8_offset(str(self.text), at), chars)
        update = self.doc.get_update(before)
        self.pending.add(update)
        await self.ws.send(collab.encode(collab.Update(update)))

    async def settled(self) -> None:
        """Every update this editor typed has come back acknowledged."""
        for _ in range(500):
            if not self.pending:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{len(self.pending)} updates never acknowledged")

    async def closed(self) -> None:
        """Until the server has closed the socket."""
        await asyncio.wait_for(self._reader, 5)

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


@asynccontextmanager
async def editor(host: str, user: User, doc_id: str) -> AsyncIterator[Editor]:
    async with connect(
        f"ws://{host}/v1/collab/{doc_id}", additional_headers=user.auth, max_size=None
    ) as ws:
        ed = Editor(ws)
        await ed.start()
        try:
            yield ed
        finally:
            await ed.close()


# Tokens ----------------------------------------------------------------------------------------
def boundaries(text: str) -> list[int]:
    """Code point offsets between whole tokens (and the text's ends)."""
    return [0, *(i + 1 for i, ch in enumerate(text) if ch == ">")]


def tokens(text: str, prefix: str = "") -> Counter[str]:
    """Every whole token in `text`, counted; AssertionError if anything else is there but
    `prefix` (the document's text before anyone typed)."""
    assert text.startswith(prefix), f"the text lost its start: {text[:80]!r}"
    rest = text[len(prefix) :]
    found = [m.group(0) for m in TOKEN.finditer(rest)]
    assert "".join(found) == rest, f"the text holds more than whole tokens: {rest[:200]!r}"
    return Counter(found)


def token_insert(text: str, token: str, rng: random.Random, keep: int = 0) -> tuple[int, str]:
    """Where `token` goes (a random boundary at or after code point `keep`) and the new text."""
    at = rng.choice([b for b in boundaries(text) if b >= keep] or [len(text)])
    return at, text[:at] + token + text[at:]


# The typists -----------------------------------------------------------------------------------
# What a reconnect may meet while a process or Valkey is down: refused, reset, a 503 handshake.
RECONNECTABLE = (OSError, ConnectionClosed, InvalidHandshake, asyncio.TimeoutError)


class Typist:
    """A socket client typing a token every `pause_s` into one document while `typing` (a reader
    only, with `typing=False`), through the first host of `hosts` that answers (the next one
    after a failure), reconnecting until `close()`. `acked`: the tokens the server relayed back;
    `typed`: every token typed."""

    def __init__(
        self,
        name: str,
        hosts: Sequence[str],
        user: User,
        doc_id: str,
        *,
        prefix: str = "",
        pause_s: float = 0.05,
        seed: int = 0,
        limit_s: float = 60.0,
        typing: bool = True,
    ) -> None:
        self.name, self.hosts, self.user, self.doc_id = name, list(hosts), user, doc_id
        self.prefix = prefix
        self.pause_s = pause_s
        self.doc, self.text = collab.new_doc()
        self.rng = random.Random(seed)
        self.typed: list[str] = []
        self.acked: set[str] = set()
        self.pending: dict[bytes, str] = {}
        self.acked_at: dict[str, float] = {}  # token -> monotonic time of its ack
        self.connections = 0
        self.failures: Counter[str] = Counter()
        self.close_codes: Counter[int] = Counter()
        self.typing = asyncio.Event()
        if typing:
            self.typing.set()
        self.synced = False
        self._closing = asyncio.Event()
        self._host = 0
        self._deadline = time.monotonic() + limit_s
        self._task = asyncio.create_task(self._run(), name=f"typist {name}")

    @property
    def current(self) -> str:
        return str(self.text)

    def stop_typing(self) -> None:
        self.typing.clear()

    async def close(self) -> None:
        self._closing.set()
        self.typing.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), 10)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closing.is_set() and time.monotonic() < self._deadline:
            host = self.hosts[self._host % len(self.hosts)]
            try:
                await self._session(host)
                backoff = 0.05
            except RECONNECTABLE as exc:
                self.failures[type(exc).__name__] += 1
            self.synced = False
            if self._closing.is_set():
                return
            self._host += 1  # the next host: a killed process stays down a while
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closing.wait(), backoff * (1 + self.rng.random()))
            backoff = min(backoff * 2, 0.5)

    async def _session(self, host: str) -> None:
        async with connect(
            f"ws://{host}/v1/collab/{self.doc_id}",
            additional_headers=self.user.auth,
            max_size=None,
            open_timeout=3,
            close_timeout=1,
            ping_interval=None,
        ) as ws:
            synced = asyncio.Event()
            reader = asyncio.create_task(self._read(ws, synced))
            closing = asyncio.create_task(self._closing.wait())
            try:
                await ws.send(collab.encode(collab.SyncStep1(self.doc.get_state())))
                await asyncio.wait_for(asyncio.shield(synced.wait()), 5)
                self.connections += 1
                self.synced = True
                while not reader.done() and not self._closing.is_set():
                    if self.typing.is_set() and time.monotonic() < self._deadline:
                        await self._type_one(ws)
                    await asyncio.wait(
                        [reader, closing],
                        timeout=self.pause_s,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
            finally:
                closing.cancel()
                if not reader.done():
                    await ws.close()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(reader), 3)
                    reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                if ws.close_code is not None:
                    self.close_codes[ws.close_code] += 1
            reader.result()  # a protocol error in what the server sent fails the test

    async def _read(self, ws: ClientConnection, synced: asyncio.Event) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in ws:
                assert isinstance(frame, bytes), f"a text frame from the server: {frame!r}"
                msg = collab.parse(frame)
                if isinstance(msg, collab.SyncStep1):
                    missing = self.doc.get_update(msg.state_vector)
                    await ws.send(collab.encode(collab.SyncStep2(missing)))
                elif isinstance(msg, collab.SyncStep2):
                    self.doc.apply_update(msg.update)
                    synced.set()
                elif isinstance(msg, collab.Update):
                    token = self.pending.pop(msg.update, None)
                    if token is not None:
                        self.acked.add(token)
                        self.acked_at[token] = time.monotonic()
                    self.doc.apply_update(msg.update)

    async def _type_one(self, ws: ClientConnection) -> None:
        n = len(self.typed) + 1
        token = f"<{self.name}.{n}{self.rng.choice(EXTRAS)}>"
        text = self.current
        at, _ = token_insert(text, token, self.rng, keep=len(self.prefix))
        before = self.doc.get_state()
        self.text.insert(utf8_offset(text, at), token)
        update = self.doc.get_update(before)
        self.typed.append(token)
        self.pending[update] = token
        await ws.send(collab.encode(collab.Update(update)))


class HttpTypist:
    """An HTTP editor of the same document: GET, insert a token at a boundary, PUT with the
    version it read (a 409 reads again), through the first of `hosts` that answers. A 202 acks
    its token; anything else does not, and the next try types a new token (a PUT that timed
    out may still have been stored: the same token again could appear twice)."""

    def __init__(
        self,
        name: str,
        hosts: Sequence[str],
        user: User,
        doc_id: str,
        *,
        prefix: str = "",
        pause_s: float = 0.1,
        seed: int = 0,
        limit_s: float = 60.0,
    ) -> None:
        self.name, self.hosts, self.user, self.doc_id = name, list(hosts), user, doc_id
        self.prefix = prefix
        self.pause_s = pause_s
        self.rng = random.Random(seed)
        self.typed: list[str] = []
        self.acked: set[str] = set()
        self.answers: Counter[str] = Counter()
        # token -> what became of it: the version it was typed on, the answer, the version after
        self.attempts: dict[str, str] = {}
        self._host = 0
        self._deadline = time.monotonic() + limit_s
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"http typist {name}")

    def stop_typing(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), 15)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=3) as client:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                base = f"http://{self.hosts[self._host % len(self.hosts)]}"
                try:
                    await self._edit(client, base)
                except httpx.HTTPError as exc:
                    self.answers[type(exc).__name__] += 1
                    self._host += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.pause_s)

    async def _edit(self, client: httpx.AsyncClient, base: str) -> None:
        url = f"{base}/v1/documents/{self.doc_id}"
        for _ in range(20):
            r = await client.get(url, headers=self.user.auth)
            if r.status_code != 200:
                self._other(r)
                return
            body: dict[str, Any] = r.json()
            token = f"<{self.name}.{len(self.typed) + 1}>"
            self.typed.append(token)
            _, content = token_insert(body["content"], token, self.rng, keep=len(self.prefix))
            r = await client.put(
                f"{url}/content",
                json={"content": content, "base_version": body["version"]},
                headers=self.user.auth,
            )
            self.attempts[token] = f"typed on v{body['version']} via {base}: {r.status_code}"
            if r.status_code == 202:
                self.answers["202"] += 1
                self.acked.add(token)
                self.attempts[token] += f" v{r.json()['version']}"
                return
            if r.status_code != 409:
                self._other(r)
                return
            self.answers["409"] += 1

    def _other(self, r: httpx.Response) -> None:
        self.answers[str(r.status_code)] += 1
        if r.status_code >= 500:
            self._host += 1


# Either kind, where a test treats them alike (their tokens, acks, stop and close).
AnyTypist = Typist | HttpTypist
