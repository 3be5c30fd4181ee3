"""Rate limits: GCRA in one Lua script, per policy, keyed by user or, before login, by client
address (a forwarded address is believed only from a configured proxy, and the server's own
proxy-header handling is off, so this rule alone names the client).

Login limiting (`login_attempt`) has to stop two attacks at once: guessing one account's password
from many addresses (rotating addresses must not reset anything), and locking an owner out by
failing on purpose under their name (a per-name budget that everyone spends). Three budgets:

1. `login`, per address, every attempt (and every signup): one client spraying names, and the
   argon2 cost one address can make us pay.
2. `login-pair`, per (name, address), failures only: one address guessing one account. A
   correct password is never charged here, so the owner's own mistakes cost only themselves.
3. `login-name`, per name, attempts from addresses that have not logged into that account in
   `login_known_ttl_s` (a successful login records its address per user, shared/store/keys.py
   `login_known`). A distributed guesser has only unknown addresses, so all its addresses share
   this budget; the owner's known addresses skip it, so an attack on the name does not lock
   the owner out where they usually log in.

Improvement on "count failures only" for budget 3: it is charged when an attempt starts (one
atomic GCRA step), not after a failure, so a burst of parallel guesses from many addresses cannot
all pass a check before any failure is counted. A correct login from an unknown address is
charged one unit, at most once per new address per login_known_ttl_s.

The owner from a new address during an attack on their name gets 429 (with Retry-After) like
the attacker: letting a correct password through an exhausted budget would turn the budget into
an oracle (429 means wrong, 200 means right). They still log in from any known address, and the
per-address and per-pair budgets never involve them. While budget 2 or 3 is exhausted, the
password is not even checked (no argon2 cost, no oracle)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ipaddress import ip_address

from starlette.requests import HTTPConnection

from shared.domain.errors import RateLimited, Unauthenticated
from shared.infra.clock import Clock, now_ms
from shared.infra.problems import rate_limit_headers
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import RateDecision, Scripts


@dataclass(frozen=True)
class Policy:
    name: str
    limit: int
    window_s: int

    @property
    def interval_ms(self) -> int:
        return max(1, self.window_s * 1000 // self.limit)


class RateLimiter:
    def __init__(self, settings: Settings, scripts: Scripts, keys: Keys) -> None:
        self._scripts = scripts
        self._keys = keys
        self._trusted = settings.trusted_proxies
        period = settings.login_period_s
        self.login = Policy("login", settings.login_rate, period)
        self.login_pair = Policy("login-pair", settings.login_pair_failures, period)
        self.login_name = Policy("login-name", settings.login_name_attempts, period)
        self._known_ttl_ms = settings.login_known_ttl_s * 1000
        self.create = Policy("create", settings.create_rate, settings.create_period_s)
        self.snapshot = Policy("snapshot", settings.snapshot_rate, settings.snapshot_period_s)
        self.profile_write = Policy(
            "profile-write", settings.profile_write_rate, settings.profile_write_period_s
        )
        # Edits are limited inside lua/edit.lua (no extra round trip); match attempts by the
        # matcher service itself.
        # Epoch milliseconds; tests replace it to move time instead of sleeping.
        self.clock: Clock = now_ms

    def client_address(self, conn: HTTPConnection) -> str:
        peer = conn.client.host if conn.client else "unknown"
        forwarded = conn.headers.get("x-forwarded-for")
        if forwarded and self._is_trusted(peer):
            # The right-most address not one of our proxies is the client.
            for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
                if not self._is_trusted(hop):
                    return hop
        return peer

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    async def hit(self, policy: Policy, subject: str) -> RateDecision:
        """Count one request; raise RateLimited (429) when over. Returns the decision, whose
        `headers` a route may add to its success response."""
        decision = await self._count(policy, subject)
        if not decision.allowed:
            raise self._limited(policy, decision.retry_after_ms)
        return decision

    async def _count(self, policy: Policy, subject: str) -> RateDecision:
        return await self._scripts.gcra(
            self._keys.rate_limit(policy.name, subject),
            policy.interval_ms,
            policy.limit,
            self.clock(),
        )

    async def check(self, policy: Policy, subject: str) -> None:
        """Raise RateLimited if a hit now would be refused; counts nothing (a plain GET of the
        GCRA state, the same arithmetic as lua/gcra.lua)."""
        raw = await self._scripts.redis.get(self._keys.rate_limit(policy.name, subject))
        now = self.clock()
        tat = max(int(raw), now) if raw is not None else now
        allow_at = tat + policy.interval_ms - policy.limit * policy.interval_ms
        if now < allow_at:
            raise self._limited(policy, allow_at - now)

    @staticmethod
    def _limited(policy: Policy, retry_after_ms: int) -> RateLimited:
        return RateLimited(
            f"too many {policy.name} attempts; retry later",
            retry_after_s=max(1, math.ceil(retry_after_ms / 1000)),
            limit=policy.limit,
            window_s=policy.window_s,
            policy=policy.name,
        )

    @asynccontextmanager
    async def login_attempt(self, username: str, address: str) -> AsyncIterator[None]:
        """Wrap one password check (see the module docstring): raises RateLimited before it
        when a budget is spent; counts a failure (Unauthenticated) when it fails; remembers the
        address when it succeeds."""
        name = username.lower()
        pair = f"{name}|{address}"
        await self.hit(self.login, address)
        await self.check(self.login_pair, pair)
        known_key = self._keys.login_known(name)
        expires = await self._scripts.redis.zscore(known_key, address)
        if expires is None or expires <= self.clock():
            await self.hit(self.login_name, name)
        try:
            yield
        except Unauthenticated:
            await self._count(self.login_pair, pair)
            raise
        now = self.clock()
        redis = self._scripts.redis
        await redis.zadd(known_key, {address: now + self._known_ttl_ms})
        await redis.zremrangebyscore(known_key, "-inf", now)  # forget expired addresses
        await redis.pexpire(known_key, self._known_ttl_ms)

    @staticmethod
    def headers(policy: Policy, decision: RateDecision) -> dict[str, str]:
        """IETF RateLimit fields for an allowed request: what is left, and when it is all back."""
        reset_s = math.ceil(decision.reset_after_ms / 1000)
        return rate_limit_headers(
            policy.name, policy.limit, policy.window_s, decision.remaining, reset_s
        )
