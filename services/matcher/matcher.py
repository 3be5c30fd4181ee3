"""The match endpoint's logic: a socket's life (handshake, pool entry, messages, exit), the
find_match flow, delivery to partners on any process, and the pool heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import defaultdict
from dataclasses import replace

import asyncpg
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from redis.asyncio import Redis
from starlette.websockets import WebSocket, WebSocketState

from services.matcher.connection import SLOW_CLIENT, Connection, parse, receive_loop
from services.matcher.handshake import admit, authenticate, refuse
from services.matcher.hub import Hub
from services.matcher.messages import (
    Cancel,
    Cancelled,
    Delivery,
    ErrorMsg,
    FindMatch,
    MatchFound,
    NoMatchFound,
    Ping,
    Pong,
    Queued,
    RateLimitedMsg,
    client_message,
)
from services.matcher.pool import Pool, PoolEntry, clean_interests, language_key
from services.matcher.quota import SocketQuota
from services.matcher.sessions import SessionWatch
from shared.domain import profiles, trending
from shared.domain.accounts import Accounts, Principal, token_hash
from shared.domain.documents import Documents
from shared.domain.errors import RedlineError
from shared.domain.events import to_inbox
from shared.domain.models import Profile
from shared.infra.clock import now_ms
from shared.infra.dependencies import DOWN
from shared.infra.metrics import MatcherMetrics
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import MatchReply, MatchStatus, Scripts

log = logging.getLogger("redline.matcher")
# A room that could not be opened: a store down, or Postgres or the domain refused the rows.
ROOM_FAILURES: tuple[type[Exception], ...] = (*DOWN, asyncpg.PostgresError, RedlineError)

# Sockets per pipelined round trip when the heartbeat refreshes pool entries or redelivers inbox
# results: bounded replies, one round trip per batch.
REFRESH_BATCH = 500
# A store the socket needs failed mid-session: not the client's fault, come back shortly.
UNAVAILABLE = (1013, "service unavailable; retry")


class Matcher:
    def __init__(
        self,
        settings: Settings,
        keys: Keys,
        state: Redis,
        db: asyncpg.Pool,
        scripts: Scripts,
        accounts: Accounts,
        documents: Documents,
        metrics: MatcherMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.state = state
        self.db = db
        self.scripts = scripts
        self.accounts = accounts
        self.documents = documents
        # An app exports these on /metrics; without one they count into a registry nobody reads.
        self.metrics = metrics or MatcherMetrics(CollectorRegistry())
        self.pool = Pool(settings, scripts)
        self.hub = Hub(settings.state_url, keys, self._delivered, self._redeliver)
        self.metrics.count_sockets(lambda: len(self.hub))
        self._interval_ms = max(1, settings.match_period_s * 1000 // settings.match_rate)
        self._heartbeat: asyncio.Task[None] | None = None
        # Every local socket (match and events) by session: ended with its session.
        self.sessions = SessionWatch(state, keys, settings.ws_session_check_s)
        self._revocations: asyncio.Task[None] | None = None
        self.quota = SocketQuota(state, keys, settings.ws_max_sockets_per_user, settings.pool_ttl_s)

    async def start(self) -> None:
        await self.hub.start()
        await self.sessions.start()
        self._revocations = asyncio.create_task(
            self.accounts.listen(on_revoked=self.sessions.revoked, on_live=self.sessions.set_live),
            name="session revocations",
        )
        self._heartbeat = asyncio.create_task(self._refresh_loop(), name="matcher-heartbeat")

    async def stop(self) -> None:
        for task in (self._heartbeat, self._revocations):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.sessions.stop()
        await self.hub.stop()

    # A socket's life -----------------------------------------------------------------------
    async def serve(self, ws: WebSocket) -> None:
        opened = await self._open(ws)
        if opened is None:
            return
        conn = opened
        try:
            self.sessions.add(conn)
            await self.hub.attach(conn)
            waiting = await self._drain_inbox(conn)
            if not waiting:
                await self._enter(conn, rejoin=True)
            await self._receive_loop(conn)
        except DOWN as exc:
            log.warning("matcher dependency failed", extra={"err": str(exc)})
            conn.close_with = conn.close_with or UNAVAILABLE
        except Exception:
            # A bug must cost one socket (closed 1011), never the process or a hung client.
            log.exception("matcher socket failed", extra={"user": conn.user_id})
            conn.close_with = conn.close_with or (1011, "internal error")
        finally:
            if conn.close_with == SLOW_CLIENT:
                self.metrics.slow_clients.inc()
            self.sessions.discard(conn)
            await conn.stop()
            await self.hub.detach(conn)
            await self.quota.release(conn.user_id, conn.sid)
            if conn.in_pool:
                with contextlib.suppress(*DOWN):
                    await self.pool.leave(conn.language, conn.user_id, conn.ticket)
            await self.close(conn)

    async def _open(self, ws: WebSocket) -> Connection | None:
        """Check Origin and token, load the profile, then accept; None when refused."""
        caller = await authenticate(
            ws, self.settings.allowed_origins, self.accounts, "a matcher socket"
        )
        if caller is None:
            return None
        try:
            async with self.db.acquire() as db:
                profile = await profiles.load(db, caller.principal.user_id)
        except DOWN:
            await refuse(ws, 503, "the matcher cannot reach its stores; retry shortly")
            return None
        if profile is None:
            await refuse(ws, 401, "the session's user no longer exists")
            return None
        session = self.keys.session(token_hash(caller.token))
        conn = self._connection(ws, caller.principal, profile, session)
        return await self.accept(conn, caller.subprotocol)

    async def accept(self, conn: Connection, subprotocol: str | None) -> Connection | None:
        """Take the socket's place in its user's cap (else refused: 429), then accept."""
        if not await admit(conn.ws, self.quota, conn.user_id, conn.sid):
            return None
        try:
            await conn.ws.accept(subprotocol=subprotocol)
        except BaseException:
            await self.quota.release(conn.user_id, conn.sid)
            raise
        return conn

    def _connection(
        self, ws: WebSocket, principal: Principal, profile: Profile, session: str
    ) -> Connection:
        entry = PoolEntry(
            user_id=principal.user_id,
            ticket=secrets.token_hex(8),
            region=profile.region or "",
            interests=clean_interests(profile.interests),
        )
        return Connection(
            ws,
            principal,
            language_key(profile.language),
            entry,
            self.settings.ws_send_queue,
            self._acknowledge,
            session,
        )

    async def _receive_loop(self, conn: Connection) -> None:
        await receive_loop(conn, self.settings, self._handle)

    async def _handle(self, conn: Connection, text: str) -> None:
        msg = parse(conn, client_message, text)
        if msg is None:
            return
        if isinstance(msg, Ping):
            conn.push(Pong())
        elif isinstance(msg, Cancel):
            if conn.in_pool:
                conn.in_pool = False
                await self.pool.leave(conn.language, conn.user_id, conn.ticket)
            conn.push(Cancelled())
        elif isinstance(msg, FindMatch):
            await self._find(conn, msg)

    async def close(self, conn: Connection) -> None:
        if WebSocketState.DISCONNECTED in (conn.ws.client_state, conn.ws.application_state):
            return
        code, reason = conn.close_with or (1000, "")
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await conn.ws.close(code, reason)

    # Pool ----------------------------------------------------------------------------------
    async def _enter(self, conn: Connection, *, rejoin: bool) -> bool:
        """Make the connection findable; False when a match claimed it meanwhile."""
        reply = await self.pool.enter(conn.language, conn.entry, rejoin=rejoin)
        if reply.status is MatchStatus.CLAIMED:
            conn.in_pool = False
            return False
        conn.in_pool = True
        conn.push(Queued(language=conn.language, interests=list(conn.entry.interests)))
        return True

    async def _find(self, conn: Connection, msg: FindMatch) -> None:
        decision = await self.scripts.gcra(
            self.keys.rate_limit("match", conn.user_id),
            self._interval_ms,
            self.settings.match_rate,
            now_ms(),
        )
        if not decision.allowed:
            conn.push(RateLimitedMsg(retry_after=max(1, math.ceil(decision.retry_after_ms / 1000))))
            return
        if msg.interests is not None or msg.region is not None:
            conn.entry = replace(
                conn.entry,
                interests=clean_interests(msg.interests)
                if msg.interests is not None
                else conn.entry.interests,
                wanted_region=msg.region or "",
            )
        if not conn.entry.interests:
            conn.push(ErrorMsg(detail="no interests to match on: add some to your profile"))
            return
        with self.metrics.find_duration.time():
            reply = await self.pool.find(conn.language, conn.entry, rejoin=not conn.in_pool)
        if reply.status is MatchStatus.CLAIMED:
            # Someone's match claimed us a moment ago; its match_found is on the way.
            conn.in_pool = False
        elif reply.status is MatchStatus.QUEUED:
            conn.in_pool = True
            conn.push(NoMatchFound())
        else:
            conn.in_pool = False
            await self._matched(conn, reply)

    async def _matched(self, conn: Connection, reply: MatchReply) -> None:
        """After the claim: the room, trending, and the result to both partners."""
        assert reply.partner_id is not None
        partner, shared = reply.partner_id, list(reply.shared)
        title = "Room: " + (", ".join(shared) or "new match")
        try:
            doc = await self.documents.create(
                conn.principal, title[:200], "", members=[conn.user_id, partner]
            )
        except ROOM_FAILURES as exc:
            log.warning("room creation failed; both back in the pool", extra={"err": str(exc)})
            await self._publish(partner, Delivery(requeue=True, ticket=reply.partner_ticket))
            await self._enter(conn, rejoin=True)
            conn.push(ErrorMsg(detail="could not open a room; you are back in the pool"))
            return
        theirs = MatchFound(
            room_id=doc.id, partner_id=conn.user_id, document_id=doc.id, shared_interests=shared
        )
        await self._publish(partner, Delivery(frame=theirs, ticket=reply.partner_ticket), True)
        self.metrics.matches.inc()
        conn.push(
            MatchFound(
                room_id=doc.id, partner_id=partner, document_id=doc.id, shared_interests=shared
            )
        )
        # After both results: the count is not on the path of either partner's match_found.
        try:
            await trending.bump(self.state, self.keys, shared)
        except DOWN as exc:  # a lost trending count is not worth failing a match for
            log.warning("trending bump failed", extra={"err": str(exc)})

    # Delivery ------------------------------------------------------------------------------
    async def _publish(self, user_id: str, delivery: Delivery, inbox: bool = False) -> None:
        """To the user's channel (every process holding them hears it) and, for results, their
        inbox too, for a client that is reconnecting right now."""
        if inbox:
            inbox_id = await to_inbox(
                self.state,
                self.keys,
                user_id,
                {"d": delivery.model_dump_json()},
                self.settings.match_inbox_ttl_s * 1000,
            )
            delivery = delivery.model_copy(update={"inbox_id": inbox_id})
        await self.state.publish(self.keys.match_channel(user_id), delivery.model_dump_json())

    async def _delivered(self, conn: Connection, delivery: Delivery) -> None:
        """A message on the user's channel, for one of their local connections."""
        mine = delivery.ticket == conn.ticket
        if delivery.frame is not None:
            if mine:
                conn.in_pool = False
            queued = conn.push(delivery.frame, delivery.inbox_id)
            (self.metrics.deliveries if queued else self.metrics.drops).inc()
        elif delivery.requeue and mine and conn.close_with is None:
            with contextlib.suppress(*DOWN):
                await self._enter(conn, rejoin=True)

    async def _drain_inbox(self, conn: Connection) -> bool:
        """Send results that waited for this user; True when one is a match (then the user is
        on their way to a room and does not re-enter the pool by connecting)."""
        oldest = now_ms() - self.settings.match_inbox_ttl_s * 1000
        entries = await self.state.xrange(self.keys.inbox(conn.user_id), min=f"{oldest}-0")
        matched = False
        for inbox_id, fields in entries:
            try:
                delivery = Delivery.model_validate_json(fields.get("d", ""))
            except ValidationError:
                continue
            if delivery.frame is not None:
                matched = True
                conn.push(delivery.frame, inbox_id)
        return matched

    async def _redeliver(self) -> None:
        """After a pub/sub outage: send every local socket the results still in its inbox
        (delivered ones were deleted; one in flight right now may arrive twice)."""
        conns = list(self.hub.connections())
        oldest = f"{now_ms() - self.settings.match_inbox_ttl_s * 1000}-0"
        for i in range(0, len(conns), REFRESH_BATCH):
            batch = conns[i : i + REFRESH_BATCH]
            try:
                async with self.state.pipeline(transaction=False) as pipe:
                    for conn in batch:
                        pipe.xrange(self.keys.inbox(conn.user_id), min=oldest)
                    inboxes = await pipe.execute()
            except DOWN as exc:
                log.warning("inbox redelivery failed", extra={"err": str(exc)})
                return
            for conn, entries in zip(batch, inboxes, strict=True):
                for inbox_id, fields in entries:
                    try:
                        delivery = Delivery.model_validate_json(fields.get("d", ""))
                    except ValidationError:
                        continue
                    await self._delivered(conn, delivery.model_copy(update={"inbox_id": inbox_id}))

    async def _acknowledge(self, user_id: str, inbox_id: str) -> None:
        """A result reached a socket: it need not wait in the inbox any more."""
        with contextlib.suppress(*DOWN):
            await self.state.xdel(self.keys.inbox(user_id), inbox_id)

    # Heartbeat -----------------------------------------------------------------------------
    async def _refresh_loop(self) -> None:
        period = max(1.0, self.settings.pool_ttl_s / 3)
        while True:
            await asyncio.sleep(period)
            started = time.perf_counter()
            try:
                await self.refresh()
            except DOWN as exc:
                log.warning("pool heartbeat failed", extra={"err": str(exc)})
            try:
                await self.quota.renew(self.sessions.connections())
            except DOWN as exc:
                log.warning("socket count renewal failed", extra={"err": str(exc)})
            log.debug("pool heartbeat", extra={"s": round(time.perf_counter() - started, 3)})

    async def refresh(self) -> None:
        """Extend every local in-pool entry; put back the ones lost (expired, not claimed)."""
        by_language: dict[str, list[Connection]] = defaultdict(list)
        for conn in self.hub.connections():
            if conn.in_pool:
                by_language[conn.language].append(conn)
        for language, conns in by_language.items():
            for i in range(0, len(conns), REFRESH_BATCH):
                batch = conns[i : i + REFRESH_BATCH]
                lost = set(
                    await self.pool.refresh(language, [(c.user_id, c.ticket) for c in batch])
                )
                for conn in batch:
                    if conn.user_id in lost and conn.in_pool:
                        await self._enter(conn, rejoin=False)
