"""Accounts, sessions and tenant membership."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response

from services.api.deps import Caller, Res, Token, parsed_body
from services.api.problems import responses
from shared.domain.errors import Forbidden
from shared.domain.models import Credentials, MemberOut, MeOut, SessionOut

router = APIRouter(prefix="/v1", tags=["accounts"])

NewCredentials = Annotated[Credentials, parsed_body(Credentials, signed_in=False)]


@router.post(
    "/auth/signup",
    status_code=201,
    response_model=SessionOut,
    responses=responses(409, 413, 422, 429, 503),
)
async def signup(request: Request, body: NewCredentials, res: Res) -> SessionOut:
    # Signups cost an argon2 hash each: they share the login budget per client address.
    await res.limiter.hit(res.limiter.login, res.limiter.client_address(request))
    who, token = await res.accounts.signup(body.username, body.password)
    return SessionOut(user_id=who.user_id, tenant_id=who.tenant_id, token=token)


@router.post("/auth/login", response_model=SessionOut, responses=responses(401, 413, 422, 429, 503))
async def login(request: Request, body: NewCredentials, res: Res) -> SessionOut:
    # Per address, per (name, address) and per name from unknown addresses (ratelimit.py).
    async with res.limiter.login_attempt(body.username, res.limiter.client_address(request)):
        who, token = await res.accounts.login(body.username, body.password)
    await res.profiles.touch(who.user_id)  # the warming job preloads recently seen users
    return SessionOut(user_id=who.user_id, tenant_id=who.tenant_id, token=token)


@router.post("/auth/logout", status_code=204, responses=responses(401, 503))
async def logout(token: Token, _: Caller, res: Res) -> Response:
    await res.accounts.close_session(token)
    return Response(status_code=204)


@router.get("/auth/me", response_model=MeOut, responses=responses(401, 503))
async def me(who: Caller) -> MeOut:
    return MeOut(user_id=who.user_id, tenant_id=who.tenant_id, username=who.username, role=who.role)


@router.post(
    "/tenant/members",
    status_code=201,
    response_model=MemberOut,
    responses=responses(401, 403, 409, 413, 422, 503),
)
async def add_member(
    who: Caller, body: Annotated[Credentials, parsed_body(Credentials)], res: Res
) -> MemberOut:
    if who.role != "owner":
        raise Forbidden("only the tenant's owner may add members")
    member = await res.accounts.add_member(who, body.username, body.password)
    return MemberOut(user_id=member.user_id)
