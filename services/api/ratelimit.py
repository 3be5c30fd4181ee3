"""Rate limits: GCRA in one Lua script, per policy, keyed by user or, before login, by client
address (a forwarded address is believed only from a configured proxy)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address

from starlette.requests import HTTPConnection

from shared.documents import now_ms
from shared.errors import RateLimited
from shared.keys import Keys
from shared.scripts import RateDecision, Scripts
from shared.settings import Settings


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
        self.login = Policy("login", settings.login_rate, settings.login_period_s)
        self.profile_write = Policy(
            "profile-write", settings.profile_write_rate, settings.profile_write_period_s
        )
        # Edits are limited inside lua/edit.lua (no extra round trip); match attempts by the
        # matcher service itself.
        # Epoch milliseconds; tests replace it to move time instead of sleeping.
        self.clock: Callable[[], int] = now_ms

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
        decision = await self._scripts.gcra(
            self._keys.rate_limit(policy.name, subject),
            policy.interval_ms,
            policy.limit,
            self.clock(),
        )
        if not decision.allowed:
            raise RateLimited(
                f"too many {policy.name} attempts; retry later",
                retry_after_s=max(1, math.ceil(decision.retry_after_ms / 1000)),
                limit=policy.limit,
                window_s=policy.window_s,
                policy=policy.name,
            )
        return decision

    @staticmethod
    def headers(policy: Policy, decision: RateDecision) -> dict[str, str]:
        """IETF RateLimit fields for an allowed request: what is left, and when it is all back."""
        reset_s = math.ceil(decision.reset_after_ms / 1000)
        return {
            "RateLimit-Policy": f'"{policy.name}";q={policy.limit};w={policy.window_s}',
            "RateLimit": f'"{policy.name}";r={decision.remaining};t={reset_s}',
        }
