"""Edit throughput of one api process on a single Valkey vs a local 3-primary Valkey cluster.

`python -m bench.cluster_cost` (about 1 minute): embedded Valkey, cluster and PostgreSQL under
.data/bench-cluster/, 32 closed-loop typists for 6 s per round, two rounds each, best of each.
A quick A/B for the "cluster costs <= 15 %" target, not part of `make bench`: the load generator
shares the machine with the servers, so absolute numbers are low; compare the two only.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import httpx

from deploy.embedded import Postgres, Valkey, free_port
from shared.settings import Settings
from shared.store.migrations import migrate_url
from tests.support.processes import http_ready, running, settings_env
from tests.support.users import create_doc, signup
from tests.support.valkeys import valkey_cluster

DATA = Path(__file__).resolve().parent.parent / ".data" / "bench-cluster"
TYPISTS = 32
SECONDS = 6.0


async def drive(settings: Settings, label: str) -> float:
    base = f"http://127.0.0.1:{settings.api_port}"
    limits = httpx.Limits(max_connections=TYPISTS * 2)
    async with (
        running(label, "services.api", settings_env(settings), DATA, http_ready(f"{base}/readyz")),
        httpx.AsyncClient(base_url=base, timeout=10, limits=limits) as client,
    ):
        user = await signup(client, f"{label}-{time.time_ns()}")
        docs = [(await create_doc(client, user, title=f"d{i}"))["id"] for i in range(TYPISTS)]
        done = 0

        async def typist(doc_id: str) -> None:
            nonlocal done
            end = time.monotonic() + SECONDS
            n = 0
            while time.monotonic() < end:
                n += 1
                body = {"content": "x" * 200 + str(n)}
                r = await client.put(
                    f"/v1/documents/{doc_id}/content", json=body, headers=user.auth
                )
                assert r.status_code == 202, r.text
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(typist(d) for d in docs))
        rate = done / (time.monotonic() - started)
        print(f"{label}: {done} edits, {rate:.0f} edits/s", flush=True)
        return rate


async def main() -> None:
    valkey = Valkey(DATA / "valkey", free_port(), aof=True)
    postgres = Postgres(DATA / "postgres", free_port(), durable=False)
    valkey.start()
    postgres.start()
    try:
        await migrate_url(postgres.url)
        common: dict[str, Any] = dict(
            env="test",
            database_url=postgres.url,
            login_rate=100_000,
            argon2_time_cost=1,
            argon2_memory_kib=64,
            argon2_parallelism=1,
            log_level="WARNING",
        )
        with valkey_cluster(DATA / "cluster") as cluster:
            single = Settings(redis_url=valkey.url, api_port=free_port(), **common)
            clustered = Settings(
                redis_url=cluster.url,
                queue_redis_url=valkey.url,
                redis_cluster=True,
                api_port=free_port(),
                **common,
            )
            best: dict[str, float] = {"single": 0.0, "cluster": 0.0}
            for n in range(2):
                best["single"] = max(best["single"], await drive(single, f"single{n}"))
                best["cluster"] = max(best["cluster"], await drive(clustered, f"cluster{n}"))
        cost = 1 - best["cluster"] / best["single"]
        print(
            f"best single {best['single']:.0f} edits/s, best cluster {best['cluster']:.0f}"
            f" edits/s: cluster costs {cost:.1%} (target <= 15%)"
        )
    finally:
        postgres.stop(mode="immediate")
        valkey.stop()
        shutil.rmtree(DATA, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
