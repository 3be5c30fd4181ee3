"""Profiles: anyone signed in may read anyone's public profile, cache-aside; only the owner writes.

Why public: pairing strangers by interests is the product, so a partner's display name, bio,
language, region and interests must be readable across tenants. What identifies an account
(its tenant and login name) is shown only to members of the same tenant.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Response

from services.api.deps import Caller, Res, parsed_body
from services.api.problems import responses
from shared.domain.accounts import Principal
from shared.domain.models import Profile, ProfilePatch, PublicProfile

router = APIRouter(prefix="/v1/users", tags=["profiles"], responses=responses(401, 503))

PRIVATE = {"tenant_id", "username"}


def _view(profile: Profile, who: Principal) -> Response:
    # Serialized by pydantic's own encoder in one step: the hot path of a cached read.
    same_tenant = profile.tenant_id == who.tenant_id
    body = profile.model_dump_json(exclude=None if same_tenant else PRIVATE)
    return Response(body, media_type="application/json")


@router.get("/me/profile", response_model=Profile, responses=responses(404))
async def read_mine(who: Caller, res: Res) -> Response:
    return _view(await res.profiles.get(who.user_id), who)


async def _write_budget(who: Caller, res: Res) -> dict[str, str]:
    """One profile write counted, before the body is read (a malformed patch spends budget too);
    the RateLimit headers of the answer."""
    limiter = res.limiter
    decision = await limiter.hit(limiter.profile_write, who.user_id)
    return limiter.headers(limiter.profile_write, decision)


@router.patch("/me/profile", response_model=Profile, responses=responses(404, 413, 422, 429))
async def update_mine(
    who: Caller,
    # Before the body: dependencies are solved in this order, so 401, then 429, then 422.
    budget: Annotated[dict[str, str], Depends(_write_budget)],
    patch: Annotated[ProfilePatch, parsed_body(ProfilePatch)],
    res: Res,
) -> Response:
    response = _view(await res.profiles.update(who.user_id, patch), who)
    response.headers.update(budget)
    return response


@router.get(
    "/{user_id}/profile",
    response_model=PublicProfile,
    responses=responses(404, 422),
    description="Public fields for anyone signed in; `tenant_id` and `username` only within"
    " the same tenant.",
)
async def read(user_id: UUID, who: Caller, res: Res) -> Response:
    return _view(await res.profiles.get(str(user_id)), who)
