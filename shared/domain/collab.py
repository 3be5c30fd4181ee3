"""Yjs co-editing, the pure part: the y-websocket wire messages, update validation, the seeding
update, the HTTP editor's diff, and the fold of a stored state with its update log. No I/O here:
the api's collab socket and the flusher's compaction both build on it.

Wire format (y-protocols 1.0 `sync.js`, y-websocket 2.1): one message per binary frame, a varUint
type then its body. Type 0 is sync, followed by a varUint sub-type (0 step 1 carrying a state
vector, 1 step 2 and 2 update, each carrying an update) and a varBytes payload; type 1 is
awareness (a varBytes awareness update, relayed as received, never re-encoded); type 3 asks for
every known awareness state. An awareness update (y-protocols 1.0 `awareness.js`) is a varUint
count, then per client a varUint client id, a varUint clock and a varString state (its JSON;
`null`: the client is gone). varUint: 7 bits a byte, least significant group first, high bit set
on every byte but the last; varBytes: a varUint length, then the bytes.

pycrdt is pinned (pyproject.toml): its `Text` offsets are UTF-8 bytes, where Yjs counts UTF-16
units; `text_update` below converts, and its updates interoperate with Yjs clients.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pycrdt import Doc, Text, get_state, merge_updates

# pycrdt's native Doc, below its Python wrapper: the fold's text in one transaction (`fold`).
# A private module, stable at the pinned version (pyproject.toml).
from pycrdt._pycrdt import Doc as NativeDoc

from shared.domain.errors import InvalidInput

# The one shared type of a Redline document: its text.
ROOT = "content"
# The client id of the update that seeds a document's existing text: every process seeding the
# same text at the same version makes the same bytes, so two seeds applied together dedupe
# instead of doubling the text. Yjs clients draw random 32-bit ids, so one may draw this one
# (2^-32 a client); its first structs would then collide with the seed's.
SEED_CLIENT = 1
# The valid empty update (no structs, no deletes): clients send it as a step 2 when in sync.
EMPTY_UPDATE = b"\x00\x00"
# An awareness message with no client in it: y-websocket clients drop a connection after 30 s
# without a message, and this is the cheapest one they accept and ignore.
HEARTBEAT = b"\x01\x01\x00"

SYNC, AWARENESS, QUERY_AWARENESS = 0, 1, 3
STEP1, STEP2, UPDATE = 0, 1, 2


class MalformedMessage(InvalidInput):
    """A frame that is not a y-websocket message, or an update Yjs cannot decode."""


@dataclass(frozen=True, slots=True)
class SyncStep1:
    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncStep2:
    update: bytes


@dataclass(frozen=True, slots=True)
class Update:
    update: bytes


@dataclass(frozen=True, slots=True)
class Awareness:
    payload: bytes


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    pass


Message = SyncStep1 | SyncStep2 | Update | Awareness | QueryAwareness


# Wire ----------------------------------------------------------------------------------------
def _var_uint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def _var_bytes(payload: bytes) -> bytes:
    return _var_uint(len(payload)) + payload


class _Reader:
    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.at = 0

    def var_uint(self) -> int:
        value = shift = 0
        while True:
            if self.at >= len(self.frame):
                raise MalformedMessage("truncated message")
            byte = self.frame[self.at]
            self.at += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > 49:  # past JavaScript's 2^53: no y-protocols writer makes it
                raise MalformedMessage("a number in the message is too long")

    def var_bytes(self) -> bytes:
        size = self.var_uint()
        end = self.at + size
        if end > len(self.frame):
            raise MalformedMessage("truncated message")
        payload, self.at = self.frame[self.at : end], end
        return payload

    def end(self) -> None:
        if self.at != len(self.frame):
            raise MalformedMessage("trailing bytes after the message")


def parse(frame: bytes) -> Message:
    """The message in one binary frame; MalformedMessage for anything else. An update's bytes
    are not decoded here (see `checked`)."""
    reader = _Reader(frame)
    kind = reader.var_uint()
    msg: Message
    if kind == SYNC:
        step = reader.var_uint()
        payload = reader.var_bytes()
        if step == STEP1:
            msg = SyncStep1(payload)
        elif step == STEP2:
            msg = SyncStep2(payload)
        elif step == UPDATE:
            msg = Update(payload)
        else:
            raise MalformedMessage(f"unknown sync message {step}")
    elif kind == AWARENESS:
        msg = Awareness(reader.var_bytes())
    elif kind == QUERY_AWARENESS:
        msg = QueryAwareness()
    else:
        raise MalformedMessage(f"unknown message type {kind}")
    reader.end()
    return msg


def encode(msg: Message) -> bytes:
    if isinstance(msg, SyncStep1):
        return bytes((SYNC, STEP1)) + _var_bytes(msg.state_vector)
    if isinstance(msg, SyncStep2):
        return bytes((SYNC, STEP2)) + _var_bytes(msg.update)
    if isinstance(msg, Update):
        return bytes((SYNC, UPDATE)) + _var_bytes(msg.update)
    if isinstance(msg, Awareness):
        return bytes((AWARENESS,)) + _var_bytes(msg.payload)
    return bytes((QUERY_AWARENESS,))


def checked(update: bytes) -> bytes:
    """`update` if Yjs can decode it, else MalformedMessage; the check costs a few microseconds
    for a keystroke and touches no document, so nothing is applied before it is stored."""
    try:
        get_state(update)
    except ValueError:
        raise MalformedMessage("not a Yjs update") from None
    return update


# Awareness -----------------------------------------------------------------------------------
class AwarenessEntry(NamedTuple):
    """One client in an awareness update: its Yjs client id, its clock (one more at each change
    of its state) and its state's JSON as sent; `GONE` once the client has left."""

    client: int
    clock: int
    state: bytes


GONE = b"null"


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_awareness(payload: bytes) -> list[AwarenessEntry]:
    """The entries of an awareness message's payload; MalformedMessage for anything else. Each
    state must be JSON as JavaScript reads it (UTF-8, no NaN or Infinity): every client
    `JSON.parse`s every state it hears, and one that throws breaks its awareness for good."""
    reader = _Reader(payload)
    entries: list[AwarenessEntry] = []
    for _ in range(reader.var_uint()):
        client = reader.var_uint()
        clock = reader.var_uint()
        state = reader.var_bytes()
        try:
            json.loads(state.decode(), parse_constant=_no_constant)
        except ValueError:
            raise MalformedMessage("an awareness state that is not JSON") from None
        entries.append(AwarenessEntry(client, clock, state))
    reader.end()
    return entries


def awareness_frame(entries: Iterable[tuple[int, int, bytes]]) -> bytes:
    """An awareness message carrying these (client id, clock, state JSON) entries."""
    body = bytearray()
    count = 0
    for client, clock, state in entries:
        body += _var_uint(client) + _var_uint(clock) + _var_bytes(state)
        count += 1
    return encode(Awareness(_var_uint(count) + bytes(body)))


def gone_frame(clients: Iterable[tuple[int, int]]) -> bytes:
    """Tell every client that these (client id, last clock) have left: state null at the next
    clock, as y-protocols' `removeAwarenessStates` does (a client takes a null state only with a
    newer clock, and one told that it is itself gone re-announces itself)."""
    return awareness_frame((client, clock + 1, GONE) for client, clock in clients)


# Documents -----------------------------------------------------------------------------------
def new_doc(state: bytes | None = None, *, client_id: int | None = None) -> tuple[Doc[Text], Text]:
    doc: Doc[Text] = Doc(client_id=client_id)
    text = doc.get(ROOT, type=Text)
    if state:
        doc.apply_update(state)
    return doc, text


def seed_update(content: str) -> bytes:
    """The update that turns an empty document into `content`, the same bytes in every process
    (SEED_CLIENT). Only seed from one version of a document: two different seeds under one client
    id and clock would never converge, so the caller installs it guarded by version."""
    if not content:
        return EMPTY_UPDATE
    doc, text = new_doc(client_id=SEED_CLIENT)
    text += content
    update: bytes = doc.get_update()
    return update


def text_update(doc: Doc[Text], text: Text, new: str) -> bytes:
    """The smallest update that turns `text` (held by `doc`) into `new`: one delete and one
    insert between their common prefix and suffix, so an HTTP editor merges with socket editors
    instead of overwriting them. Applied to `doc` too. The scan is over code points, so it never
    splits a UTF-8 sequence; offsets are then converted to pycrdt's UTF-8 byte offsets."""
    old = str(text)
    shortest = min(len(old), len(new))
    prefix = 0
    while prefix < shortest and old[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix and old[-1 - suffix] == new[-1 - suffix]:
        suffix += 1
    start = len(old[:prefix].encode())
    stop = len(old[: len(old) - suffix].encode())
    inserted = new[prefix : len(new) - suffix]
    before = doc.get_state()
    with doc.transaction():
        if stop > start:
            del text[start:stop]
        if inserted:
            text.insert(start, inserted)
    update: bytes = doc.get_update(before)
    return update


# merge_updates grows superlinearly with the number of updates in one call (7 s for 20,000
# keystrokes here), so a long log is merged in rounds of this many: 58 ms for those 20,000, five
# times faster than applying them to a Doc, and, unlike a Doc's encoding, the merge keeps the
# structs whose dependencies have not arrived yet.
MERGE_ROUND = 50


def merged(updates: Sequence[bytes]) -> bytes:
    """One update holding all of `updates` (Yjs merging is a set union: order and repeats do not
    matter)."""
    round_ = [u for u in updates if u != EMPTY_UPDATE]
    if not round_:
        return EMPTY_UPDATE
    while len(round_) > 1:
        round_ = [
            merge_updates(*round_[i : i + MERGE_ROUND]) for i in range(0, len(round_), MERGE_ROUND)
        ]
    return round_[0]


@dataclass(frozen=True, slots=True)
class Folded:
    state: bytes
    text: str


def fold(state: bytes | None, log: Sequence[bytes]) -> Folded:
    """A document's stored state with its log applied: the new state and its text. Folding
    entries already in `state` (a crash between a write and the trim) changes nothing.

    The state is the merge (it keeps structs still waiting for a dependency, which a Doc's own
    encoding would drop); the text is that merge decoded by pycrdt's native Doc in one
    transaction. pycrdt's Python wrapper (Doc(), doc.get, apply_update, str) costs a transaction
    a call and ~13 us for Doc() alone: 47 of a fold's 55 us for a 2 KB document and three
    keystrokes, 25 us this way (the flusher folds every co-edited document of a pass)."""
    folded = merged([state, *log] if state else log)
    doc = NativeDoc(None, None, None)
    txn = doc.create_transaction()
    try:
        text = doc.get_or_insert_text(txn, ROOT)
        doc.apply_update(txn, folded)
        return Folded(folded, text.get_string(txn))
    finally:
        txn.commit()
        txn.drop()
