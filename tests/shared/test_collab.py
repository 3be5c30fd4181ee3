"""shared/domain/collab.py: the y-websocket messages against pycrdt's own encoders, the HTTP
editor's diff, seeding across processes, and the fold of a state with its log."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import (
    Doc,
    Text,
    create_sync_message,
    create_update_message,
    get_state,
)

from shared.domain import collab
from shared.domain.collab import (
    Awareness,
    MalformedMessage,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    Update,
)

# Text that exercises UTF-8 against UTF-16: accents, a combining mark, emoji, a ZWJ family.
TRICKY = st.text(alphabet=st.sampled_from(list("ab é\u0301😀👩‍👩‍👧\n\t中")), max_size=40)
PAYLOAD = st.binary(max_size=300)


def typed(doc: Doc[Text], text: Text, edits: list[tuple[int, str]]) -> list[bytes]:
    """The updates `edits` (code point position, inserted text) make, one transaction each."""
    updates: list[bytes] = []
    for at, chars in edits:
        before = doc.get_state()
        current = str(text)
        offset = len(current[: min(at, len(current))].encode())
        text.insert(offset, chars)
        updates.append(doc.get_update(before))
    return updates


# Wire ----------------------------------------------------------------------------------------
@given(
    st.one_of(
        PAYLOAD.map(SyncStep1),
        PAYLOAD.map(SyncStep2),
        PAYLOAD.map(Update),
        PAYLOAD.map(Awareness),
        st.just(QueryAwareness()),
    )
)
def test_every_message_survives_encode_then_parse(msg: collab.Message) -> None:
    assert collab.parse(collab.encode(msg)) == msg


def test_messages_are_byte_for_byte_what_pycrdt_writes() -> None:
    doc, text = collab.new_doc()
    text += "hello 😀" * 40  # an update over 127 bytes: a two-byte length
    update = doc.get_update()
    assert len(update) > 127
    assert collab.encode(SyncStep1(doc.get_state())) == create_sync_message(doc)
    assert collab.encode(Update(update)) == create_update_message(update)
    assert collab.parse(create_update_message(update)) == Update(update)


@pytest.mark.parametrize(
    "frame",
    [
        b"",  # no type
        b"\x00",  # sync without a sub-type
        b"\x00\x02",  # update without its length
        b"\x00\x02\x05abc",  # shorter than its length says
        b"\x00\x02\x01ab",  # trailing bytes
        b"\x00\x07\x00",  # unknown sync message
        b"\x02\x00\x00",  # auth: never sent by a client
        b"\x09",  # unknown type
        b"\x00\x02" + b"\xff" * 9 + b"\x01",  # a length past 2^53
    ],
)
def test_a_malformed_frame_is_refused(frame: bytes) -> None:
    with pytest.raises(MalformedMessage):
        collab.parse(frame)


@pytest.mark.parametrize("update", [b"", b"\x05\x01", b"\xff\xff\xff", b"\x01\x01\x07"])
def test_an_update_yjs_cannot_decode_is_refused(update: bytes) -> None:
    with pytest.raises(MalformedMessage):
        collab.checked(update)


def test_a_real_keystroke_passes_the_check_unchanged() -> None:
    doc, text = collab.new_doc()
    (keystroke,) = typed(doc, text, [(0, "x")])
    assert collab.checked(keystroke) == keystroke
    assert collab.checked(collab.EMPTY_UPDATE) == collab.EMPTY_UPDATE


def test_the_heartbeat_is_an_awareness_message_with_no_client() -> None:
    msg = collab.parse(collab.HEARTBEAT)
    assert msg == Awareness(b"\x00")


# The HTTP editor's diff ----------------------------------------------------------------------
@given(TRICKY, TRICKY)
def test_a_text_update_turns_old_into_new_on_every_replica(old: str, new: str) -> None:
    server, text = collab.new_doc()
    text += old
    replica, replica_text = collab.new_doc(server.get_update())
    update = collab.text_update(server, text, new)
    replica.apply_update(update)
    assert str(text) == new
    assert str(replica_text) == new


def test_a_text_update_is_small_and_keeps_the_unchanged_text() -> None:
    server, text = collab.new_doc()
    text += "x" * 2048
    update = collab.text_update(server, text, "x" * 1024 + "😀 typed" + "x" * 1024)
    assert len(update) < 64  # the insert only: the 2 KB around it is not resent
    assert str(text) == "x" * 1024 + "😀 typed" + "x" * 1024


def test_an_http_edit_merges_with_a_concurrent_socket_edit() -> None:
    server, text = collab.new_doc()
    text += "middle"
    client, client_text = collab.new_doc(server.get_update())
    (socket_edit,) = typed(client, client_text, [(6, " END")])
    http_edit = collab.text_update(server, text, "START middle")  # made without seeing it
    server.apply_update(socket_edit)
    client.apply_update(http_edit)
    assert str(text) == str(client_text) == "START middle END"


# Seeding -------------------------------------------------------------------------------------
SEED_IN_A_PROCESS = (
    "import sys; from shared.domain.collab import seed_update;"
    "sys.stdout.write(seed_update(sys.argv[1]).hex())"
)


def test_two_processes_seed_the_same_bytes_and_both_seeds_dedupe() -> None:
    content = "an existing document 😀, é, 👩‍👩‍👧\n" * 20
    seeds = [
        bytes.fromhex(
            subprocess.run(
                [sys.executable, "-c", SEED_IN_A_PROCESS, content],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for _ in range(2)
    ]
    assert seeds[0] == seeds[1] == collab.seed_update(content)
    doc, text = collab.new_doc()
    doc.apply_update(seeds[0])
    doc.apply_update(seeds[1])
    assert str(text) == content  # once, not twice


def test_an_empty_document_seeds_the_empty_update() -> None:
    assert collab.seed_update("") == collab.EMPTY_UPDATE


# Folding -------------------------------------------------------------------------------------
def test_a_fold_holds_every_update_of_every_editor() -> None:
    rng = random.Random(7)
    seed = collab.seed_update("0123456789")
    editors = [collab.new_doc(seed) for _ in range(3)]
    log: list[bytes] = []
    for _ in range(60):
        doc, text = rng.choice(editors)
        log += typed(doc, text, [(rng.randrange(len(str(text)) + 1), rng.choice("ab😀é"))])
    for doc, _ in editors:  # everyone hears everything: they converge
        for update in log:
            doc.apply_update(update)
    folded = collab.fold(seed, log)
    assert folded.text == str(editors[0][1]) == str(editors[1][1])
    assert len(folded.text) == 70
    # Folding again, or folding a log the state already holds, changes nothing.
    assert collab.fold(folded.state, log) == folded
    assert collab.fold(folded.state, []).text == folded.text


def test_a_fold_keeps_an_update_whose_dependency_comes_in_a_later_log() -> None:
    doc, text = collab.new_doc()
    first, second = typed(doc, text, [(0, "ab"), (2, "cd")])
    # The log holds `second` only (`first` is still on its way): nothing to show yet...
    early = collab.fold(None, [second])
    assert early.text == ""
    # ...but it is in the state, so when `first` arrives nothing is missing.
    late = collab.fold(early.state, [first])
    assert late.text == "abcd"


def test_a_long_log_folds_in_rounds_to_the_same_state() -> None:
    doc, text = collab.new_doc()
    log = typed(doc, text, [(i, "k") for i in range(collab.MERGE_ROUND * 5 + 3)])
    folded = collab.fold(None, log)
    assert folded.text == str(text)
    assert get_state(folded.state) == doc.get_state()
