"""Trending interests: today's counts from shared/domain/trending.bump, top-N and rank over HTTP."""

from __future__ import annotations

from datetime import timedelta

import httpx
from redis.asyncio import Redis

from shared.domain import trending
from shared.settings import Settings
from shared.store.keys import Keys
from tests.support.users import signup


async def test_top_interests_and_rank(
    api: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    keys = Keys(settings.key_prefix, settings.doc_shards)
    alice = await signup(api, "alice")
    for slugs in (["chess", "go"], ["chess", "jazz"], ["chess", "go", "go"], ["hiking"]):
        await trending.bump(redis, keys, slugs)
    # Yesterday's counts do not leak into today's.
    await trending.bump(redis, keys, ["hiking"] * 1, day=trending.today() - timedelta(days=1))
    assert 0 < await redis.ttl(keys.trending(trending.today())) <= trending.TRENDING_TTL_S

    r = await api.get("/v1/trending/interests", params={"limit": 2}, headers=alice.auth)
    assert r.status_code == 200
    assert r.json() == [{"slug": "chess", "score": 3.0}, {"slug": "go", "score": 2.0}]
    everything = (await api.get("/v1/trending/interests", headers=alice.auth)).json()
    assert [row["slug"] for row in everything][:2] == ["chess", "go"]
    assert {row["slug"] for row in everything} == {"chess", "go", "jazz", "hiking"}

    r = await api.get("/v1/trending/interests/go", headers=alice.auth)
    assert r.json() == {"slug": "go", "score": 2.0, "rank": 2}
    r = await api.get("/v1/trending/interests/chess", headers=alice.auth)
    assert r.json()["rank"] == 1


async def test_absent_interest_is_404_and_bad_input_422(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    r = await api.get("/v1/trending/interests/knitting", headers=alice.auth)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert (await api.get("/v1/trending/interests", headers=alice.auth)).json() == []
    for bad in ("Not-A-Slug", "a--b", "x" * 41):
        r = await api.get(f"/v1/trending/interests/{bad}", headers=alice.auth)
        assert r.status_code == 422, bad
    for limit in (0, 101, "ten"):
        r = await api.get("/v1/trending/interests", params={"limit": limit}, headers=alice.auth)
        assert r.status_code == 422, limit
    assert (await api.get("/v1/trending/interests")).status_code == 401
