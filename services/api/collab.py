"""`/v1/collab/{document_id}`: Yjs co-editing over the y-websocket protocol (docs/collab.md).

A standard client (`y-websocket`'s WebsocketProvider with any Yjs editor binding) connects
unchanged. The handshake is the matcher's (Origin, then a bearer token in Authorization or the
`bearer, <token>` subprotocol) plus the one document access rule, all before accept; a document
the caller may not open is refused as a missing one (404).

Durable before acknowledged: an update reaches anyone (its sender's echo included) only after the
append script has put it in the document's update log, bumped the version and marked the
document dirty. A refused or failed append closes the socket without relaying; the client's
resync (step 1/2) on reconnect resends what the server lacks. A malformed frame closes 1007 and
never enters the log; a text frame closes 1003; a frame over the cap, or an update that could
take the document past REDLINE_MAX_DOCUMENT_BYTES, 1009; the author's update
rate or a full log 1013 (try again later: the flusher has not folded yet); a deleted document,
revoked access, a logout or the session's expiry 1008.

Awareness (cursors, names) is stored too, bounded and expiring, never persisted: a joining socket
gets every stored state right after step 1, query-awareness is answered from the store, and a
closing socket's clients are announced gone (state null) to everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid

from arq.connections import ArqRedis
from pycrdt import get_state, get_update
from redis.asyncio import Redis
from starlette.websockets import WebSocket

from services.api.rooms import AWARENESS, Peer, Rooms
from shared.domain import collab
from shared.domain.accounts import Accounts, Principal, token_hash
from shared.domain.collab import MalformedMessage
from shared.domain.documents import Documents
from shared.domain.errors import RedlineError
from shared.domain.handshake import authenticate, refuse, refuse_unavailable
from shared.domain.jobs import enqueue_flush
from shared.domain.sessions import SessionDeadlines
from shared.infra.clock import now_ms
from shared.infra.dependencies import DOWN
from shared.settings import Settings
from shared.store.awareness import AwarenessStatus, AwarenessStore, awareness_limits
from shared.store.keys import Keys
from shared.store.update_log import AppendReply, AppendStatus, SeedStatus, Snapshot, UpdateLog

log = logging.getLogger("redline.collab")

UNAVAILABLE = (1013, "a store is unreachable; reconnect shortly")
# A leave that could not be recorded: a store down, or the document gone meanwhile.
LEAVE_FAILURES: tuple[type[Exception], ...] = (*DOWN, RedlineError)
CLOSE_FOR: dict[AppendStatus, tuple[int, str]] = {
    AppendStatus.RATE_LIMITED: (1013, "too many updates: slow down"),
    AppendStatus.LOG_FULL: (1013, "the document is saving a backlog: reconnect shortly"),
    AppendStatus.DELETED: (1008, "the document was deleted"),
    AppendStatus.NO_ACCESS: (1008, "you may no longer edit this document"),
    # As a frame over the cap: the message is too big for the document (its text as folded
    # plus the updates not folded yet; deletes count until the next flush folds them).
    AppendStatus.TOO_LARGE: (1009, "the document is at its size limit"),
}
NOT_REPLICATED = (1013, "too few replicas confirmed the update in time; reconnect shortly")
SESSION_ENDED = (1008, "session ended")  # expired (or revoked unheard): as the matcher says


class Collab:
    def __init__(
        self,
        settings: Settings,
        accounts: Accounts,
        documents: Documents,
        updates: UpdateLog,
        subscriber: Redis,
        keys: Keys,
        queue: ArqRedis,
        state: Redis,
    ) -> None:
        """`state`: a binary client of the state Redis (stored awareness, session checks)."""
        self._settings = settings
        self._accounts = accounts
        self._documents = documents
        self._updates = updates
        self._keys = keys
        self._queue = queue
        # Each update's origin in the log and on the relay: this process and socket (a process
        # skips what its own sockets sent: they were relayed here at once).
        self._process = secrets.token_hex(4)
        self.rooms = Rooms(subscriber, keys, self._process, self._whole)
        # A socket's appends: this process holds the document's channel (joined before the
        # socket reads a frame) and relays to its own sockets, so the script publishes only for
        # other processes.
        self._own_relay = self.rooms.control
        self._awareness = AwarenessStore(state, keys, awareness_limits(settings))
        # The Yjs client ids each socket (by origin) stored awareness for: cleared when it closes.
        self._announced: dict[str, set[int]] = {}
        # Open sockets by session key: a logout anywhere, or the session's expiry, closes them.
        self._sessions: SessionDeadlines[Peer] = SessionDeadlines(
            state, keys, settings.ws_session_check_s, _session_ended, log
        )
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.rooms.start()
        self._watch = asyncio.create_task(self._sessions.run(), name="collab session watch")

    def revoked(self, session: str) -> None:
        """A session ended (logout, published to every process): close its sockets."""
        for peer in self._sessions.of(self._keys.session(session)):
            peer.stop(1008, "logged out")
        self._sessions.revoked(session)

    def set_live(self, live: bool) -> None:
        """Whether revocations are heard (`Accounts.listen`'s on_live): while they are not,
        every session with a socket here is checked each second."""
        self._sessions.set_live(live)

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        await self.rooms.stop()

    async def serve(self, ws: WebSocket, document_id: str) -> None:
        opened = await self._open(ws, document_id)
        if opened is None:
            return
        principal, subprotocol, doc_id, snapshot, session = opened
        await ws.accept(subprotocol=subprotocol)
        peer = Peer(ws, self._settings.ws_send_queue)
        writer = asyncio.create_task(peer.drain(), name="collab writer")
        beat = asyncio.create_task(
            self._heartbeat(peer, principal, doc_id), name="collab heartbeat"
        )
        origin = f"{self._process}:{secrets.token_hex(4)}"
        session_key = self._keys.session(session)
        self._sessions.watch(session_key, peer)
        try:
            await self.rooms.join(doc_id, peer)
            peer.send(collab.encode(collab.SyncStep1(get_state(_folded(snapshot)))))
            # Then everyone's cursors at once, not at each client's next renewal (up to 15 s).
            await self._send_awareness(peer, doc_id, always=False)
            await self._receive(peer, principal, doc_id, origin)
        except DOWN as exc:
            log.warning("collab dependency failed", extra={"err": str(exc), "doc": doc_id})
            peer.stop(*UNAVAILABLE)
        except Exception:
            log.exception("collab socket failed", extra={"doc": doc_id})
            peer.stop(1011, "internal error")
        finally:
            self._sessions.unwatch(session_key, peer)
            await self.rooms.leave(doc_id, peer)
            await self._clear_awareness(doc_id, origin)
            peer.stop(1000, "closed")
            await self._leave(principal, doc_id)
            beat.cancel()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(peer.closed.wait(), 5)
            writer.cancel()
            await asyncio.gather(writer, beat, return_exceptions=True)

    # Handshake -----------------------------------------------------------------------------
    async def _open(
        self, ws: WebSocket, document_id: str
    ) -> tuple[Principal, str | None, str, Snapshot, str] | None:
        caller = await authenticate(
            ws, self._settings.allowed_origins, self._accounts, "a collab socket"
        )
        if caller is None:
            return None
        missing = f"document {document_id} not found"
        try:
            doc_id = str(uuid.UUID(document_id))
        except ValueError:
            await refuse(ws, 404, missing)
            return None
        try:
            snapshot = await self._seeded(caller.principal, doc_id)
        except DOWN as exc:
            await refuse_unavailable(ws, exc)
            return None
        if snapshot is None:
            await refuse(ws, 404, missing)
            return None
        return caller.principal, caller.subprotocol, doc_id, snapshot, token_hash(caller.token)

    async def _seeded(self, who: Principal, doc_id: str) -> Snapshot | None:
        """The document's snapshot once it has a Yjs state (seeding it from its text the first
        time), or None when `who` may not open it (missing, deleted, not theirs: one answer)."""
        for _ in range(5):
            if not await self._documents.readable(who, doc_id):  # loads it from Postgres too
                return None
            snapshot = await self._updates.read(doc_id, self._settings.collab_log_max_entries)
            if snapshot.state is not None:
                return snapshot
            if snapshot.version is None:
                continue  # evicted between the two calls: load it again
            seed = collab.seed_update(snapshot.text or "")
            status = await self._updates.seed(doc_id, seed, snapshot.version)
            if status == SeedStatus.DELETED:
                return None
            # Installed, seeded by another process, or edited over HTTP meanwhile: read again.
        raise ConnectionError(f"document {doc_id} would not settle for seeding")

    # Frames --------------------------------------------------------------------------------
    async def _receive(self, peer: Peer, who: Principal, doc_id: str, origin: str) -> None:
        cap = self._settings.collab_max_frame_bytes
        while peer.close_with is None:
            message = await peer.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            frame = message.get("bytes")
            if frame is None:
                peer.stop(1003, "the y-websocket protocol is binary frames only")
                return
            if len(frame) > cap:
                peer.stop(1009, f"frames are at most {cap} bytes")
                return
            try:
                await self._handle(peer, who, doc_id, origin, frame)
            except MalformedMessage as exc:
                peer.stop(1007, exc.detail)
                return

    async def _handle(
        self, peer: Peer, who: Principal, doc_id: str, origin: str, frame: bytes
    ) -> None:
        msg = collab.parse(frame)
        if isinstance(msg, collab.SyncStep1):
            peer.send(collab.encode(collab.SyncStep2(await self._missing(doc_id, msg))))
        elif isinstance(msg, collab.SyncStep2 | collab.Update):
            if msg.update == collab.EMPTY_UPDATE:
                return
            reply = await self._append(who, doc_id, collab.checked(msg.update), origin)
            if reply.status != AppendStatus.APPENDED:
                peer.stop(*CLOSE_FOR[reply.status])
            elif not await self._documents.replicated():
                # On the primary only (REDLINE_EDIT_MIN_REPLICAS): not acknowledged, so not
                # relayed; the resync after the reconnect finds it stored, or resends it.
                peer.stop(*NOT_REPLICATED)
            else:
                self.rooms.relay(doc_id, collab.encode(collab.Update(msg.update)))
        elif isinstance(msg, collab.Awareness):
            await self._aware(doc_id, origin, msg, frame)
        elif isinstance(msg, collab.QueryAwareness):
            await self._send_awareness(peer, doc_id, always=True)

    # Awareness ---------------------------------------------------------------------------
    async def _aware(self, doc_id: str, origin: str, msg: collab.Awareness, frame: bytes) -> None:
        """Store the frame's entries, then relay what was taken: the frame as sent when all
        was (the script published it to the other processes in the same call), else only the
        entries taken. A state refused (stale, or past a cap) goes to nobody; the socket stays:
        cursors are not worth a reconnect loop."""
        entries = collab.parse_awareness(msg.payload)
        if not entries:
            return  # nobody in it (a heartbeat's shape)
        relay = origin.encode() + b" " + AWARENESS + b" " + frame  # as Rooms reads the channel
        statuses = await self._awareness.set(doc_id, entries, origin, now_ms(), relay)
        announced = self._announced.setdefault(origin, set())
        taken = []
        for entry, status in zip(entries, statuses, strict=True):
            if status == AwarenessStatus.STORED:
                # Bounded: past twice the cap, what is not remembered expires on its own.
                if len(announced) < 2 * self._settings.collab_awareness_max_entries:
                    announced.add(entry.client)
            elif status == AwarenessStatus.REMOVED:
                announced.discard(entry.client)
            elif status in (AwarenessStatus.FULL, AwarenessStatus.TOO_BIG):
                log.debug("awareness refused", extra={"doc": doc_id, "status": status.name})
            if status.taken:
                taken.append(entry)
        if len(taken) == len(entries):
            self.rooms.relay(doc_id, frame)
        elif taken:
            await self.rooms.share_awareness(doc_id, origin, collab.awareness_frame(taken))

    async def _send_awareness(self, peer: Peer, doc_id: str, *, always: bool) -> None:
        """Every stored awareness state to this socket; with nothing stored, an empty update
        only when asked (`always`: query-awareness gets an answer)."""
        states = await self._awareness.states(doc_id, now_ms())
        if states or always:
            peer.send(collab.awareness_frame(states))

    async def _clear_awareness(self, doc_id: str, origin: str) -> None:
        """A closing socket's clients are gone: removed from the store, and every other socket
        told (state null at the next clock). Best effort: unremoved, they expire by themselves."""
        announced = self._announced.pop(origin, None)
        if not announced:
            return
        try:
            gone = await self._awareness.clear(doc_id, origin, sorted(announced))
            if gone:
                await self.rooms.share_awareness(doc_id, origin, collab.gone_frame(gone))
        except DOWN as exc:
            log.info("collab awareness not cleared", extra={"err": str(exc), "doc": doc_id})

    async def _missing(self, doc_id: str, step1: collab.SyncStep1) -> bytes:
        """What a client with this state vector lacks of the document, as one update."""
        snapshot = await self._updates.read(doc_id, self._settings.collab_log_max_entries)
        try:
            missing: bytes = get_update(_folded(snapshot), step1.state_vector)
        except ValueError:
            raise MalformedMessage("not a Yjs state vector") from None
        return missing

    async def _whole(self, doc_id: str) -> bytes:
        """The document's whole stored state as one update frame."""
        snapshot = await self._updates.read(doc_id, self._settings.collab_log_max_entries)
        return collab.encode(collab.Update(_folded(snapshot)))

    async def _append(self, who: Principal, doc_id: str, update: bytes, origin: str) -> AppendReply:
        for _ in range(3):
            reply = await self._updates.append(
                doc_id,
                update,
                origin,
                who.user_id,
                now_ms(),
                who.grants,
                None,
                self._own_relay,
                capped=True,
            )
            if reply.status not in (AppendStatus.NOT_LOADED, AppendStatus.NOT_SEEDED):
                return reply
            # Evicted while clean (or never seeded here): load and seed it, then append again.
            if await self._seeded(who, doc_id) is None:
                return AppendReply(AppendStatus.NO_ACCESS, 0, "")
        raise ConnectionError(f"document {doc_id} would not stay loaded")

    async def _heartbeat(self, peer: Peer, who: Principal, doc_id: str) -> None:
        """Keep the socket's editor present (`editors` counts collab sockets), and, since
        y-websocket clients drop a connection silent for 30 s, say something every heartbeat
        when nothing else went out."""
        every = self._settings.collab_heartbeat_s
        renew = self._settings.presence_ttl_s / 3
        loop = asyncio.get_running_loop()
        present_at = -renew
        while peer.close_with is None:
            if loop.time() - present_at >= renew:
                try:
                    await self._documents.join(who, doc_id)
                    present_at = loop.time()
                except DOWN as exc:  # presence is a hint: the socket stays
                    log.warning("collab presence not renewed", extra={"err": str(exc)})
                except RedlineError:
                    peer.stop(1008, "you may no longer edit this document")
                    return
            if loop.time() - peer.sent_at >= every:
                peer.send(collab.HEARTBEAT)
            idle = every - (loop.time() - peer.sent_at)
            await asyncio.sleep(max(min(idle, renew - (loop.time() - present_at)), 0.05))

    async def _leave(self, who: Principal, doc_id: str) -> None:
        """The last editor out asks for the document's flush now, as the HTTP leave does."""
        try:
            last, _ = await self._documents.leave(who, doc_id)
            if last:
                await enqueue_flush(self._queue, self._keys, doc_id)
        except LEAVE_FAILURES as exc:  # still dirty: the cron flush saves it
            log.info("collab leave not recorded", extra={"err": str(exc), "doc": doc_id})


def _session_ended(peer: Peer) -> None:
    peer.stop(*SESSION_ENDED)


def _folded(snapshot: Snapshot) -> bytes:
    return collab.merged([snapshot.state or collab.EMPTY_UPDATE, *(u for _, u in snapshot.log)])
