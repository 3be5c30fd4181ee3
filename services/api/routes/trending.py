"""Today's trending interests (UTC day), counted by the matcher per shared interest of a match."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from services.api.deps import Caller, Res
from services.api.problems import responses
from shared.domain import trending
from shared.domain.errors import NotFound
from shared.domain.models import TrendingInterest, TrendingRank

router = APIRouter(prefix="/v1/trending", tags=["trending"], responses=responses(401, 503))

SLUG = r"^[a-z0-9]+(-[a-z0-9]+)*$"


@router.get("/interests", response_model=list[TrendingInterest], responses=responses(422))
async def top(
    _: Caller, res: Res, limit: Annotated[int, Query(ge=1, le=100)] = 10
) -> list[TrendingInterest]:
    rows = await trending.top(res.state, res.keys, limit)
    return [TrendingInterest(slug=slug, score=score) for slug, score in rows]


@router.get("/interests/{slug}", response_model=TrendingRank, responses=responses(404, 422))
async def one(
    _: Caller, res: Res, slug: Annotated[str, Path(max_length=40, pattern=SLUG)]
) -> TrendingRank:
    found = await trending.rank(res.state, res.keys, slug)
    if found is None:
        # Not counted today: 404 (a score of 0 would need a rank it does not have).
        raise NotFound(f"interest {slug!r} has no matches today")
    score, position = found
    return TrendingRank(slug=slug, score=score, rank=position)
