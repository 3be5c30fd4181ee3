"""Pydantic models for everything that crosses a service boundary."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    ValidationInfo,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError


# Text Postgres and Redis can store ------------------------------------------------------------
# Lone surrogates (U+D800..U+DFFF) have no UTF-8 form: the Redis client's and Postgres's encoders
# both fail on them. pydantic's JSON parser refuses them itself (an escaped "\ud800" or raw
# bytes: 422 json_invalid, pinned by tests/services/api/test_documents.py), so a body parsed from
# JSON skips the scan (it cost 20 us a KB of non-ASCII edit text as a regex); a model validated
# from Python values (a job, a later entrance) could still carry one, and is checked.
def _utf8_text(value: str, info: ValidationInfo) -> str:
    # isascii() reads a flag in CPython: all-ASCII text costs no scan at all.
    if info.mode == "json" or value.isascii():
        return value
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(
            "contains a lone surrogate (U+D800..U+DFFF), which is not valid Unicode"
        ) from None
    return value


def _pg_text(value: str, info: ValidationInfo) -> str:
    # Postgres `text` cannot hold U+0000: a document holding one could never be flushed (and, in
    # one batch statement, it failed its neighbours' writes too), so it is refused at the door.
    if "\x00" in value:
        raise ValueError("contains a NUL character (U+0000), which Postgres cannot store")
    return _utf8_text(value, info)


# The JSON schema says it too, so generated clients and schemathesis know NUL is refused (a
# field with a pattern of its own, like a username's, already excludes it).
NO_NUL = r"^[^\x00]*$"


class _NoNulSchema:
    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema.setdefault("pattern", NO_NUL)
        return schema


S = TypeVar("S", bound=str)
# Every text field that reaches Redis or Postgres is `PgText[str]`, or with constraints
# `PgText[Annotated[str, StringConstraints(...)]]`: the check runs after the constraints (a
# generic alias, because nesting the other way round would apply them after the check, where
# pydantic no longer treats them as string constraints). The 422 names the field (its `loc`).
PgText = Annotated[S, AfterValidator(_pg_text), _NoNulSchema()]
# Text that is only hashed, never stored (passwords): NUL is harmless there (argon2 hashes bytes;
# refusing it now would lock out whoever chose one), a lone surrogate has no bytes to hash.
Utf8Text = Annotated[S, AfterValidator(_utf8_text)]

Username = PgText[
    Annotated[str, StringConstraints(min_length=3, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")]
]
Password = Utf8Text[Annotated[str, StringConstraints(min_length=8, max_length=256)]]


# What `strip_whitespace` strips (Unicode White_Space): a stripped field that must not be empty
# holds some other character, and no NUL (PgText), and its JSON schema says so.
_BLANK = r"\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = rf"^[^\x00]*[^{_BLANK}\x00][^\x00]*$"


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

    title: PgText[
        Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
    ]
    content: PgText[str] = ""


def _json_integer(value: object) -> object:
    # What JSON Schema calls an integer: JSON `false` and "3" are not, though lax mode would read
    # them as 0 and 3; an integral 3.0 is (strict mode would refuse it).
    if isinstance(value, bool | str):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


class ContentEdit(In):
    content: PgText[str]
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
    # (region), and is refused elsewhere (shared/domain/profile_cache.py). Say so in the JSON
    # schema, which otherwise reads `X | None = None` as "null allowed".
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

    display_name: (
        PgText[Annotated[str, StringConstraints(max_length=80, strip_whitespace=True)]] | None
    ) = None
    bio: PgText[Annotated[str, StringConstraints(max_length=2000)]] | None = None
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

    label: PgText[
        Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
    ]


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


class StateRedisStats(BaseModel):
    """The state Redis's memory: full (used at maxmemory) refuses writes, so edits answer 503;
    any eviction policy but noeviction could drop unsaved documents."""

    up: bool
    used_memory_bytes: int | None = None
    maxmemory_bytes: int | None = None
    maxmemory_policy: str | None = None


class CacheStatsOut(BaseModel):
    status: Literal["healthy", "warning"]
    warnings: list[str]
    hit_rate: float | None
    families: dict[str, dict[str, int]]
    cache_listener: bool
    cache_redis: CacheRedisStats
    dirty_documents: int | None
    oldest_dirty_age_s: float | None
    # Documents Postgres refused to store (kept in Redis, out of the flush; see README,
    # write-behind): how many in all, and the ids among them that the caller may open.
    quarantined_documents: int | None = None
    quarantined_ids: list[str] = []
    queue_depth: int | None
    state_redis: StateRedisStats | None = None


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
