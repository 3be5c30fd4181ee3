"""Two people co-edit one document in Chromium: they converge to one text, equal to GET and to
Postgres after the flush; the status says `Saving…` then `Saved (version N)` with the version
Postgres holds; one of them goes offline, keeps typing, and everything merges on reconnect."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import pytest
from playwright.async_api import expect

from tests.services.api.console.conftest import (
    People,
    Person,
    Stack,
    converged,
    log_in,
    new_document,
    sign_up,
    status_log,
    subsequence,
    unique,
    watch_status,
)
from tests.support.processes import log_ready, running

# Typed by each person: disjoint alphabets, so every character's author is known.
OWNER_TYPES = "abcdefghijklmnopqrst" * 2
MEMBER_TYPES = "0123456789" * 4


async def owner_and_member(people: People, stack: Stack) -> tuple[Person, Person, str, str, str]:
    """The owner signs up, creates a document and adds a member; the member logs in and opens
    the document by its link. Both see each other in the document."""
    owner, member = await people("owner"), await people("member")
    owner_name, member_name = unique("owner"), unique("member")
    await sign_up(owner, owner_name)
    await owner.shot("signed-up")
    await owner.page.get_by_label("Member username", exact=True).fill(member_name)
    await owner.page.get_by_label("Member password", exact=True).fill("member password")
    await owner.page.get_by_role("button", name="Add member").click()
    await expect(owner.page.get_by_text(f"{member_name} can now log in")).to_be_visible()
    await owner.shot("member-added")
    doc_id = await new_document(owner, "Plan")
    await owner.saved_version()
    await owner.shot("document-open")
    # The shared link: logging in on it lands in the document.
    await log_in(member, member_name, "member password", path=f"/d/{doc_id}")
    await expect(member.page.get_by_role("heading", name="Plan")).to_be_visible()
    for person in (owner, member):
        people_list = person.page.get_by_role("list", name="People in this document")
        await expect(people_list).to_contain_text(owner_name)
        await expect(people_list).to_contain_text(member_name)
    await member.shot("member-joined")
    return owner, member, doc_id, owner_name, member_name


async def test_two_people_type_at_once_and_converge_with_postgres(
    people: People, stack: Stack
) -> None:
    owner, member, doc_id, owner_name, member_name = await owner_and_member(people, stack)
    await owner.editor_end()
    await member.editor_end()
    await asyncio.gather(
        owner.page.keyboard.type(OWNER_TYPES, delay=35),
        member.page.keyboard.type(MEMBER_TYPES, delay=35),
    )
    await owner.shot("typed")
    await member.shot("typed")
    text = await converged(owner, member)
    assert Counter(text) == Counter(OWNER_TYPES + MEMBER_TYPES), text
    assert subsequence(OWNER_TYPES, text) and subsequence(MEMBER_TYPES, text), text
    # Each sees the other's cursor, labelled with their name.
    await expect(owner.page.locator(".cm-ySelectionInfo")).to_have_text(member_name)
    await expect(member.page.locator(".cm-ySelectionInfo")).to_have_text(owner_name)
    # And the other's selection, not only the caret: the member selects to the line's start.
    await expect(owner.page.locator(".cm-ySelection")).to_have_count(0)
    await member.page.keyboard.press("Shift+Home")
    await expect(owner.page.locator(".cm-ySelection").first).to_be_visible()
    await owner.shot("member-selected")
    versions = {await owner.saved_version(), await member.saved_version()}
    await owner.shot("saved")
    await member.shot("saved")
    content, version = await stack.stored(doc_id)
    assert content == text
    assert versions == {version}, (versions, version)
    r = await stack.http.get(
        f"/v1/documents/{doc_id}", headers={"Authorization": f"Bearer {await owner.token()}"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["content"] == text
    assert r.json()["saved_version"] == version
    # The member leaves the document: the owner's list of people drops them, and their cursor.
    await member.page.get_by_role("link", name="← Documents").click()
    people_list = owner.page.get_by_role("list", name="People in this document")
    await expect(people_list).not_to_contain_text(member_name)
    await expect(people_list).to_contain_text(owner_name)
    await expect(owner.page.locator(".cm-ySelectionInfo")).to_have_count(0)
    await owner.shot("member-left")
    for person in (owner, member):
        assert person.unexpected_errors() == [], person.errors


async def test_status_saving_then_saved_and_offline_merges(people: People, stack: Stack) -> None:
    owner, member, doc_id, *_ = await owner_and_member(people, stack)
    await watch_status(owner)
    await owner.editor_end()
    await owner.page.keyboard.type("hello ", delay=20)
    await expect(owner.status).to_have_text("Saving…")
    await owner.shot("saving")
    version = await owner.saved_version()
    await owner.shot("saved")
    log = await status_log(owner)
    assert "Saving…" in log and log[-1] == f"Saved (version {version})", log
    assert log.index("Saving…") < len(log) - 1, log
    content, stored_version = await stack.stored(doc_id)
    assert (content, stored_version) == ("hello ", version)
    await expect(member.status).to_have_text(f"Saved (version {version})")

    # The member's network goes away: the console says so and keeps every keystroke.
    await member.context.set_offline(True)
    await expect(member.status).to_have_text("Offline — changes kept")
    await member.editor_end()
    await member.page.keyboard.type("OFFLINE", delay=20)
    await owner.editor_end()
    await owner.page.keyboard.type("online", delay=20)
    owner_version = await owner.saved_version()
    await member.shot("offline-typing")
    await owner.shot("while-member-offline")
    assert (await stack.stored(doc_id))[0] == await owner.text()
    assert "OFFLINE" not in await owner.text()
    await expect(member.status).to_have_text("Offline — changes kept")
    assert "OFFLINE" in await member.text()

    await member.context.set_offline(False)
    text = await converged(owner, member)
    assert Counter(text) == Counter("hello " + "OFFLINE" + "online"), text
    assert subsequence("OFFLINE", text) and subsequence("online", text), text
    final = {await owner.saved_version(), await member.saved_version()}
    await owner.shot("merged")
    await member.shot("merged")
    content, stored_version = await stack.stored(doc_id)
    assert content == text
    assert final == {stored_version} and stored_version > owner_version
    assert owner.unexpected_errors() == [], owner.errors
    # Offline, the browser logs each refused reconnect of a socket: expected, nothing else.
    assert (
        member.unexpected_errors(r"WebSocket connection to .* failed", r"ERR_INTERNET_DISCONNECTED")
        == []
    ), member.errors


@pytest.mark.parametrize("stack", [{"without": ["flusher"]}], indirect=True)
async def test_saved_waits_for_postgres(people: People, stack: Stack) -> None:
    """The server acknowledges every edit at once (Redis), but `Saved` waits for Postgres: with
    the flusher down the status stays `Saving…`, and says `Saved` with Postgres's version only
    once a flusher has written it."""
    owner, member, doc_id, *_ = await owner_and_member(people, stack)
    await watch_status(owner)
    await owner.editor_end()
    await owner.page.keyboard.type("not yet in postgres", delay=20)
    await expect(owner.status).to_have_text("Saving…")
    # Longer than a flush interval (2 s) and the acknowledgement's round trip, many times over.
    await owner.page.wait_for_timeout(6000)
    await expect(owner.status).to_have_text("Saving…")
    assert await stack.stored(doc_id) == ("", 0)
    r = await stack.http.get(
        f"/v1/documents/{doc_id}/status", headers={"Authorization": f"Bearer {await owner.token()}"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["saved_version"] == 0 < r.json()["version"], r.json()
    await owner.shot("saving-without-flusher")
    # The documents list says the same: not "Last saved" while Postgres lacks the last edit.
    await member.page.get_by_role("link", name="← Documents").click()
    listed = member.page.get_by_role("list", name="Documents").get_by_role("listitem")
    await expect(listed.filter(has_text="Plan")).to_contain_text("Saving… (last edit ")
    await expect(listed.filter(has_text="Plan")).not_to_contain_text("Last saved")
    await member.shot("listed-saving")
    async with running(
        "flusher", "services.flusher", stack.env, stack.logs, log_ready("flusher ready")
    ):
        version = await owner.saved_version()
        assert await stack.stored(doc_id) == ("not yet in postgres", version)
        await owner.shot("saved-by-flusher")
    await member.page.reload()
    await expect(listed.filter(has_text="Plan")).to_contain_text(
        re.compile(rf"Last saved .+ \(version {version}\)$")
    )
    await member.shot("listed-saved")
    log = await status_log(owner)
    assert not any(re.match(r"^Saved", t) for t in log[1:-1]), log
    for person in (owner, member):
        assert person.unexpected_errors() == [], person.errors
