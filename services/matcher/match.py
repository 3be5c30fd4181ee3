"""`/v1/ws/match`. A `MatchSession` is one match socket's part in matching: its pool entry, the
find_match flow, the results it is sent and the ones waiting in its user's inbox. The
`MatchEndpoint` holds this process's match sessions: it opens them (handshake, profile), hears
their results from any process through the hub, and keeps their pool entries alive on the
session watcher's heartbeat."""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace

import asyncpg
from pydantic import ValidationError
from starlette.websockets import WebSocket

from services.matcher.connection import SLOW_CLIENT, Connection, contained, parse, receive_loop
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
from services.matcher.quota import throttle
from services.matcher.resources import Resources
from shared.domain import profiles, trending
from shared.domain.errors import RedlineError
from shared.domain.events import to_inbox
from shared.domain.handshake import authenticate, refuse, refuse_unavailable
from shared.domain.models import Profile
from shared.infra.clients import pubsub_client
from shared.infra.clock import now_ms
from shared.infra.dependencies import DOWN
from shared.store.scripts import MatchReply, MatchStatus

log = logging.getLogger("redline.matcher")
# A room that could not be opened: a store down, or Postgres or the domain refused the rows.
ROOM_FAILURES: tuple[type[Exception], ...] = (*DOWN, asyncpg.PostgresError, RedlineError)

# Sockets per pipelined round trip when the heartbeat refreshes pool entries or redelivery reads
# inboxes: bounded replies, one round trip per batch.
REFRESH_BATCH = 500

InboxEntries = list[tuple[str, dict[str, str]]]


class MatchSession:
    __slots__ = ("_pool", "_res", "conn", "entry", "in_pool", "language")

    def __init__(self, res: Resources, pool: Pool, conn: Connection, profile: Profile) -> None:
        self._res = res
        self._pool = pool
        self.conn = conn
        self.language = language_key(profile.language)
        self.entry = PoolEntry(
            user_id=conn.user_id,
            ticket=secrets.token_hex(8),
            region=profile.region or "",
            interests=clean_interests(profile.interests),
        )
        # True while this session's ticket should own an entry in the pool.
        self.in_pool = False

    @property
    def user_id(self) -> str:
        return self.conn.user_id

    @property
    def ticket(self) -> str:
        return self.entry.ticket

    async def handle(self, text: str) -> None:
        msg = parse(self.conn, client_message, text)
        if msg is None:
            return
        if isinstance(msg, Ping):
            self.conn.push(Pong())
        elif isinstance(msg, Cancel):
            if self.in_pool:
                self.in_pool = False
                await self._pool.leave(self.language, self.user_id, self.ticket)
            self.conn.push(Cancelled())
        elif isinstance(msg, FindMatch):
            await self._find(msg)

    # Pool ----------------------------------------------------------------------------------
    async def enter(self, *, requeue: bool = False) -> bool:
        """Make the session findable; False when a match has claimed its ticket (`requeue`: that
        match was called off, so the ticket is back)."""
        reply = await self._pool.enter(self.language, self.entry, requeue=requeue)
        if reply.status is MatchStatus.CLAIMED:
            self.in_pool = False
            return False
        self.in_pool = True
        self.conn.push(Queued(language=self.language, interests=list(self.entry.interests)))
        return True

    async def leave(self) -> None:
        """At the socket's exit: out of the pool (a store down: the entry lapses by itself)."""
        if self.in_pool:
            with contextlib.suppress(*DOWN):
                await self._pool.leave(self.language, self.user_id, self.ticket)

    async def _find(self, msg: FindMatch) -> None:
        settings = self._res.settings
        key = self._res.keys.rate_limit("match", self.user_id)
        wait_s = await throttle(
            self._res.scripts, key, settings.match_period_s, settings.match_rate
        )
        if wait_s is not None:
            self.conn.push(RateLimitedMsg(retry_after=wait_s))
            return
        if msg.interests is not None or msg.region is not None:
            self.entry = replace(
                self.entry,
                interests=clean_interests(msg.interests)
                if msg.interests is not None
                else self.entry.interests,
                wanted_region=msg.region or "",
            )
        if not self.entry.interests:
            self.conn.push(ErrorMsg(detail="no interests to match on: add some to your profile"))
            return
        with self._res.metrics.find_duration.time():
            reply = await self._pool.find(self.language, self.entry)
        if reply.status is MatchStatus.CLAIMED:
            # Someone's match claimed this ticket: its match_found is on the way, or this
            # find_match crossed it (sent on `queued`, it arrived after the match). Either way
            # this search is that match, not the start of another.
            self.in_pool = False
        elif reply.status is MatchStatus.QUEUED:
            self.in_pool = True
            self.conn.push(NoMatchFound())
        else:
            self.in_pool = False
            await self._matched(reply)

    async def _matched(self, reply: MatchReply) -> None:
        """After the claim: the room, trending, and the result to both partners."""
        assert reply.partner_id is not None
        res = self._res
        partner, shared = reply.partner_id, list(reply.shared)
        title = "Room: " + (", ".join(shared) or "new match")
        try:
            doc = await res.documents.create(
                self.conn.principal, title[:200], "", members=[self.user_id, partner]
            )
        except ROOM_FAILURES as exc:
            log.warning("room creation failed; both back in the pool", extra={"err": str(exc)})
            await publish(res, partner, Delivery(requeue=True, ticket=reply.partner_ticket))
            await self.enter()
            self.conn.push(ErrorMsg(detail="could not open a room; you are back in the pool"))
            return
        theirs = MatchFound(
            room_id=doc.id, partner_id=self.user_id, document_id=doc.id, shared_interests=shared
        )
        await publish(res, partner, Delivery(frame=theirs, ticket=reply.partner_ticket), True)
        res.metrics.matches.inc()
        self.conn.push(
            MatchFound(
                room_id=doc.id, partner_id=partner, document_id=doc.id, shared_interests=shared
            )
        )
        # After both results: the count is not on the path of either partner's match_found.
        try:
            await trending.bump(res.state, res.keys, shared)
        except DOWN as exc:  # a lost trending count is not worth failing a match for
            log.warning("trending bump failed", extra={"err": str(exc)})

    # Results -------------------------------------------------------------------------------
    async def delivered(self, delivery: Delivery) -> None:
        """A message on the user's channel (or from their inbox), for this session."""
        mine = delivery.ticket == self.ticket
        if delivery.frame is not None:
            if mine:
                self.in_pool = False
            elif self.in_pool:
                # The user was matched through another of their sockets: this one leaves the
                # pool before it shows the match, or a second search could match them again.
                self.in_pool = False
                with contextlib.suppress(*DOWN):
                    await self._pool.leave(self.language, self.user_id, self.ticket)
            queued = self.conn.push(delivery.frame, delivery.inbox_id)
            metrics = self._res.metrics
            (metrics.deliveries if queued else metrics.drops).inc()
        elif delivery.requeue and mine and self.conn.close_with is None:
            # The match that claimed this ticket was called off: only this takes a claim back.
            with contextlib.suppress(*DOWN):
                await self.enter(requeue=True)

    async def drain_inbox(self) -> bool:
        """Send results that waited for this user; True when one is a match (then the user is
        on their way to a room and does not re-enter the pool by connecting)."""
        res = self._res
        entries = await res.state.xrange(res.keys.inbox(self.user_id), min=inbox_start(res))
        matched = False
        for inbox_id, delivery in deliveries(entries):
            if delivery.frame is not None:
                matched = True
                self.conn.push(delivery.frame, inbox_id)
        return matched


class MatchEndpoint:
    def __init__(self, res: Resources) -> None:
        self._res = res
        self._pool = Pool(res.settings, res.scripts)
        self._hub: Hub[MatchSession] = Hub(
            pubsub_client(res.settings), res.keys, MatchSession.delivered, self._redeliver
        )
        res.metrics.count_sockets(lambda: len(self._hub))
        res.sessions.on_heartbeat("pool heartbeat", self.refresh)

    async def start(self) -> None:
        await self._hub.start()

    async def stop(self) -> None:
        await self._hub.stop()

    async def serve(self, ws: WebSocket) -> None:
        session = await self._open(ws)
        if session is None:
            return
        conn = session.conn
        try:
            async with contained(conn, "match socket"):
                await self._hub.attach(session)
                waiting = await session.drain_inbox()
                if not waiting:
                    await session.enter()
                await receive_loop(conn, self._res.settings, session.handle)
        finally:
            if conn.close_with == SLOW_CLIENT:
                self._res.metrics.slow_clients.inc()
            await self._hub.detach(session)
            await session.leave()
            await self._res.sessions.release(conn)

    async def _open(self, ws: WebSocket) -> MatchSession | None:
        """Check Origin and token, load the profile, then accept; None when refused."""
        res = self._res
        caller = await authenticate(
            ws, res.settings.allowed_origins, res.accounts, "a matcher socket"
        )
        if caller is None:
            return None
        try:
            async with res.db.acquire() as db:
                profile = await profiles.load(db, caller.principal.user_id)
        except DOWN as exc:
            await refuse_unavailable(ws, exc)
            return None
        if profile is None:
            await refuse(ws, 401, "the session's user no longer exists")
            return None
        conn = await res.sessions.admit(ws, caller, self._acknowledge)
        if conn is None:
            return None
        return MatchSession(res, self._pool, conn, profile)

    async def _acknowledge(self, user_id: str, inbox_id: str) -> None:
        """A result reached a socket: it need not wait in the inbox any more."""
        with contextlib.suppress(*DOWN):
            await self._res.state.xdel(self._res.keys.inbox(user_id), inbox_id)

    async def _redeliver(self) -> None:
        """After a pub/sub outage: send every local session the results still in its inbox
        (delivered ones were deleted; one in flight right now may arrive twice)."""
        res = self._res
        sessions = list(self._hub.members())
        oldest = inbox_start(res)
        for i in range(0, len(sessions), REFRESH_BATCH):
            batch = sessions[i : i + REFRESH_BATCH]
            try:
                async with res.state.pipeline(transaction=False) as pipe:
                    for session in batch:
                        pipe.xrange(res.keys.inbox(session.user_id), min=oldest)
                    inboxes = await pipe.execute()
            except DOWN as exc:
                log.warning("inbox redelivery failed", extra={"err": str(exc)})
                return
            for session, entries in zip(batch, inboxes, strict=True):
                for inbox_id, delivery in deliveries(entries):
                    await session.delivered(delivery.model_copy(update={"inbox_id": inbox_id}))

    async def refresh(self) -> None:
        """Extend every local in-pool entry; put back the ones lost (expired, not claimed)."""
        by_language: dict[str, list[MatchSession]] = defaultdict(list)
        for session in self._hub.members():
            if session.in_pool:
                by_language[session.language].append(session)
        for language, sessions in by_language.items():
            for i in range(0, len(sessions), REFRESH_BATCH):
                batch = sessions[i : i + REFRESH_BATCH]
                owners = [(s.user_id, s.ticket) for s in batch]
                lost = set(await self._pool.refresh(language, owners))
                for session in batch:
                    if session.user_id in lost and session.in_pool:
                        await session.enter()


async def publish(res: Resources, user_id: str, delivery: Delivery, inbox: bool = False) -> None:
    """To the user's channel (every process holding them hears it) and, for results, their
    inbox too, for a client that is reconnecting right now."""
    if inbox:
        inbox_id = await to_inbox(
            res.state,
            res.keys,
            user_id,
            {"d": delivery.model_dump_json()},
            res.settings.match_inbox_ttl_s * 1000,
        )
        delivery = delivery.model_copy(update={"inbox_id": inbox_id})
    await res.state.publish(res.keys.match_channel(user_id), delivery.model_dump_json())


def inbox_start(res: Resources) -> str:
    """The first inbox id still worth sending: results older than `match_inbox_ttl_s` are not."""
    return f"{now_ms() - res.settings.match_inbox_ttl_s * 1000}-0"


def deliveries(entries: InboxEntries) -> Iterator[tuple[str, Delivery]]:
    """The inbox entries that are match results (field `d`), with their ids."""
    for inbox_id, fields in entries:
        try:
            yield inbox_id, Delivery.model_validate_json(fields.get("d", ""))
        except ValidationError:
            continue
