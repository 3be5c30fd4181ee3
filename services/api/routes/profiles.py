"""Profiles: anyone signed in may read anyone's public profile, cache-aside; only the owner writes.

Why public: pairing strangers by interests is the product, so a partner's display name, bio,
language, region and interests must be readable across tenants. What identifies an account
(its tenant and login name) is shown only to members of the same tenant.
"""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Request, Response

from services.api.deps import Caller, Res, json_body
from shared.accounts import Principal
from shared.models import Profile, ProfilePatch, PublicProfile

router = APIRouter(prefix="/v1/users", tags=["profiles"])

PRIVATE = {"tenant_id", "username"}


def _view(profile: Profile, who: Principal) -> Response:
    # Serialized by pydantic's own encoder in one step: the hot path of a cached read.
    same_tenant = profile.tenant_id == who.tenant_id
    body = profile.model_dump_json(exclude=None if same_tenant else PRIVATE)
    return Response(body, media_type="application/json")


@router.get("/me/profile", response_model=Profile)
async def read_mine(who: Caller, res: Res) -> Response:
    return _view(await res.profiles.get(who.user_id), who)


@router.patch("/me/profile", response_model=Profile)
async def update_mine(request: Request, who: Caller, res: Res) -> Response:
    limiter = res.limiter
    decision = await limiter.hit(limiter.profile_write, who.user_id)
    patch = await json_body(request, ProfilePatch)
    response = _view(await res.profiles.update(who.user_id, patch), who)
    response.headers.update(limiter.headers(limiter.profile_write, decision))
    return response


@router.get(
    "/{user_id}/profile",
    response_model=PublicProfile,
    description="Public fields for anyone signed in; `tenant_id` and `username` only within"
    " the same tenant.",
)
async def read(user_id: UUID, who: Caller, res: Res) -> Response:
    return _view(await res.profiles.get(str(user_id)), who)
