"""Pydantic models for everything that crosses a service boundary."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

Username = Annotated[
    str, StringConstraints(min_length=3, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")
]
Password = Annotated[str, StringConstraints(min_length=8, max_length=256)]


# What `strip_whitespace` strips (Unicode White_Space): a stripped field that must not be empty
# holds some other character, and its JSON schema says so (a `pattern` searches, unanchored).
NOT_BLANK = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


def not_blank(*fields: str) -> Callable[[dict[str, Any]], None]:
    """A `json_schema_extra` for a model whose stripped `fields` have a minimum length: the
    schema's minLength counts the unstripped text, so without this a client generated from it
    would send "\u00a0" as a valid title."""

    def extra(schema: dict[str, Any]) -> None:
        for name in fields:
            schema["properties"][name]["pattern"] = NOT_BLANK

    return extra


class In(BaseModel):
    """Base of request bodies: unknown fields are an error, so nobody can set what they may not."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Credentials(In):
    username: Username
    password: Password


class SessionOut(BaseModel):
    user_id: str
    tenant_id: str
    token: str


class MeOut(BaseModel):
    user_id: str
    tenant_id: str
    username: str
    role: Literal["owner", "member"]


class MemberOut(BaseModel):
    user_id: str


class DocumentCreate(In):
    model_config = ConfigDict(json_schema_extra=not_blank("title"))  # merged with In's

    title: Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
    content: str = ""


def _json_integer(value: object) -> object:
    # What JSON Schema calls an integer: JSON `false` and "3" are not, though lax mode would read
    # them as 0 and 3; an integral 3.0 is (strict mode would refuse it).
    if isinstance(value, bool | str):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


class ContentEdit(In):
    content: str
    base_version: Annotated[int, Field(ge=0), BeforeValidator(_json_integer)] | None = None


DocState = Literal["saved", "saving"]


class DocumentOut(BaseModel):
    id: str
    title: str
    content: str
    version: int
    saved_version: int
    status: DocState
    dirty_since: datetime | None
    updated_at: datetime
    updated_by: str | None
    created_at: datetime


class DocumentSummary(BaseModel):
    id: str
    title: str
    version: int
    saved_version: int
    status: DocState
    updated_at: datetime
    created_at: datetime


class DocumentPage(BaseModel):
    items: list[DocumentSummary]
    next_cursor: str | None


class EditOut(BaseModel):
    id: str
    version: int
    saved_version: int
    status: DocState


class PresenceOut(BaseModel):
    editors: list[str]


class StatusOut(BaseModel):
    id: str
    version: int
    saved_version: int
    status: DocState
    dirty_since: datetime | None
    editors: list[str]


# Profiles and interests -----------------------------------------------------------------------
# An interest is a lowercase slug ("rock-climbing"), so "Rock Climbing" and "rock climbing" meet.
Slug = Annotated[
    str, StringConstraints(min_length=1, max_length=40, pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")
]
Language = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}$")]
Region = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]


class Profile(BaseModel):
    user_id: str
    tenant_id: str
    username: str
    display_name: str
    bio: str
    language: str
    region: str | None
    interests: list[str]
    updated_at: datetime


def _null_only_clears_region(schema: dict[str, Any]) -> None:
    # A field left out is unchanged; null clears a field only where clearing means something
    # (region), and is refused elsewhere (shared/profile_cache.py). Say so in the JSON schema,
    # which otherwise reads `X | None = None` as "null allowed".
    for name, prop in schema.get("properties", {}).items():
        branches = prop.get("anyOf")
        if name == "region" or not isinstance(branches, list):
            continue
        kept = [b for b in branches if b != {"type": "null"}]
        del prop["anyOf"]
        prop.update(kept[0] if len(kept) == 1 else {"anyOf": kept})
        prop.pop("default", None)


class ProfilePatch(In):
    """Only these fields; anything else (tenant_id, role, user_id) is a 422."""

    model_config = ConfigDict(json_schema_extra=_null_only_clears_region)  # merged with In's

    display_name: Annotated[str, StringConstraints(max_length=80, strip_whitespace=True)] | None = (
        None
    )
    bio: Annotated[str, StringConstraints(max_length=2000)] | None = None
    language: Language | None = None
    region: Region | None = None
    interests: Annotated[list[Slug], Field(max_length=20)] | None = None


# Jobs and snapshots ---------------------------------------------------------------------------
JobState = Literal["queued", "in_progress", "complete", "failed", "not_found"]


class JobAccepted(BaseModel):
    job_id: str
    status: JobState


class JobOut(BaseModel):
    job_id: str
    status: JobState
    result: dict[str, Any] | None = None
    error: str | None = None


class SnapshotCreate(In):
    model_config = ConfigDict(json_schema_extra=not_blank("label"))  # merged with In's

    label: Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]


class SnapshotOut(BaseModel):
    id: str
    document_id: str
    label: str
    version: int
    created_by: str | None
    created_at: datetime


class SnapshotDetail(SnapshotOut):
    content: str


class PublicProfile(BaseModel):
    """What any signed-in user may read of anyone's profile (no tenant, no login name)."""

    user_id: str
    display_name: str
    bio: str
    language: str
    region: str | None
    interests: list[str]
    updated_at: datetime


# Trending and cache stats ---------------------------------------------------------------------
class TrendingInterest(BaseModel):
    slug: str
    score: float


class TrendingRank(BaseModel):
    slug: str
    score: float
    rank: int  # 1 = today's most matched interest


class CacheRedisStats(BaseModel):
    up: bool
    used_memory_bytes: int | None = None
    maxmemory_bytes: int | None = None
    connected_clients: int | None = None
    evicted_keys: int | None = None


class CacheStatsOut(BaseModel):
    status: Literal["healthy", "warning"]
    warnings: list[str]
    hit_rate: float | None
    families: dict[str, dict[str, int]]
    cache_listener: bool
    cache_redis: CacheRedisStats
    dirty_documents: int | None
    oldest_dirty_age_s: float | None
    queue_depth: int | None


# Errors ---------------------------------------------------------------------------------------
class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error (`application/problem+json`). Some
    problems carry one extension member: `current_version` (409, a stale edit), `limit` (413),
    `checks` (503 from /readyz)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    current_version: int | None = None
    limit: int | None = None
    checks: dict[str, str] | None = None


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(Problem):
    """A 422: the request is not valid; `errors` says where (`loc`) and why."""

    errors: list[ValidationIssue] = []
