"""Accounts, sessions and tenant membership."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from services.api.deps import Caller, Res, Token, json_body
from shared.errors import Forbidden
from shared.models import Credentials, MemberOut, MeOut, SessionOut

router = APIRouter(prefix="/v1", tags=["accounts"])


@router.post("/auth/signup", status_code=201, response_model=SessionOut)
async def signup(request: Request, res: Res) -> SessionOut:
    body = await json_body(request, Credentials)
    # Signups cost an argon2 hash each: they share the login budget per client address.
    await res.limiter.hit(res.limiter.login, res.limiter.client_address(request))
    who, token = await res.accounts.signup(body.username, body.password)
    return SessionOut(user_id=who.user_id, tenant_id=who.tenant_id, token=token)


@router.post("/auth/login", response_model=SessionOut)
async def login(request: Request, res: Res) -> SessionOut:
    body = await json_body(request, Credentials)
    # Per address, per (name, address) and per name from unknown addresses (ratelimit.py).
    async with res.limiter.login_attempt(body.username, res.limiter.client_address(request)):
        who, token = await res.accounts.login(body.username, body.password)
    await res.profiles.touch(who.user_id)  # the warming job preloads recently seen users
    return SessionOut(user_id=who.user_id, tenant_id=who.tenant_id, token=token)


@router.post("/auth/logout", status_code=204)
async def logout(token: Token, _: Caller, res: Res) -> Response:
    await res.accounts.close_session(token)
    return Response(status_code=204)


@router.get("/auth/me", response_model=MeOut)
async def me(who: Caller) -> MeOut:
    return MeOut(user_id=who.user_id, tenant_id=who.tenant_id, username=who.username, role=who.role)


@router.post("/tenant/members", status_code=201, response_model=MemberOut)
async def add_member(request: Request, who: Caller, res: Res) -> MemberOut:
    body = await json_body(request, Credentials)
    if who.role != "owner":
        raise Forbidden("only the tenant's owner may add members")
    member = await res.accounts.add_member(who, body.username, body.password)
    return MemberOut(user_id=member.user_id)
