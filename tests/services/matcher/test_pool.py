"""The pool scripts called directly against real Valkey: ranking, filters, expiry, and no double
match under concurrent seekers. Time is mocked only through the scripts' `now` argument."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from redis.asyncio import Redis

from services.matcher.pool import Pool, PoolEntry
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import MatchStatus, Scripts

T0 = 1_800_000_000_000  # a fixed "now" in ms; every call below says what time it is


def clocked(settings: Settings, scripts: Scripts, now: list[int]) -> Pool:
    return Pool(settings, scripts, clock=lambda: now[0])


def entry(user: str, *interests: str, region: str = "", wanted: str = "") -> PoolEntry:
    return PoolEntry(user, f"t-{user}", region, wanted, interests)


async def test_largest_overlap_wins_then_longest_waiting(
    settings: Settings, scripts: Scripts, redis: Redis, keys: Keys
) -> None:
    now = [T0]
    pool = clocked(settings, scripts, now)
    await pool.enter("en", entry("one", "go"))
    now[0] += 1000
    await pool.enter("en", entry("two", "go", "jazz", "chess"))
    now[0] += 1000
    await pool.enter("en", entry("three", "go", "jazz", "chess"))
    now[0] += 1000
    await pool.enter("en", entry("four", "tennis"))
    now[0] += 1000
    reply = await pool.find("en", entry("me", "go", "jazz", "chess"))
    # two and three share three interests; two has waited longer.
    assert reply.status is MatchStatus.MATCHED and reply.partner_id == "two"
    assert sorted(reply.shared) == ["chess", "go", "jazz"]
    assert reply.partner_ticket == "t-two"
    reply = await pool.find("en", entry("you", "go", "jazz"))
    assert reply.partner_id == "three" and sorted(reply.shared) == ["go", "jazz"]
    reply = await pool.find("en", entry("they", "go"))
    assert reply.partner_id == "one" and reply.shared == ("go",)
    # Matched users left every index; the unmatched one is all that is left.
    assert await redis.zrange(keys.pool_members("en"), 0, -1) == ["four"]
    assert await redis.hkeys(keys.pool_entries("en")) == ["four"]
    for slug in ("go", "jazz", "chess"):
        assert await redis.exists(keys.pool_interest("en", slug)) == 0


async def test_nobody_sharing_an_interest_means_queued_and_findable(
    settings: Settings, scripts: Scripts, redis: Redis, keys: Keys
) -> None:
    pool = clocked(settings, scripts, [T0])
    await pool.enter("en", entry("one", "tennis"))
    reply = await pool.find("en", entry("me", "go"))
    assert reply.status is MatchStatus.QUEUED
    assert await redis.zscore(keys.pool_interest("en", "go"), "me") == T0
    found = await pool.find("en", entry("you", "go"))
    assert found.partner_id == "me"


async def test_region_filter_is_respected_both_ways(settings: Settings, scripts: Scripts) -> None:
    pool = clocked(settings, scripts, [T0])
    await pool.enter("en", entry("us", "go", region="US"))
    await pool.enter("en", entry("de-only", "go", region="FR", wanted="DE"))
    reply = await pool.find("en", entry("me", "go", region="GB", wanted="FR"))
    # de-only is in FR but wants a partner from DE; us is not in FR.
    assert reply.status is MatchStatus.QUEUED
    reply = await pool.find("en", entry("fritz", "go", region="DE", wanted="FR"))
    assert reply.partner_id == "de-only"


async def test_expired_entries_are_never_matched_and_are_cleaned(
    settings: Settings, scripts: Scripts, redis: Redis, keys: Keys
) -> None:
    now = [T0]
    pool = clocked(settings, scripts, now)
    await pool.enter("en", entry("ghost", "go", "jazz"))
    now[0] += 60_000
    await pool.enter("en", entry("alive", "go"))
    # The ghost's process died: nobody refreshed it. Past its TTL it is gone for good.
    now[0] = T0 + settings.pool_ttl_s * 1000 + 1
    reply = await pool.find("en", entry("me", "go", "jazz"))
    assert reply.partner_id == "alive" and reply.shared == ("go",)
    for key in (keys.pool_members("en"), keys.pool_interest("en", "go")):
        assert await redis.zscore(key, "ghost") is None
    assert await redis.hget(keys.pool_entries("en"), "ghost") is None
    assert await redis.exists(keys.pool_interest("en", "jazz")) == 0


async def test_heartbeat_keeps_entries_alive_and_reports_lost_ones(
    settings: Settings, scripts: Scripts, redis: Redis, keys: Keys
) -> None:
    now = [T0]
    pool = clocked(settings, scripts, now)
    ttl = settings.pool_ttl_s * 1000
    await pool.enter("en", entry("claimed", "go"))
    matched = await pool.find("en", entry("seeker", "go"))
    assert matched.partner_id == "claimed"
    await pool.enter("en", entry("kept", "go"))
    now[0] += ttl - 1
    lost = await pool.refresh(
        "en", [("kept", "t-kept"), ("claimed", "t-claimed"), ("vanished", "t-vanished")]
    )
    # Still there: extended. Gone without a claim: reported, so the owner can re-enter.
    assert lost == ["vanished"]
    assert await redis.zscore(keys.pool_members("en"), "kept") == now[0] + ttl
    now[0] += ttl - 1
    reply = await pool.find("en", entry("late", "go"))
    assert reply.partner_id == "kept"
    # A refresh never puts a claimed user back, and names them as not lost.
    assert await pool.refresh("en", [("kept", "t-kept")]) == []
    assert await redis.zscore(keys.pool_members("en"), "kept") is None
    # Re-entering is refused for a claimed ticket (test_a_claimed_ticket_is_matched_once).
    assert (await pool.enter("en", entry("kept", "go"))).status is MatchStatus.CLAIMED


async def test_a_claimed_ticket_is_matched_once(
    settings: Settings, scripts: Scripts, redis: Redis, keys: Keys
) -> None:
    """The claimed partner's own find_match may reach the script after the claim (after its
    match_found, even): it must claim nobody, whatever its session believes. Only a requeue (the
    claiming match called off) gives the ticket back."""
    now = [T0]
    pool = clocked(settings, scripts, now)
    await pool.enter("en", entry("stranger", "go"))
    now[0] += 1000
    await pool.enter("en", entry("ada", "go", "chess"))
    now[0] += 1000
    matched = await pool.find("en", entry("bob", "go", "chess"))
    assert matched.partner_id == "ada" and matched.partner_ticket == "t-ada"
    now[0] += 1000
    # Ada's find_match, and a heartbeat's re-entry, come too late: refused, nobody claimed.
    assert (await pool.find("en", entry("ada", "go", "chess"))).status is MatchStatus.CLAIMED
    assert (await pool.enter("en", entry("ada", "go", "chess"))).status is MatchStatus.CLAIMED
    assert await redis.zrange(keys.pool_members("en"), 0, -1) == ["stranger"]
    assert await redis.zrange(keys.pool_interest("en", "go"), 0, -1) == ["stranger"]
    assert await redis.exists(keys.pool_interest("en", "chess")) == 0
    # Another connection of ada's (a new ticket) is a new search, and leaves the claim in place
    # for the old one.
    other = PoolEntry("ada", "t-ada-2", interests=("chess",))
    assert (await pool.enter("en", other)).status is MatchStatus.QUEUED
    assert await pool.leave("en", "ada", "t-ada-2")
    assert (await pool.find("en", entry("ada", "go"))).status is MatchStatus.CLAIMED
    # Bob's room could not be opened: the requeue puts ada back, findable again, once.
    assert (await pool.enter("en", entry("ada", "go", "chess"), requeue=True)).status is (
        MatchStatus.QUEUED
    )
    assert await redis.exists(keys.pool_claimed("en", "ada")) == 0
    found = await pool.find("en", entry("cat", "chess"))
    assert found.partner_id == "ada"
    assert (await pool.find("en", entry("ada", "go", "chess"))).status is MatchStatus.CLAIMED
    assert await redis.zrange(keys.pool_members("en"), 0, -1) == ["stranger"]


async def test_leave_only_removes_the_callers_own_entry(
    settings: Settings, scripts: Scripts, redis: Redis, keys: Keys
) -> None:
    pool = clocked(settings, scripts, [T0])
    await pool.enter("en", PoolEntry("ada", "new-tab", interests=("go",)))
    # An older socket of the same user closing must not take the newer one out of the pool.
    assert not await pool.leave("en", "ada", "old-tab")
    assert await redis.zscore(keys.pool_members("en"), "ada") is not None
    assert await pool.leave("en", "ada", "new-tab")
    assert await redis.zscore(keys.pool_members("en"), "ada") is None
    assert await redis.exists(keys.pool_interest("en", "go")) == 0


async def test_200_concurrent_seekers_over_1000_never_double_match(
    settings: Settings, scripts: Scripts, redis: Redis, keys: Keys
) -> None:
    rng = random.Random(7)
    slugs = [f"i{n}" for n in range(12)]
    now = [T0]
    pool = clocked(settings, scripts, now)
    users = [f"u{n:04d}" for n in range(1000)]
    interests = {u: tuple(rng.sample(slugs, rng.randint(1, 4))) for u in users}
    for batch in range(0, 1000, 100):
        await asyncio.gather(
            *(pool.enter("en", entry(u, *interests[u])) for u in users[batch : batch + 100])
        )
    assert await redis.zcard(keys.pool_members("en")) == 1000
    seekers = rng.sample(users, 200)
    # Every seeker at once, each on its own connection (the client's pool opens them), as 200
    # sockets on several matcher processes would.
    replies = await asyncio.gather(*(pool.find("en", entry(s, *interests[s])) for s in seekers))
    pairs = [(s, r.partner_id) for s, r in zip(seekers, replies, strict=True) if r.partner_id]
    appearances = Counter(u for pair in pairs for u in pair)
    twice = [u for u, n in appearances.items() if n > 1]
    assert twice == [], f"matched more than once: {twice}"
    assert len(pairs) >= 150  # nearly every seeker finds someone in a pool of 1,000
    claimed = {s for s, r in zip(seekers, replies, strict=True) if r.status is MatchStatus.CLAIMED}
    partners = {p for _, p in pairs}
    # A seeker told "claimed" was indeed taken by exactly one other seeker's match.
    assert claimed <= partners
    for seeker, partner in pairs:
        shared = set(interests[seeker]) & set(interests[partner])
        assert shared, (seeker, partner)
    # The pool lost exactly the matched users, from every index.
    matched = set(appearances)
    left = set(await redis.zrange(keys.pool_members("en"), 0, -1))
    assert left == set(users) - matched
    for slug in slugs:
        indexed = set(await redis.zrange(keys.pool_interest("en", slug), 0, -1))
        assert not indexed & matched
        assert indexed == {u for u in left if slug in interests[u]}


def test_a_pools_keys_share_one_hash_tag_and_every_name_the_prefix() -> None:
    keys = Keys("tenantA", 4)
    pool_keys = [
        keys.pool_members("fr"),
        keys.pool_entries("fr"),
        keys.pool_interest("fr", "rock-climbing"),
        keys.pool_interest_prefix("fr") + "x",
        keys.pool_claimed("fr", "u1"),
        keys.pool_claimed_prefix("fr") + "u2",
    ]
    assert {k.split("{", 1)[1].split("}", 1)[0] for k in pool_keys} == {"pool:fr"}
    assert keys.pool_interest("fr", "go") == keys.pool_interest_prefix("fr") + "go"
    names = [*pool_keys, keys.match_channel("u1"), keys.inbox("u1")]
    assert all(n.startswith("tenantA:") for n in names)
    assert len(set(names)) == len(names)
