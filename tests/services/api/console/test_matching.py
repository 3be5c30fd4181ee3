"""Two people who share an interest press `Find a partner` in Chromium, both land in the same
room document with the shared interest shown, and co-edit it; a third person cannot open it;
the interest is trending afterwards. The third person uses the keyboard alone."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import pytest
from playwright.async_api import expect

from tests.services.api.console.conftest import (
    PASSWORD,
    People,
    Person,
    Stack,
    converged,
    new_document,
    sign_up,
    unique,
)

ROOM = re.compile(r"/d/([0-9a-f-]{36})$")


async def search(person: Person, interests: str) -> None:
    page = person.page
    await page.get_by_label("Interests", exact=True).fill(interests)
    await page.get_by_label("Language", exact=True).select_option("en")
    await page.get_by_role("button", name="Find a partner").click()


async def test_partners_meet_in_one_room_and_a_third_cannot_open_it(
    people: People, stack: Stack
) -> None:
    ada, bo = await people("ada"), await people("bo")
    ada_name, bo_name = unique("ada"), unique("bo")
    await sign_up(ada, ada_name)
    await sign_up(bo, bo_name)

    # Every text the match state takes, so the short-lived ones are seen too.
    await ada.page.evaluate(
        """() => {
            const el = document.querySelector('.match-status');
            window.matchLog = [];
            new MutationObserver(() => window.matchLog.push(el.textContent))
                .observe(el, {childList: true, characterData: true, subtree: true});
        }"""
    )
    await search(ada, "jazz, chess")
    # Alone in the pool: Ada waits, and the console says so.
    await expect(ada.page.locator(".match-status")).to_contain_text("No match yet")
    log: list[str] = await ada.page.evaluate("() => window.matchLog")
    states = [
        next((i for i, t in enumerate(log) if t.startswith(prefix)), -1)
        for prefix in (
            "Joining the queue…",
            "In the queue (en). Looking for someone who shares jazz, chess…",
            "No match yet: nobody waiting shares jazz, chess.",
        )
    ]
    assert -1 not in states and states == sorted(states), log
    await expect(ada.page.get_by_role("button", name="Cancel")).to_be_visible()
    await ada.shot("waiting")
    await search(bo, "hiking, jazz")
    for person in (ada, bo):
        await expect(person.page).to_have_url(ROOM)
        await expect(person.page.get_by_text("You were matched on: jazz.")).to_be_visible()
    room = ROOM.search(ada.page.url)
    assert room is not None and bo.page.url == ada.page.url
    doc_id = room.group(1)
    # The room's link opened in another tab of the same browser still says what they share.
    tab = await bo.context.new_page()
    await tab.goto(f"/d/{doc_id}")
    await expect(tab.get_by_role("heading", name="Room: jazz")).to_be_visible()
    await expect(tab.get_by_text("You were matched on: jazz.")).to_be_visible()
    await tab.close()
    for person in (ada, bo):
        people_list = person.page.get_by_role("list", name="People in this document")
        await expect(people_list).to_contain_text(ada_name)
        await expect(people_list).to_contain_text(bo_name)
        await person.saved_version()
    await ada.shot("matched")
    await bo.shot("matched")

    await ada.page.locator(".cm-content").click()
    await bo.page.locator(".cm-content").click()
    await asyncio.gather(
        ada.page.keyboard.type("hi from ada. ", delay=30),
        bo.page.keyboard.type("HELLO FROM BO! ", delay=30),
    )
    text = await converged(ada, bo)
    assert Counter(text) == Counter("hi from ada. " + "HELLO FROM BO! "), text
    version = await ada.saved_version()
    assert await bo.saved_version() == version
    assert await stack.stored(doc_id) == (text, version)
    await ada.shot("co-edited")
    await bo.shot("co-edited")

    # A third person, keyboard only: the username field has focus on arrival.
    cy = await people("cy")
    cy_name = unique("cy")
    await cy.page.goto(f"/d/{doc_id}")
    await expect(cy.page.get_by_label("Username", exact=True)).to_be_focused()
    await cy.page.keyboard.type(cy_name)
    await cy.page.keyboard.press("Tab")
    await cy.page.keyboard.type(PASSWORD)
    await cy.page.keyboard.press("Tab")
    await cy.page.keyboard.press("Tab")
    await expect(cy.page.get_by_role("button", name="Sign up")).to_be_focused()
    await cy.page.keyboard.press("Enter")
    await expect(cy.page.get_by_role("heading", name="Document not available")).to_be_visible()
    await expect(cy.page.get_by_role("alert")).to_contain_text(
        "does not exist, or you do not have access to it"
    )
    assert await cy.page.locator(".cm-editor").count() == 0
    await cy.shot("refused")
    r = await stack.http.get(
        f"/v1/documents/{doc_id}", headers={"Authorization": f"Bearer {await cy.token()}"}
    )
    assert r.status_code == 404, r.text

    # Back home, today's trending interests count the match.
    await ada.page.get_by_role("link", name="← Documents").click()
    trending = ada.page.get_by_role("list", name="Trending interests")
    await expect(trending).to_contain_text("jazz")
    await expect(trending).not_to_contain_text("chess")
    # The room is not a workspace document: the console remembers it under Your rooms.
    await ada.page.get_by_role("list", name="Your rooms").get_by_role("link").click()
    await expect(ada.page).to_have_url(f"{stack.url}/d/{doc_id}")
    await expect(ada.page.get_by_text("You were matched on: jazz.")).to_be_visible()
    await ada.page.go_back()
    await expect(trending).to_contain_text("jazz")
    await ada.shot("trending")

    for person in (ada, bo):
        assert person.unexpected_errors() == [], person.errors
    # The refused document's 404 is the one error the browser logs for Cy.
    assert cy.unexpected_errors(r"status of 404") == [], cy.errors


async def test_phone_width(people: People, stack: Stack) -> None:
    """A phone-width screen: nothing is wider than the screen, the editor is usable."""
    pat = await people("pat", viewport={"width": 375, "height": 740}, is_mobile=True)
    fits = "document.documentElement.scrollWidth <= window.innerWidth"
    await pat.page.goto("/")
    await expect(pat.page.get_by_role("button", name="Sign up")).to_be_visible()
    await pat.shot("sign-up")
    assert await pat.page.evaluate(fits)
    await sign_up(pat, unique("pat"))
    await pat.shot("home")
    assert await pat.page.evaluate(fits)
    await search(pat, "rock-climbing, board games")
    await expect(pat.page.locator(".match-status")).to_contain_text("No match yet")
    await pat.shot("searching")
    assert await pat.page.evaluate(fits)
    await pat.page.get_by_role("button", name="Cancel").click()
    await expect(pat.page.locator(".match-status")).to_have_text("Search cancelled.")
    await pat.page.get_by_label("Title", exact=True).fill("On the go")
    await pat.page.get_by_role("button", name="New document").click()
    await expect(pat.page).to_have_url(ROOM)
    await pat.page.locator(".cm-content").click()
    await pat.page.keyboard.type("typed on a phone")
    await pat.saved_version()
    await pat.shot("document")
    assert await pat.page.evaluate(fits)
    assert await pat.text() == "typed on a phone"
    assert pat.unexpected_errors() == [], pat.errors


@pytest.mark.parametrize(
    "stack", [{"collab_enabled": False, "match_rate": 1, "match_period_s": 60}], indirect=True
)
async def test_collab_off_rate_limited_search_and_log_out(people: People, stack: Stack) -> None:
    """With co-editing off the console says so and autosaves over HTTP; a second search within
    the match budget counts down; a document deleted while open says so; logging out returns to
    the login form, and an ended session is said to have ended."""
    kim = await people("kim")
    await sign_up(kim, unique("kim"))
    doc_id = await new_document(kim, "Solo")
    await expect(kim.page.get_by_text("Co-editing is off on this server")).to_be_visible()
    await kim.page.locator(".cm-content").click()
    await kim.page.keyboard.type("saved over http", delay=20)
    version = await kim.saved_version()
    assert await stack.stored(doc_id) == ("saved over http", version)
    await kim.shot("collab-off")

    await kim.page.get_by_role("link", name="← Documents").click()
    await expect(kim.page.get_by_role("list", name="Documents")).to_contain_text("Solo")
    await search(kim, "chess")
    status = kim.page.locator(".match-status")
    await expect(status).to_contain_text("No match yet")
    await kim.page.get_by_role("button", name="Cancel").click()
    await expect(status).to_have_text("Search cancelled.")
    await search(kim, "chess")
    await expect(status).to_have_text(re.compile(r"^Too many searches\. Try again in \d+ s\.$"))
    await expect(kim.page.get_by_role("button", name="Find a partner")).to_be_disabled()
    first = await status.inner_text()
    await kim.page.wait_for_timeout(2100)
    assert await status.inner_text() != first  # it counts down
    await kim.shot("rate-limited")

    # The document is deleted while it is open: the page says so and the editor goes.
    token = await kim.token()
    await kim.page.goto(f"/d/{doc_id}")
    await kim.saved_version()
    r = await stack.http.delete(
        f"/v1/documents/{doc_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 204, r.text
    # The events socket's document.deleted says "deleted."; a status read that meets the 404
    # first says "deleted, or you no longer have access to it." Either may win the race.
    deleted = re.compile(r"^This document was deleted(\.|, or you no longer have access to it\.)$")
    await expect(kim.status).to_have_text(deleted)
    gone = kim.page.get_by_role("alert").filter(has_text=deleted)
    await expect(gone).to_be_visible()
    assert await kim.page.locator(".cm-editor").count() == 0
    await kim.shot("deleted")

    await kim.page.get_by_role("link", name="← Documents").click()
    await kim.page.get_by_role("button", name="Log out").click()
    await expect(kim.page.get_by_label("Username", exact=True)).to_be_visible()
    assert await kim.page.evaluate("() => localStorage.getItem('redline.token')") is None
    await kim.shot("logged-out")
    # A session that ended elsewhere (the old token, logged out): said plainly on the next visit.
    await kim.page.evaluate("t => localStorage.setItem('redline.token', t)", token)
    await kim.page.goto("/")
    await expect(kim.page.get_by_role("alert")).to_have_text("Your session ended. Log in again.")
    await expect(kim.page.get_by_label("Username", exact=True)).to_be_focused()
    await kim.shot("session-ended")
    # The errors the browser logs: the refused /auth/me of the ended session, and the 404 of a
    # status read of the deleted document when that read, not the event, told of it first.
    assert kim.unexpected_errors(r"status of 401", r"status of 404") == [], kim.errors
