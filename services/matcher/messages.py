"""The matcher's WebSocket protocol: JSON text frames with a `type` field, one pydantic model per
message, parsed through discriminated unions (an unknown `type` or field is an error frame)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.domain.models import Region, Slug


class _Client(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FindMatch(_Client):
    """Look for a partner now. `interests` replaces the profile's for this search and the pool
    entry; `region` accepts only partners from that region."""

    type: Literal["find_match"]
    interests: Annotated[list[Slug], Field(max_length=20)] | None = None
    region: Region | None = None


class Cancel(_Client):
    """Leave the pool (stay connected); the next find_match enters it again."""

    type: Literal["cancel"]


class Ping(_Client):
    type: Literal["ping"]


ClientMessage = Annotated[FindMatch | Cancel | Ping, Field(discriminator="type")]
client_message: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


class Queued(BaseModel):
    """The user is in the pool and can be found by others."""

    type: Literal["queued"] = "queued"
    language: str
    interests: list[str]


class MatchFound(BaseModel):
    type: Literal["match_found"] = "match_found"
    room_id: str
    partner_id: str
    document_id: str
    shared_interests: list[str]


class NoMatchFound(BaseModel):
    """Nobody suitable right now; the seeker stays in the pool and may still be found."""

    type: Literal["no_match_found"] = "no_match_found"


class Cancelled(BaseModel):
    type: Literal["cancelled"] = "cancelled"


class RateLimitedMsg(BaseModel):
    """A request refused by its rate limit (a `find_match`; on the events socket a `subscribe`,
    which then names its `document_id`): nothing was done."""

    type: Literal["rate_limited"] = "rate_limited"
    retry_after: int = Field(description="seconds until the next such request is allowed")
    document_id: str | None = None


class ErrorMsg(BaseModel):
    type: Literal["error"] = "error"
    detail: str


class Pong(BaseModel):
    type: Literal["pong"] = "pong"


class Delivery(BaseModel):
    """What one matcher process publishes to a user's channel for the process holding them.
    `requeue` tells the partner's connection to enter the pool again (the match failed after
    the claim); `ticket` names the pool entry (connection) the match claimed; `inbox_id` is the
    stream entry to delete once the frame is sent."""

    frame: MatchFound | None = None
    ticket: str | None = None
    requeue: bool = False
    inbox_id: str | None = None


# /v1/ws/events ------------------------------------------------------------------------------
# Every spelling Python's uuid.UUID accepts (any case, with or without hyphens, in braces, as a
# `urn:uuid:` URN), ASCII hex only: `[0-9a-f]` is spelled out because a Unicode-aware class or
# int() would also take other scripts' digits and underscores.
_UUID = re.compile(
    r"(?:urn:uuid:)?(\{)?"
    r"(?P<hex>[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12})(?(1)\})",
    re.IGNORECASE | re.ASCII,
)
# Redis stream ids: two unsigned 64-bit integers in ASCII decimal.
_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})", re.ASCII)
_U64_MAX = 2**64 - 1
STREAM_ID_MAX = f"{_U64_MAX}-{_U64_MAX}"


def canonical_document_id(raw: str) -> str:
    """The one spelling of a document id (lower case, hyphenated) that keys are built from: an
    id with k hex letters has 2**k case spellings, each of which would otherwise seed its own
    copy of the document in Redis and follow a stream nobody writes to."""
    m = _UUID.fullmatch(raw) if len(raw) <= 64 else None
    if m is None:
        raise ValueError("must be a document id (a UUID)")
    return str(uuid.UUID(hex=m["hex"].replace("-", "")))


def stream_id(raw: str) -> str:
    """A client's stream id, checked the way Redis will read it (else Redis refuses the command
    mid-session): `<ms>-<seq>`, ASCII digits, each part at most 2**64 - 1."""
    m = _STREAM_ID.fullmatch(raw)
    if m is None or int(m[1]) > _U64_MAX or int(m[2]) > _U64_MAX:
        raise ValueError("must be a stream id: <ms>-<seq>, two unsigned 64-bit decimal numbers")
    return f"{int(m[1])}-{int(m[2])}"


DocumentId = Annotated[str, AfterValidator(canonical_document_id)]
StreamId = Annotated[str, AfterValidator(stream_id)]
stream_id_adapter: TypeAdapter[str] = TypeAdapter(StreamId)


class Subscribe(_Client):
    """Follow a document's events. With `since` (a stream id this client saw), first every
    event after it, or a `reset` when it has been trimmed away."""

    type: Literal["subscribe"]
    document_id: DocumentId
    since: StreamId | None = None


class Unsubscribe(_Client):
    type: Literal["unsubscribe"]
    document_id: DocumentId


EventsClientMessage = Annotated[Subscribe | Unsubscribe | Ping, Field(discriminator="type")]
events_client_message: TypeAdapter[EventsClientMessage] = TypeAdapter(EventsClientMessage)


class Event(BaseModel):
    """One stream entry: from a document's stream (`stream: doc`) or the user's inbox. `id` is
    its stream id (resume with `since`); `event` names what happened (document.edited,
    presence.changed, document.saved, document.snapshot, document.deleted, job.completed,
    job.failed, match.found); the other fields depend on it."""

    type: Literal["event"] = "event"
    stream: Literal["doc", "inbox"]
    id: str
    event: str
    document_id: str | None = None
    version: int | None = None
    by: str | None = None
    at: int | None = None
    editors: list[str] | None = None
    label: str | None = None
    snapshot_id: str | None = None
    job_id: str | None = None
    status: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    match: MatchFound | None = None


class Subscribed(BaseModel):
    """Events after `last_id` follow (the backlog after `since` was sent before this)."""

    type: Literal["subscribed"] = "subscribed"
    document_id: str
    last_id: str


class Unsubscribed(BaseModel):
    type: Literal["unsubscribed"] = "unsubscribed"
    document_id: str


class Reset(BaseModel):
    """`since` is older than what the stream still holds: refetch the document, then follow."""

    type: Literal["reset"] = "reset"
    document_id: str


# Stream entries as frames ------------------------------------------------------------------
StreamPos = tuple[int, int]


def pos(stream_id: str) -> StreamPos:
    """A stream id as a comparable pair ("1700000000000-3" -> (1700000000000, 3)). Only for ids
    from Redis or checked by `stream_id` above: int() alone takes "1_0" and digits of
    other scripts, which Redis then refuses."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _int(value: str | None) -> int | None:
    return int(value) if value else None


def doc_event(entry_id: str, f: Mapping[str, str]) -> Event:
    editors = f.get("editors")
    return Event(
        stream="doc",
        id=entry_id,
        event=f.get("type", "unknown"),
        document_id=f.get("document_id"),
        version=_int(f.get("version")),
        by=f.get("by") or None,
        at=_int(f.get("at")),
        editors=None if editors is None else [e for e in editors.split(",") if e],
        label=f.get("label"),
        snapshot_id=f.get("snapshot_id"),
    )


def inbox_event(entry_id: str, f: Mapping[str, str]) -> Event | None:
    """None for an entry that is not for the events socket (a requeue note, garbage)."""
    if "d" in f:
        try:
            delivery = Delivery.model_validate_json(f["d"])
        except ValidationError:
            return None
        frame = delivery.frame
        if frame is None:
            return None
        return Event(
            stream="inbox",
            id=entry_id,
            event="match.found",
            document_id=frame.document_id,
            match=frame,
        )
    if "type" not in f:
        return None
    try:
        result = json.loads(f["result"]) if f.get("result") else None
    except ValueError:
        result = None
    return Event(
        stream="inbox",
        id=entry_id,
        event=f["type"],
        job_id=f.get("job_id"),
        status=f.get("status"),
        result=result if isinstance(result, dict) else None,
        error=f.get("error"),
        at=_int(f.get("at")),
        document_id=f.get("document_id"),
    )
