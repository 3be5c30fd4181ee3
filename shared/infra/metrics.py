"""Prometheus metrics, one `CollectorRegistry` per service instance.

No module-level registry: `create_app` / `create_worker` build one with `new_registry()` and pass
it down, so several apps can live in one process (the tests make many) without duplicate-series
errors. Each family group is a small class that registers its metrics on the registry it is given;
a service builds the groups it exports. Every name starts with `redline_`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from shared.infra.dependencies import reason, which

CONTENT_TYPE = CONTENT_TYPE_LATEST

# The edit path answers in well under a millisecond, so the buckets start far below
# prometheus_client's default 5 ms.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# A client chooses the method; anything else is folded into one label value so it cannot
# create series at will.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def new_registry() -> CollectorRegistry:
    """A fresh registry with the process, platform and GC collectors every service exports."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition of everything in `registry` (serve it with CONTENT_TYPE)."""
    return generate_latest(registry)


class HttpMetrics:
    """Request count and latency per method, route template and status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("method", "route", "status")
        self.requests = Counter(
            "redline_http_requests", "HTTP requests answered", labels, registry=registry
        )
        self.duration = Histogram(
            "redline_http_request_duration_seconds",
            "Time from request start to the end of the response",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # labels() takes a lock and builds a key each call; the hot path looks its children up
        # in a plain dict instead. The key space is bounded by routes x methods x statuses.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in _METHODS:
            method = "OTHER"  # before the lookup too, or the dict would grow with the client
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            values = (method, route, str(status))
            children = (self.requests.labels(*values), self.duration.labels(*values))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class DependencyMetrics:
    """What a dependency's failure cost: each request answered 503 (api), or flush pass given up
    (flusher), because Redis or Postgres was down, or Redis full (at maxmemory under noeviction:
    shared/infra/dependencies.py). An alert on `reason="full"` says "add memory", not "restart"."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.unavailable = Counter(
            "redline_dependency_unavailable",
            "Requests refused (503) or flush passes given up because a dependency failed, by"
            " dependency (redis, postgres) and reason (down; full: Redis at maxmemory)",
            ["dependency", "reason"],
            registry=registry,
        )

    def failed(self, exc: BaseException) -> None:
        self.unavailable.labels(which(exc), reason(exc)).inc()


class CacheCounters(Collector):
    """The profile cache's own per-family counters (shared/infra/cache.py CacheStats), exported at
    scrape time as `redline_cache_<outcome>_total{family}`: the cache counts once, in plain
    integers on its hot path, and nothing is double-booked."""

    def __init__(self, numbers: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        self._numbers = numbers

    def collect(self) -> Iterator[Metric]:
        by_outcome: dict[str, CounterMetricFamily] = {}
        for family, counts in self._numbers().items():
            for outcome, value in counts.items():
                metric = by_outcome.get(outcome)
                if metric is None:
                    metric = by_outcome[outcome] = CounterMetricFamily(
                        f"redline_cache_{outcome}",
                        f"Profile-cache lookups by outcome: {outcome.replace('_', ' ')}",
                        labels=["family"],
                    )
                metric.add_metric([family], value)
        yield from by_outcome.values()


class FlushMetrics:
    """The write-behind engine: what each flush wrote and how long it took, labelled by `kind`
    (cron, document, presence, drain), plus the dirty backlog and the quarantine as gauges."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batches = Counter(
            "redline_flush_batches", "Batches written to Postgres", ["kind"], registry=registry
        )
        self.rows = Counter(
            "redline_flush_rows",
            "Document rows written to Postgres (version-guarded updates that changed a row)",
            ["kind"],
            registry=registry,
        )
        self.duration = Histogram(
            "redline_flush_duration_seconds",
            "Duration of one flush call (a cron pass over every shard, or one job's flush)",
            ["kind"],
            buckets=FLUSH_BUCKETS,
            registry=registry,
        )
        self.failures = Counter(
            "redline_flush_failures",
            "Failed flush attempts: outcome=retried (retried within the call) or"
            " gave_up (the call failed; the dirty marks stay for the next one)",
            ["kind", "outcome"],
            registry=registry,
        )
        self.dirty = Gauge(
            "redline_dirty_documents",
            "Documents edited in Redis and not yet written to Postgres (NaN: Redis unreachable)",
            registry=registry,
        )
        self.quarantined = Counter(
            "redline_flush_quarantined_documents",
            "Documents moved to quarantine: Postgres refused their content (a data error), so"
            " they stay in Redis, out of the flush, until an accepted edit replaces it",
            ["kind"],
            registry=registry,
        )
        self.in_quarantine = Gauge(
            "redline_quarantined_documents",
            "Documents in quarantine now, read at scrape time (NaN: Redis unreachable)",
            registry=registry,
        )
        self.oldest_dirty_age = Gauge(
            "redline_oldest_dirty_age_seconds",
            "Age of the oldest unsaved edit (0 when none is dirty; NaN: Redis unreachable)",
            registry=registry,
        )

    def flushed(
        self,
        kind: str,
        *,
        batches: int,
        rows: int,
        retries: int,
        seconds: float,
        quarantined: int = 0,
    ) -> None:
        self.batches.labels(kind).inc(batches)
        if quarantined:
            self.quarantined.labels(kind).inc(quarantined)
        self.rows.labels(kind).inc(rows)
        self.duration.labels(kind).observe(seconds)
        if retries:
            self.failures.labels(kind, "retried").inc(retries)

    def gave_up(self, kind: str, seconds: float) -> None:
        self.failures.labels(kind, "gave_up").inc()
        self.duration.labels(kind).observe(seconds)

    def backlog(self, count: int | None, oldest_age_s: float | None) -> None:
        """Set the dirty gauges; None for count means unknown (Redis did not answer)."""
        if count is None:
            self.dirty.set(math.nan)
            self.oldest_dirty_age.set(math.nan)
            return
        self.dirty.set(count)
        self.oldest_dirty_age.set(oldest_age_s or 0.0)

    def quarantine(self, count: int | None) -> None:
        """Set the quarantine gauge; None means unknown (Redis did not answer)."""
        self.in_quarantine.set(math.nan if count is None else count)


class JobMetrics:
    """arq job runs and failures per job name."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter("redline_job_runs", "Jobs run", ["job"], registry=registry)
        self.failures = Counter(
            "redline_job_failures",
            "Jobs that raised, or gave up on a dependency (retried later)",
            ["job"],
            registry=registry,
        )

    def ran(self, job: str) -> None:
        self.runs.labels(job).inc()

    def failed(self, job: str) -> None:
        self.failures.labels(job).inc()


class MatcherMetrics:
    """The matcher: open sockets, matches, find_match latency, and what happened to results
    heard on pub/sub (delivered to a socket's outbox, or dropped because the client was cut off)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sockets = Gauge(
            "redline_matcher_open_sockets", "Accepted match sockets open now", registry=registry
        )
        self.event_streams = Gauge(
            "redline_matcher_event_streams",
            "Redis streams the process's event reader follows for /v1/ws/events sockets",
            registry=registry,
        )
        self.matches = Counter(
            "redline_matcher_matches", "Pairs claimed by this process's seekers", registry=registry
        )
        self.find_duration = Histogram(
            "redline_matcher_find_match_duration_seconds",
            "Time of the match script call for one find_match (rate limit excluded)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.deliveries = Counter(
            "redline_matcher_deliveries",
            "Results from pub/sub queued to a local socket",
            registry=registry,
        )
        self.drops = Counter(
            "redline_matcher_delivery_drops",
            "Results from pub/sub not queued: the socket was closing or its outbox full",
            registry=registry,
        )
        self.slow_clients = Counter(
            "redline_matcher_slow_client_disconnects",
            "Sockets closed because the client stopped reading (send queue full)",
            registry=registry,
        )

    def count_sockets(self, count: Callable[[], int]) -> None:
        """Read the open-socket count at scrape time: nothing to update on connect/close."""
        self.sockets.set_function(lambda: float(count()))

    def count_streams(self, count: Callable[[], int]) -> None:
        """Streams (document events and inboxes) this process's one reader follows, at scrape."""
        self.event_streams.set_function(lambda: float(count()))
