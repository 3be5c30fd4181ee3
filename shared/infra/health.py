"""Liveness, readiness and metrics routes that any Redline service mounts.

A service builds an `Observability` in `create_app` (its registry), mounts `health_router(obs)`,
and once its lifespan has opened its clients, tells it what to check (`obs.watch(...)`) and what
to refresh before a scrape (`obs.on_scrape(...)`):

    obs = Observability.of(new_registry(), settings)
    app.include_router(health_router(obs))
    ...  # in the lifespan
    obs.watch(redis_check("state_redis", state), postgres_check("postgres", db))

- `GET /healthz`: liveness. Touches no dependency: it answers while the event loop runs.
- `GET /readyz`: every check at once, each bounded by the timeout; 200, or 503 problem+json
  naming what is down. A non-critical check (e.g. a cache with a Postgres fallback) is reported
  but does not make the service unready.
- `GET /metrics`: Prometheus text exposition of the service's registry, an operator surface
  (`OperatorGate`): with REDLINE_OPERATOR_TOKEN set it needs `Authorization: Bearer <token>`
  (401 otherwise); in production without a token it answers 403 telling the operator to set one
  (rather than refusing to start: a missing metrics secret must not take the service down, and
  /healthz and /readyz, which orchestrators poll, stay open either way). In development and
  test without a token it is open, as before.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from shared.infra.bearer import bearer_token
from shared.infra.edge import EdgeLimits
from shared.infra.metrics import CONTENT_TYPE, render
from shared.infra.problems import problem
from shared.settings import Settings
from shared.store import queries

log = logging.getLogger("redline.health")

Probe = Callable[[], Awaitable[object]]
Refresh = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Check:
    name: str
    probe: Probe  # raises, times out or returns False when the dependency is down
    critical: bool = True


def redis_check(name: str, client: Redis, *, critical: bool = True) -> Check:
    async def ping() -> object:
        return await client.ping()

    return Check(name, ping, critical)


def postgres_check(name: str, db: asyncpg.Pool, *, critical: bool = True) -> Check:
    async def select_one() -> object:
        async with db.acquire() as conn:
            return await queries.ping(conn)

    return Check(name, select_one, critical)


@dataclass(frozen=True)
class OperatorGate:
    """Who may read operator surfaces (metrics, global stats)."""

    token: str | None = None
    production: bool = False

    @classmethod
    def of(cls, settings: Settings) -> OperatorGate:
        return cls(settings.operator_token, settings.env == "production")

    @property
    def open(self) -> bool:
        """No token and not production: anyone (development and test convenience)."""
        return self.token is None and not self.production

    def denial(self, authorization: str | None) -> tuple[int, str] | None:
        """None when `authorization` (the header's value) may read; else (status, detail)."""
        return self.denial_of(bearer_token(authorization))

    def denial_of(self, offered: str | None) -> tuple[int, str] | None:
        """`denial` for a bearer token already read from its header."""
        if self.token is None:
            if not self.production:
                return None
            return 403, "operator surfaces are closed: set REDLINE_OPERATOR_TOKEN to open them"
        # Constant-time: the comparison must not tell an attacker how much of a guess was right.
        if offered is not None and hmac.compare_digest(offered.encode(), self.token.encode()):
            return None
        return 401, "send Authorization: Bearer <operator token>"


@dataclass
class Observability:
    """What the routes read: the registry, the readiness checks and the scrape-time refreshers,
    who may scrape, and the HTTP edge limits of a worker's probe listener."""

    registry: CollectorRegistry
    timeout_s: float = 1.0
    checks: list[Check] = field(default_factory=list)
    refreshers: list[Refresh] = field(default_factory=list)
    operator: OperatorGate = field(default_factory=OperatorGate)
    probe_limits: EdgeLimits = field(default_factory=lambda: EdgeLimits(10.0, 10.0, 16_384, 64))

    @classmethod
    def of(cls, registry: CollectorRegistry, settings: Settings) -> Observability:
        """The service's observability as its settings configure it."""
        return cls(
            registry,
            timeout_s=settings.readiness_timeout_s,
            operator=OperatorGate.of(settings),
            # A probe port serves one scraper and one health checker: a few connections.
            probe_limits=EdgeLimits.of(settings, 64),
        )

    def watch(self, *checks: Check) -> None:
        self.checks.extend(checks)

    def on_scrape(self, refresh: Refresh) -> None:
        """Run `refresh` (bounded by the timeout) before each /metrics scrape, e.g. to read a
        gauge's current value from Redis."""
        self.refreshers.append(refresh)

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """(ready, {check name: "up" | "down"}), every check run concurrently."""
        results = await asyncio.gather(*(self._up(check) for check in self.checks))
        states = {
            c.name: "up" if up else "down" for c, up in zip(self.checks, results, strict=True)
        }
        ready = all(up or not c.critical for c, up in zip(self.checks, results, strict=True))
        return ready, states

    async def _up(self, check: Check) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                return (await check.probe()) is not False
        except Exception as exc:  # any failure, a timeout included, means "down"
            log.warning("readiness: %s is down: %s: %s", check.name, type(exc).__name__, exc)
            return False

    async def scrape(self) -> bytes:
        for refresh in self.refreshers:
            try:
                async with asyncio.timeout(self.timeout_s):
                    await refresh()
            except Exception as exc:  # a scrape must never fail because a gauge could not
                log.warning("metrics refresh failed: %s: %s", type(exc).__name__, exc)
        return render(self.registry)


# The api's OpenAPI document defines `Problem` (services/api/problems.py); the other services
# publish no document.
_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def health_router(obs: Observability) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        responses={
            200: {"description": "ready, or degraded (a non-critical dependency is down)"},
            503: {
                "description": "not ready: a critical dependency is down",
                "content": {
                    "application/problem+json": {
                        "schema": {
                            "type": "object",
                            "required": ["type", "title", "status", "detail", "checks"],
                        }
                    }
                },
                "headers": {"Retry-After": {"schema": {"type": "string"}, "required": True}},
            },
        },
    )
    async def readyz() -> JSONResponse:
        ready, checks = await obs.readiness()
        down = [name for name, state in checks.items() if state == "down"]
        if ready:
            # A non-critical dependency down (a cache with a fallback): serving, but degraded.
            return JSONResponse({"status": "degraded" if down else "ready", "checks": checks})
        return problem(
            503, f"not ready: {', '.join(down)} down", {"Retry-After": "1"}, checks=checks
        )

    @router.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition",
                "content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
            },
            401: {"description": "the operator token is missing or wrong", "content": _PROBLEM},
            403: {
                "description": "production without REDLINE_OPERATOR_TOKEN: closed",
                "content": _PROBLEM,
            },
        },
    )
    async def metrics(request: Request) -> Response:
        denied = obs.operator.denial(request.headers.get("authorization"))
        if denied is not None:
            status, detail = denied
            headers = {"WWW-Authenticate": 'Bearer realm="operator"'} if status == 401 else None
            return problem(status, detail, headers)
        return Response(await obs.scrape(), media_type=CONTENT_TYPE)

    return router


def probe_app(obs: Observability) -> FastAPI:
    """A minimal app serving only the health routes (a worker's metrics port)."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(health_router(obs))
    return app
