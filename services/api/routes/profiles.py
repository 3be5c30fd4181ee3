"""Profiles: anyone signed in may read anyone's public profile, cache-aside; only the owner writes.

Why public: pairing strangers by interests is the product, so a partner's display name, bio,
language, region and interests must be readable across tenants. What identifies an account
(its tenant and login name) is shown only to members of the same tenant.
"""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.api.deps import Caller, Res, json_body
from shared.accounts import Principal
from shared.models import Profile, ProfilePatch, PublicProfile

router = APIRouter(prefix="/v1/users", tags=["profiles"])

PRIVATE = {"tenant_id", "username"}


def _view(profile: Profile, who: Principal) -> JSONResponse:
    same_tenant = profile.tenant_id == who.tenant_id
    return JSONResponse(profile.model_dump(mode="json", exclude=None if same_tenant else PRIVATE))


@router.get("/me/profile", response_model=Profile)
async def read_mine(who: Caller, res: Res) -> JSONResponse:
    return _view(await res.profiles.get(who.user_id), who)


@router.patch("/me/profile", response_model=Profile)
async def update_mine(request: Request, who: Caller, res: Res) -> JSONResponse:
    await res.limiter.hit(res.limiter.profile_write, who.user_id)
    patch = await json_body(request, ProfilePatch)
    return _view(await res.profiles.update(who.user_id, patch), who)


@router.get(
    "/{user_id}/profile",
    response_model=PublicProfile,
    description="Public fields for anyone signed in; `tenant_id` and `username` only within"
    " the same tenant.",
)
async def read(user_id: UUID, who: Caller, res: Res) -> JSONResponse:
    # The hot path: a cached profile is decoded once and re-encoded, no response-model pass.
    return _view(await res.profiles.get(str(user_id)), who)
