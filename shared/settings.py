"""Settings for every service, read once from `REDLINE_*` environment variables."""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# arq's cron can only express intervals that divide a minute (or an hour, in whole minutes).
_CRON_INTERVALS = {s for s in range(1, 61) if 60 % s == 0} | {
    m * 60 for m in range(1, 61) if 60 % m == 0
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REDLINE_", extra="ignore", frozen=True)

    env: Literal["development", "test", "production"] = "development"
    log_level: str = "INFO"

    # Redis roles. Each defaults to `redis_url`; all three may point at one server.
    redis_url: str | None = None
    state_redis_url: str | None = None
    cache_redis_url: str | None = None
    queue_redis_url: str | None = None
    database_url: str | None = None
    key_prefix: str = Field("rl", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    # State and cache roles on Redis Cluster (the URL names any one node). The queue stays on a
    # plain Redis: arq's job scripts and MULTI blocks touch keys in many slots.
    redis_cluster: bool = False
    # Redis Sentinel: comma-separated host:port of the sentinels (empty: off). Every role then
    # reaches the current primary of `redis_sentinel_master` through them: the role URLs become
    # `redis+sentinel://[user:pass@]s1:p1,s2:p2/<db>?sentinel_master=<name>` (user, password, db
    # and TLS taken from each role's URL, if any).
    redis_sentinels: str = ""
    redis_sentinel_master: str = Field("redline", pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    matcher_host: str = "127.0.0.1"
    matcher_port: int = 8001

    # Write-behind.
    doc_shards: int = Field(64, ge=1, le=16384)
    flush_interval: int = Field(30, description="seconds between cron flushes")
    flush_batch_size: int = Field(1000, ge=1, le=50_000)
    flush_lease_ms: int = Field(15_000, ge=1000)
    flush_retry_max_s: float = Field(5.0, gt=0)
    clean_ttl_s: int = Field(3600, ge=1)
    tombstone_ttl_s: int = Field(86_400, ge=60)
    presence_ttl_s: int = Field(60, ge=1)
    presence_sweep_s: int = Field(5, ge=1)
    shutdown_drain_s: float = Field(60.0, gt=0)
    max_document_bytes: int = Field(1_048_576, ge=1024)
    # Autosave edits per user per document per edit_period_s (GCRA, checked inside the edit script).
    edit_rate: int = Field(50, ge=1)
    edit_period_s: int = Field(1, ge=1)
    # An edit is acknowledged (202) only once this many replicas of the state Redis hold it
    # (Redis WAIT after the edit script, on its connection); 0: on the primary's word alone.
    edit_min_replicas: int = Field(0, ge=0, le=16)
    # How long an edit waits for those replicas before it answers 503 (stored on the primary,
    # not acknowledged).
    edit_replica_timeout_ms: int = Field(100, ge=1, le=60_000)

    # Jobs users start (save now, snapshots).
    job_max_tries: int = Field(5, ge=1)
    job_result_ttl_s: int = Field(3600, ge=1)
    # A job running longer is cancelled; a job whose worker died is picked up again this long
    # (plus 10 s) after it started. The worker uses at least 4 flush intervals (a flush job's
    # pass over a backlog may take several), so 120 s with the defaults.
    job_timeout_s: int = Field(60, ge=1)
    # How often an idle worker looks for jobs: the most a job waits in an idle queue (a save's
    # job.completed target is p99 <= 100 ms); each look is one cheap Redis call.
    job_poll_s: float = Field(0.02, gt=0, le=5)

    # Accounts.
    session_ttl_s: int = Field(14 * 86_400, ge=60)
    # How long an API process may reuse a session it looked up (0: never). A logout reaches every
    # process at once by pub/sub; without a live subscription the cache is not used at all.
    session_cache_s: float = Field(5.0, ge=0)
    login_rate: int = Field(10, ge=1, description="login attempts per login_period_s")
    login_period_s: int = Field(60, ge=1)
    # Login limiting by name (services/api/ratelimit.py): failures per (name, address), and
    # attempts per name from addresses that have not logged into it within login_known_ttl_s.
    login_pair_failures: int = Field(5, ge=1, description="per name and address, per period")
    login_name_attempts: int = Field(20, ge=1, description="per name from unknown addresses")
    login_known_ttl_s: int = Field(30 * 86_400, ge=60, description="an address stays known")
    # Costly operations, per user per period.
    create_rate: int = Field(60, ge=1, description="documents created per create_period_s")
    create_period_s: int = Field(60, ge=1)
    snapshot_rate: int = Field(30, ge=1, description="snapshots requested per snapshot_period_s")
    snapshot_period_s: int = Field(60, ge=1)
    # argon2id cost; the defaults are argon2-cffi's RFC 9106 "low memory" profile.
    argon2_time_cost: int = Field(3, ge=1)
    argon2_memory_kib: int = Field(65_536, ge=8)
    argon2_parallelism: int = Field(4, ge=1)
    # Comma-separated networks, e.g. "10.0.0.0/8,192.168.0.0/16" (not JSON).
    trusted_proxies: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()

    # Profile cache (cache Redis) and per-route rate limits.
    profile_cache_ttl_s: int = Field(3600, ge=1)
    cache_negative_ttl_s: int = Field(30, ge=1, description="how long a missing user is cached")
    cache_lease_ms: int = Field(2000, ge=50, description="a loader's lease on a missing key")
    cache_xfetch_beta: float = Field(1.0, ge=0, description="XFetch eagerness; 0 disables")
    cache_retry_s: float = Field(1.0, ge=0, description="skip a failing cache Redis this long")
    cache_timeout_s: float = Field(0.5, gt=0, description="longest wait on the cache Redis")
    profile_write_rate: int = Field(30, ge=1)
    profile_write_period_s: int = Field(60, ge=1)
    match_rate: int = Field(10, ge=1, description="match attempts per match_period_s")
    match_period_s: int = Field(60, ge=1)
    warm_interval_s: int = Field(300, description="seconds between profile cache warmings")
    warm_limit: int = Field(1000, ge=0, description="recently seen users warmed per run")
    stats_min_hit_rate: float = Field(0.8, ge=0, le=1)
    stats_max_dirty_age_s: float = Field(120.0, gt=0)
    stats_max_queue_depth: int = Field(1000, ge=0)
    stats_max_memory_ratio: float = Field(0.9, gt=0, le=1)

    # Observability (shared/infra/health.py, shared/infra/metrics.py, shared/infra/observer.py).
    access_log: bool = True
    # Successful autosave edits are not access-logged by default (see shared/infra/observer.py).
    access_log_edits: bool = False
    readiness_timeout_s: float = Field(1.0, gt=0, le=30)
    flusher_metrics_host: str = "127.0.0.1"
    flusher_metrics_port: int = Field(9101, ge=0, le=65535, description="0 disables")

    # Matcher (WebSocket pool and matching).
    # Comma-separated browser origins allowed to open a WebSocket ("*" allows any). A request
    # without an Origin header is not from a browser and is allowed: its bearer token decides.
    # Unset: the console's own origin (the api's port on 127.0.0.1 and localhost), so the console
    # `make run` serves opens its sockets on the matcher's port; set it empty to allow none.
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = ()
    pool_ttl_s: int = Field(120, ge=3, description="a pool entry lives this long unrefreshed")
    match_scan_limit: int = Field(64, ge=1, description="longest-waiting candidates per interest")
    match_inbox_ttl_s: int = Field(60, ge=1)
    ws_max_message_bytes: int = Field(65_536, ge=1024)
    ws_idle_timeout_s: float = Field(300.0, gt=0, description="close after this long silent")
    ws_ping_interval_s: float = Field(20.0, gt=0)
    ws_ping_timeout_s: float = Field(20.0, gt=0)
    ws_send_queue: int = Field(64, ge=1, description="frames queued per socket before it is cut")
    # Open sockets (match and events together) per user across every matcher process; over it the
    # handshake is refused with 429. Each socket's entry is renewed every pool_ttl_s / 3 and
    # lapses pool_ttl_s after a process dies without removing it.
    ws_max_sockets_per_user: int = Field(32, ge=1)
    # Longest a socket's session goes unchecked when nothing else is heard of it (one PTTL per
    # session, not per socket). Logout arrives at once by pub/sub and a session is re-checked
    # when its known expiry passes; this bounds a session shortened elsewhere (an operator's
    # PEXPIRE, a process configured with a shorter session_ttl_s).
    ws_session_check_s: float = Field(60.0, gt=0)

    # Co-editing (/v1/collab/{document_id} on the api; docs/collab.md). False: the api serves no
    # WebSocket at all (uvicorn ws="none").
    collab_enabled: bool = True
    collab_max_frame_bytes: int = Field(
        1_048_576, ge=1024, description="largest binary frame (a reconnecting client's step 2)"
    )
    collab_log_max_entries: int = Field(
        10_000, ge=10, description="unfolded updates a document holds before appends wait"
    )
    collab_log_max_bytes: int = Field(
        4_194_304, ge=4096, description="unfolded update bytes a document holds before appends wait"
    )
    # Updates per user per document per second (GCRA inside the append script; the burst is the
    # rate). A fast typist makes ~10.
    collab_update_rate: int = Field(100, ge=1)
    collab_heartbeat_s: float = Field(
        15.0, gt=0, description="an empty awareness frame after this long without output"
    )
    # Stored awareness (cursors, names), so a late joiner sees them at once: never persisted.
    # y-protocols clients renew their state every 15 s and drop a remote one after 30 s unheard,
    # so an entry lives as long; the caps bound what one document holds in Redis.
    collab_awareness_ttl_s: float = Field(30.0, gt=0)
    collab_awareness_max_entries: int = Field(
        128, ge=1, description="awareness states (Yjs clients) stored per document"
    )
    collab_awareness_max_state_bytes: int = Field(
        4096, ge=64, description="largest awareness state (its JSON) stored and relayed"
    )

    # Document event streams (state Redis) and /v1/ws/events.
    doc_events_maxlen: int = Field(1000, ge=10, description="entries kept per document stream")
    doc_events_ttl_s: int = Field(86_400, ge=60, description="a stream lives this long idle")
    ws_max_subscriptions: int = Field(200, ge=1, description="documents one events socket follows")
    # `subscribe` frames per user per subscribe_period_s (GCRA, across processes; the burst is the
    # rate): each costs a Redis and a Postgres lookup.
    subscribe_rate: int = Field(100, ge=1)
    subscribe_period_s: int = Field(10, ge=1)

    # The HTTP edge of every listener (shared/infra/edge.py): slow or oversized requests are cut.
    http_header_timeout_s: float = Field(
        10.0, gt=0, description="request line and headers must arrive within this"
    )
    http_body_timeout_s: float = Field(30.0, gt=0, description="a whole body must arrive within")
    http_max_header_bytes: int = Field(16_384, ge=1024, description="request line plus headers")
    api_max_connections: int = Field(2048, ge=1, description="open connections per api process")
    matcher_max_connections: int = Field(
        16_384, ge=1, description="open connections (sockets included) per matcher process"
    )
    # Operator surfaces (/metrics everywhere, the global part of /v1/stats/cache) need
    # `Authorization: Bearer <token>` when set; in production without it /metrics answers 403.
    operator_token: str | None = Field(None, min_length=16, repr=False)

    db_pool_min: int = Field(1, ge=0)
    db_pool_max: int = Field(10, ge=1)
    db_command_timeout_s: float = Field(10.0, gt=0)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(ip_network(p.strip()) for p in v.split(",") if p.strip())
        return v

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, v: object) -> object:
        if isinstance(v, str):
            if v.startswith("["):
                return tuple(json.loads(v))
            return tuple(o.strip().rstrip("/") for o in v.split(",") if o.strip())
        return v

    @field_validator("operator_token", mode="before")
    @classmethod
    def _blank_token_is_none(cls, v: object) -> object:
        # compose passes `${REDLINE_OPERATOR_TOKEN:-}`: unset there means unset here.
        if isinstance(v, str) and not v.strip():
            return None
        return v

    @field_validator("flush_interval", "warm_interval_s", "presence_sweep_s")
    @classmethod
    def _cron_expressible(cls, v: int, info: ValidationInfo) -> int:
        # These run as arq crons, which say "every N" by listing seconds or minutes: N must
        # divide a minute or an hour, or the runs bunch up where the list wraps.
        if v not in _CRON_INTERVALS:
            raise ValueError(
                f"{info.field_name} must divide 60 seconds (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30,"
                " 60) or 60 minutes (120, 180, 240, 300, 360, 600, 720, 900, 1200, 1800, 3600)"
            )
        return v

    @model_validator(mode="after")
    def _default_origins(self) -> Settings:
        if "allowed_origins" not in self.model_fields_set:
            port = self.api_port
            origins = (f"http://127.0.0.1:{port}", f"http://localhost:{port}")
            object.__setattr__(self, "allowed_origins", origins)
        return self

    @model_validator(mode="after")
    def _default_roles(self) -> Settings:
        # Frozen model: fill the role URLs through object.__setattr__ once, at construction.
        for role in ("state_redis_url", "cache_redis_url", "queue_redis_url"):
            if getattr(self, role) is None:
                object.__setattr__(self, role, self.redis_url)
        if self.redis_sentinels.strip():
            self._sentinel_roles()
        if (
            self.redis_cluster
            and self.queue_redis_url is not None
            and self.queue_redis_url == self.state_redis_url
        ):
            raise ValueError(
                "with REDLINE_REDIS_CLUSTER=true, set REDLINE_QUEUE_REDIS_URL to a non-cluster"
                " Redis: arq's queue does not work on Redis Cluster"
            )
        if self.redis_cluster and self.edit_min_replicas:
            # WAIT must share the edit's connection, and redis-py's cluster pipeline runs no
            # scripts: refused rather than half done.
            raise ValueError(
                "REDLINE_EDIT_MIN_REPLICAS is not supported with REDLINE_REDIS_CLUSTER=true;"
                " leave it at 0 there"
            )
        return self

    def _sentinel_roles(self) -> None:
        if self.redis_cluster:
            raise ValueError(
                "REDLINE_REDIS_SENTINELS and REDLINE_REDIS_CLUSTER=true exclude each other:"
                " Sentinel watches one primary, a cluster fails over by itself"
            )
        hosts = []
        for item in self.redis_sentinels.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"REDLINE_REDIS_SENTINELS: {item.strip()!r} is not host:port")
            hosts.append(f"{host}:{int(port)}")
        for role in ("state_redis_url", "cache_redis_url", "queue_redis_url"):
            url = getattr(self, role)
            if url is not None and is_sentinel_url(url):
                continue
            object.__setattr__(
                self, role, sentinel_url(url, hosts, self.redis_sentinel_master, role)
            )

    def require_urls(self) -> None:
        """Fail with a clear message when a service is started without its servers."""
        missing = [
            f"REDLINE_{name.upper()}"
            for name in ("state_redis_url", "queue_redis_url", "database_url")
            if getattr(self, name) is None
        ]
        if missing:
            raise SystemExit(
                f"missing {', '.join(missing)}: set REDLINE_REDIS_URL and REDLINE_DATABASE_URL,"
                " or start everything with `make run`, which provides embedded servers"
            )

    @property
    def state_url(self) -> str:
        assert self.state_redis_url is not None
        return self.state_redis_url

    @property
    def cache_url(self) -> str:
        assert self.cache_redis_url is not None
        return self.cache_redis_url

    @property
    def queue_url(self) -> str:
        assert self.queue_redis_url is not None
        return self.queue_redis_url

    @property
    def dsn(self) -> str:
        assert self.database_url is not None
        return self.database_url


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0] in SENTINEL_SCHEMES


def sentinel_url(base: str | None, hosts: list[str], master: str, role: str) -> str:
    """A role's URL through the sentinels: its user, password, db and TLS from `base`."""
    if base is None:
        return f"redis+sentinel://{','.join(hosts)}/0?sentinel_master={master}"
    parts = urlsplit(base)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(
            f"REDLINE_{role.upper()} is {parts.scheme}://: with REDLINE_REDIS_SENTINELS a role"
            " must be a redis:// or rediss:// URL (user, password, db), never a unix socket"
        )
    auth = parts.netloc.rpartition("@")[0]
    db = parts.path.strip("/") or "0"
    at = f"{auth}@" if auth else ""
    return f"{parts.scheme}+sentinel://{at}{','.join(hosts)}/{db}?sentinel_master={master}"


@dataclass(frozen=True)
class SentinelAddress:
    """A parsed `redis+sentinel://` URL (redis-py's from_url does not know the scheme)."""

    sentinels: list[tuple[str, int]]
    master: str
    db: int
    username: str | None
    password: str | None
    tls: bool


def parse_sentinel_url(url: str) -> SentinelAddress:
    scheme, _, rest = url.partition("://")
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    auth, _, hostlist = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if auth:
        user, colon, pw = auth.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    sentinels = []
    for item in hostlist.split(","):
        host, _, port = item.rpartition(":")
        sentinels.append((host.strip("[]"), int(port)))
    master = parse_qs(query).get("sentinel_master", ["redline"])[0]
    return SentinelAddress(
        sentinels=sentinels,
        master=master,
        db=int(path) if path else 0,
        username=username,
        password=password,
        tls=scheme == "rediss+sentinel",
    )
