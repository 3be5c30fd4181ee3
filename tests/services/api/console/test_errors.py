"""What a person is told when things go wrong while a document is open with co-editing on (the
default), and what the keyboard alone can do: a document deleted under them, a session ended
elsewhere, too many login attempts (a countdown), and the whole round of creating, writing and
searching without a mouse."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Locator, expect

from tests.services.api.console.conftest import (
    PASSWORD,
    People,
    Person,
    Stack,
    new_document,
    sign_up,
    unique,
)

DOC = re.compile(r"/d/([0-9a-f-]{36})$")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_document_deleted_while_open_says_so(people: People, stack: Stack) -> None:
    """Deleted by someone else while open: the collab socket's 1008, the events socket's
    document.deleted and a status read's 404 all tell of it; whichever comes first, the page
    says so in words, the editor goes, and nothing reconnects."""
    ada = await people("ada")
    await sign_up(ada, unique("ada"))
    doc_id = await new_document(ada, "Doomed")
    await ada.editor_end()
    await ada.page.keyboard.type("soon gone", delay=20)
    await ada.saved_version()
    r = await stack.http.delete(f"/v1/documents/{doc_id}", headers=bearer(await ada.token()))
    assert r.status_code == 204, r.text
    deleted = re.compile(r"^This document was deleted(\.|, or you no longer have access to it\.)$")
    await expect(ada.status).to_have_text(deleted)
    await expect(ada.page.get_by_role("alert").filter(has_text=deleted)).to_be_visible()
    assert await ada.page.locator(".cm-editor").count() == 0
    # Nobody is "in" a document that is gone.
    await expect(ada.page.get_by_text("In this document:")).to_be_hidden()
    await ada.shot("deleted")
    # It stays said: no reconnect brings an editor back, no later message replaces it.
    await ada.page.wait_for_timeout(3000)
    await expect(ada.status).to_have_text(deleted)
    assert await ada.page.locator(".cm-editor").count() == 0
    await ada.page.get_by_role("link", name="← Documents").click()
    docs = ada.page.get_by_role("list", name="Documents")
    await expect(docs).to_contain_text("No documents yet")
    assert ada.unexpected_errors(r"status of 404") == [], ada.errors


async def test_a_session_ended_elsewhere_while_a_document_is_open(
    people: People, stack: Stack
) -> None:
    """Logged out from another device while the document is open: the page says the session
    ended and asks to log in, on the same address; logging in brings the document back."""
    bo = await people("bo")
    # The editor's text at the first `Saved` of each page: `Saved` over an editor that has not
    # received the document yet would be a lie.
    await bo.context.add_init_script(
        """window.firstSaved = null;
        new MutationObserver(() => {
            const el = document.getElementById('save-status');
            if (window.firstSaved === null && el && el.textContent.startsWith('Saved')
                && window.redline) window.firstSaved = window.redline.text();
        }).observe(document, {subtree: true, childList: true, characterData: true});"""
    )
    bo_name = unique("bo")
    await sign_up(bo, bo_name)
    doc_id = await new_document(bo, "Kept")
    await bo.editor_end()
    await bo.page.keyboard.type("still here", delay=20)
    await bo.saved_version()
    r = await stack.http.post("/v1/auth/logout", headers=bearer(await bo.token()))
    assert r.status_code == 204, r.text
    await expect(bo.page.get_by_role("alert").filter(has_text="Your session ended")).to_have_text(
        "Your session ended. Log in again."
    )
    await expect(bo.page.get_by_label("Username", exact=True)).to_be_visible()
    assert await bo.page.locator(".cm-editor").count() == 0
    await expect(bo.page).to_have_url(f"{stack.url}/d/{doc_id}")
    await bo.shot("session-ended")
    await bo.page.evaluate("() => { window.firstSaved = null }")
    await bo.page.get_by_label("Username", exact=True).fill(bo_name)
    await bo.page.get_by_label("Password", exact=True).fill(PASSWORD)
    await bo.page.get_by_role("button", name="Log in").click()
    await expect(bo.page.get_by_role("heading", name="Kept")).to_be_visible()
    await expect(bo.status).to_have_text(re.compile(r"^Saved \(version \d+\)$"))
    assert await bo.text() == "still here"
    assert await bo.page.evaluate("() => window.firstSaved") == "still here"
    # A fresh load of the document's address, the same.
    await bo.page.reload()
    await expect(bo.status).to_have_text(re.compile(r"^Saved \(version \d+\)$"))
    assert await bo.page.evaluate("() => window.firstSaved") == "still here"
    await bo.shot("logged-in-again")
    # The ended session's sockets and reads are refused (401 for a read that raced the close).
    assert bo.unexpected_errors(r"status of 401") == [], bo.errors


@pytest.mark.parametrize(
    "stack",
    [{"login_pair_failures": 2, "login_period_s": 6, "create_rate": 1, "create_period_s": 6}],
    indirect=True,
)
async def test_too_many_attempts_count_down(people: People, stack: Stack) -> None:
    """Wrong passwords past the budget: the form says how long to wait, counts down with both
    buttons disabled, then lets the person try again, and the right password logs in. Documents
    created past their budget count down the same way, `New document` disabled meanwhile."""
    cy = await people("cy")
    cy_name = unique("cy")
    r = await stack.http.post("/v1/auth/signup", json={"username": cy_name, "password": PASSWORD})
    assert r.status_code in (200, 201), r.text
    page = cy.page
    await page.goto("/")
    log_in = page.get_by_role("button", name="Log in")
    sign_up_button = page.get_by_role("button", name="Sign up")
    alert = page.get_by_role("alert").filter(has_text=re.compile("."))
    await page.get_by_label("Username", exact=True).fill(cy_name)
    await page.get_by_label("Password", exact=True).fill("wrong password")
    limited = re.compile(r"^Too many attempts\. Try again in (\d+) s\.$")
    for _ in range(6):
        await log_in.click()
        await expect(alert).to_have_text(re.compile(r"^(Wrong username or password\.|Too many.*)$"))
        if limited.match(await alert.inner_text()):
            break
    await expect(alert).to_have_text(limited)
    await expect(log_in).to_be_disabled()
    await expect(sign_up_button).to_be_disabled()
    await cy.shot("rate-limited")
    first = await alert.inner_text()
    await page.wait_for_timeout(1100)
    second = await alert.inner_text()
    assert second != first and limited.match(second), (first, second)
    await expect(log_in).to_be_enabled(timeout=10_000)
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await log_in.click()
    await expect(page.locator("#who")).to_contain_text(f"Signed in as {cy_name}")

    await new_document(cy, "First")
    await page.get_by_role("link", name="← Documents").click()
    await page.get_by_label("Title", exact=True).fill("Second")
    create = page.get_by_role("button", name="New document")
    await create.click()
    too_many = re.compile(r"^You created many documents just now\. Try again in \d+ s\.$")
    await expect(page.get_by_role("alert").filter(has_text="created many")).to_have_text(too_many)
    await expect(create).to_be_disabled()
    await cy.shot("create-limited")
    await expect(create).to_be_enabled(timeout=10_000)
    await create.click()
    await expect(page.get_by_role("heading", name="Second")).to_be_visible()
    assert cy.unexpected_errors(r"status of 401", r"status of 429") == [], cy.errors


async def tab_to(person: Person, target: Locator, most: int) -> int:
    """Press Tab until `target` has focus, at most `most` times; how many it took."""
    for n in range(1, most + 1):
        await person.page.keyboard.press("Tab")
        if await target.evaluate("el => el.contains(document.activeElement)"):
            return n
    raise AssertionError(f"{most} Tabs did not reach {target}")


async def test_the_keyboard_alone_creates_writes_and_searches(people: People, stack: Stack) -> None:
    """Keyboard only: create a document, write in it, go back, see it listed with when it was
    last saved, and start a search. Focus lands at the top of each new view, so the content is
    the next Tab away rather than behind the header again."""
    dee = await people("dee")
    await sign_up(dee, unique("dee"))
    page = dee.page
    title = page.get_by_label("Title", exact=True)
    await tab_to(dee, title, 8)
    await page.keyboard.type("Typed by keys")
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(DOC)
    await expect(page.get_by_role("heading", name="Typed by keys")).to_be_visible()
    # The view's first control is the way back, the editor next.
    assert await tab_to(dee, page.locator(".cm-content"), 2) == 2
    await page.keyboard.type("no mouse needed")
    version = await dee.saved_version()
    await dee.shot("document")
    assert await dee.text() == "no mouse needed"
    await page.keyboard.press("Shift+Tab")
    await expect(page.get_by_role("link", name="← Documents")).to_be_focused()
    await page.keyboard.press("Enter")
    docs = page.get_by_role("list", name="Documents")
    item = docs.get_by_role("listitem").filter(has_text="Typed by keys")
    await expect(item).to_contain_text(f"(version {version})")
    await expect(item).to_contain_text(re.compile(r"Last saved .*\d"))
    href = await item.get_by_role("link").get_attribute("href")
    listed = re.fullmatch(r"/d/([0-9a-f-]{36})", href or "")
    assert listed is not None, href
    assert (await stack.stored(listed.group(1)))[1] == version
    interests = page.get_by_label("Interests", exact=True)
    await tab_to(dee, interests, 12)
    await page.keyboard.type("origami")
    await page.keyboard.press("Enter")
    await expect(page.locator(".match-status")).to_contain_text("No match yet")
    cancel = page.get_by_role("button", name="Cancel")
    await tab_to(dee, cancel, 6)
    await page.keyboard.press("Enter")
    await expect(page.locator(".match-status")).to_have_text("Search cancelled.")
    await dee.shot("searched")
    assert dee.unexpected_errors() == [], dee.errors


@pytest.mark.parametrize("stack", [{"without": ["matcher"]}], indirect=True)
async def test_with_the_matcher_down(people: People, stack: Stack) -> None:
    """The matcher (events and matching) is down, the api up: a search says the matcher cannot
    be reached; the status still reaches the version Postgres holds (polled); the collab socket
    alone tells of a deletion, and of a session that ended, in the same words as ever."""
    eve = await people("eve")
    await sign_up(eve, unique("eve"))
    page = eve.page
    await page.get_by_label("Interests", exact=True).fill("knitting")
    await page.get_by_role("button", name="Find a partner").click()
    await expect(page.locator(".match-status")).to_have_text(
        "The matcher refused the connection or cannot be reached. Try again in a moment."
    )
    await expect(page.get_by_role("button", name="Find a partner")).to_be_enabled()
    await expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    await eve.shot("matcher-down")

    doc_id = await new_document(eve, "Polled")
    await eve.editor_end()
    await page.keyboard.type("polled status", delay=20)
    version = await eve.saved_version()
    assert await stack.stored(doc_id) == ("polled status", version)
    r = await stack.http.delete(f"/v1/documents/{doc_id}", headers=bearer(await eve.token()))
    assert r.status_code == 204, r.text
    deleted = re.compile(r"^This document was deleted(\.|, or you no longer have access to it\.)$")
    await expect(eve.status).to_have_text(deleted)
    assert await page.locator(".cm-editor").count() == 0
    await eve.shot("deleted")

    await page.get_by_role("link", name="← Documents").click()
    await new_document(eve, "Open at logout")
    await eve.saved_version()
    r = await stack.http.post("/v1/auth/logout", headers=bearer(await eve.token()))
    assert r.status_code == 204, r.text
    await expect(page.get_by_role("alert").filter(has_text="session")).to_have_text(
        "Your session ended. Log in again."
    )
    await expect(page.get_by_label("Username", exact=True)).to_be_visible()
    await eve.shot("session-ended")
    assert (
        eve.unexpected_errors(
            r"WebSocket connection to .*/v1/ws/(events|match).* failed",
            r"status of 404",
            r"status of 401",
        )
        == []
    ), eve.errors
