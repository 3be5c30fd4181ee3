"""The console in a real browser against a real stack: api, matcher and flusher processes on the
suite's Valkey and Postgres, co-editing on, driven by Playwright through Debian's Chromium
(`/usr/bin/chromium`: Playwright's own browser download does not work here, and is never run).

Outside CI a machine without Chromium or Playwright skips these tests, saying why; with CI=true
they fail instead. Every step's screenshot is saved under .data/test-results/console/.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from deploy.embedded import free_port
from shared.settings import Settings
from tests.conftest import ROOT, Servers, make_settings
from tests.support.ci import cannot_run
from tests.support.processes import http_ready, log_ready, running, settings_env

CHROMIUM = Path("/usr/bin/chromium")
RESULTS = ROOT / ".data" / "test-results" / "console"
PASSWORD = "correct horse battery"
# Bounds for each wait in a browser step: generous for a loaded 2-core machine, never endless.
STEP_MS = 20_000
SAVED = re.compile(r"^Saved \(version (\d+)\)$")

try:
    from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, expect
    from playwright.async_api import async_playwright as _async_playwright

    async_playwright: Any = _async_playwright
    expect.set_options(timeout=STEP_MS)
except ImportError:  # pragma: no cover - the dev group installs it
    async_playwright = None


def _unavailable() -> str | None:
    if async_playwright is None:
        return "playwright is not installed (it is in the dev dependency group: make install)"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (make test installs Debian's chromium when apt is there)"
    return None


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    why = _unavailable()
    if why is not None:
        print(f"the console's browser tests cannot run here: {why}")
        cannot_run(f"the console's browser tests: {why}")
    return CHROMIUM


@dataclass
class Stack:
    url: str
    settings: Settings
    http: httpx.AsyncClient
    db: asyncpg.Connection
    env: dict[str, str]
    logs: Path

    async def stored(self, doc_id: str) -> tuple[str, int]:
        row = await self.db.fetchrow("SELECT content, version FROM documents WHERE id = $1", doc_id)
        assert row is not None, f"document {doc_id} is not in Postgres"
        return row["content"], row["version"]


@pytest.fixture
async def stack(
    migrated: Servers, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    """Co-editing on (as the lead plans by default); a test may override settings with
    `@pytest.mark.parametrize("stack", [{...}], indirect=True)`, and leave the matcher or the
    flusher out (down, as far as the browser can tell) with `"without": ["matcher"]` among
    them; `Stack.env` and `Stack.logs` start one later (tests.support.processes.running)."""
    overrides: dict[str, Any] = dict(getattr(request, "param", {}))
    without = set(overrides.pop("without", ()))
    assert without <= {"matcher", "flusher"}, without
    # allowed_origins is left to its default, the console's own origin: as `make run` serves it.
    settings = make_settings(
        migrated,
        **{
            "api_port": free_port(),
            "matcher_port": free_port(),
            "collab_enabled": True,
            "flush_interval": 2,
            "login_rate": 100_000,
            **overrides,
        },
    )
    assert f"http://127.0.0.1:{settings.api_port}" in settings.allowed_origins
    env = settings_env(settings)
    url = f"http://127.0.0.1:{settings.api_port}"
    matcher = f"http://127.0.0.1:{settings.matcher_port}"
    async with AsyncExitStack() as stack:
        if "flusher" not in without:
            await stack.enter_async_context(
                running("flusher", "services.flusher", env, tmp_path, log_ready("flusher ready"))
            )
        await stack.enter_async_context(
            running("api", "services.api", env, tmp_path, http_ready(f"{url}/readyz"))
        )
        if "matcher" not in without:
            await stack.enter_async_context(
                running(
                    "matcher", "services.matcher", env, tmp_path, http_ready(f"{matcher}/readyz")
                )
            )
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        db = await asyncpg.connect(settings.dsn)
        stack.push_async_callback(db.close)
        yield Stack(url, settings, http, db, env, tmp_path)


@pytest.fixture
async def browser(chromium_path: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        # As root (this machine, CI containers) Chromium's sandbox cannot start.
        b = await pw.chromium.launch(executable_path=str(chromium_path), args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


@dataclass
class Person:
    """One browser context: a person with their own storage (and so their own session)."""

    name: str
    context: BrowserContext
    page: Page
    shots: Shots
    errors: list[str] = field(default_factory=list)

    @property
    def status(self) -> Any:
        return self.page.locator("#save-status")

    async def shot(self, step: str) -> None:
        await self.shots.take(self, step)

    async def text(self) -> str:
        value = await self.page.evaluate("() => window.redline && window.redline.text()")
        assert isinstance(value, str), f"{self.name} has no editor open"
        return value

    async def token(self) -> str:
        value = await self.page.evaluate("() => localStorage.getItem('redline.token')")
        assert isinstance(value, str), f"{self.name} is not signed in"
        return value

    async def saved_version(self) -> int:
        """The N of `Saved (version N)`, once the status reads so (read in the same look as
        the check: the status may move on right after)."""
        handle = await self.page.wait_for_function(
            """() => {
                const m = /^Saved \\(version (\\d+)\\)$/.exec(
                    document.getElementById('save-status')?.textContent ?? '');
                return m ? m[1] : null;  // a string: version 0 must be truthy
            }""",
            timeout=STEP_MS,
        )
        return int(await handle.json_value())

    async def editor_end(self) -> None:
        """Focus the editor with the cursor at the end of the text."""
        await self.page.locator(".cm-content").click()
        await self.page.keyboard.press("Control+End")

    def unexpected_errors(self, *allowed: str) -> list[str]:
        return [e for e in self.errors if not any(re.search(a, e) for a in allowed)]


class Shots:
    def __init__(self, test: str) -> None:
        self.dir = RESULTS
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix = test
        self.n = 0
        for old in self.dir.glob(f"{test}-*.png"):
            old.unlink()

    async def take(self, person: Person, step: str) -> None:
        self.n += 1
        path = self.dir / f"{self.prefix}-{self.n:02d}-{step}-{person.name}.png"
        await person.page.screenshot(path=str(path), full_page=True)


People = Callable[..., Awaitable[Person]]


@pytest.fixture
async def people(
    browser: Browser, stack: Stack, request: pytest.FixtureRequest
) -> AsyncIterator[People]:
    """`await people("ada")`: a new browser context on the console."""
    shots = Shots(request.node.name)
    made: list[Person] = []

    async def make(name: str, **context_options: Any) -> Person:
        context = await browser.new_context(base_url=stack.url, **context_options)
        context.set_default_timeout(STEP_MS)
        page = await context.new_page()
        person = Person(name, context, page, shots)

        def on_console(msg: ConsoleMessage) -> None:
            if msg.type == "error":
                person.errors.append(msg.text)

        page.on("console", on_console)
        page.on("pageerror", lambda exc: person.errors.append(f"page error: {exc}"))
        made.append(person)
        return person

    yield make
    for person in made:
        await person.context.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


async def sign_up(person: Person, username: str) -> None:
    page = person.page
    await page.goto("/")
    await page.get_by_label("Username", exact=True).fill(username)
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="Sign up").click()
    await expect(page.locator("#who")).to_contain_text(f"Signed in as {username}")


async def log_in(person: Person, username: str, password: str = PASSWORD, path: str = "/") -> None:
    page = person.page
    await page.goto(path)
    await page.get_by_label("Username", exact=True).fill(username)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#who")).to_contain_text(f"Signed in as {username}")


async def new_document(person: Person, title: str) -> str:
    page = person.page
    await page.get_by_label("Title", exact=True).fill(title)
    await page.get_by_role("button", name="New document").click()
    await expect(page).to_have_url(re.compile(r"/d/[0-9a-f-]{36}$"))
    await expect(page.get_by_role("heading", name=title)).to_be_visible()
    return page.url.rsplit("/", 1)[1]


async def watch_status(person: Person) -> None:
    """Record every text the status takes, so a short `Saving…` cannot slip between polls."""
    await person.page.evaluate(
        """() => {
            const el = document.getElementById('save-status');
            window.statusLog = [el.textContent];
            new MutationObserver(() => window.statusLog.push(el.textContent))
                .observe(el, {childList: true, characterData: true, subtree: true});
        }"""
    )


async def status_log(person: Person) -> list[str]:
    log: list[str] = await person.page.evaluate("() => window.statusLog")
    return log


async def converged(*persons: Person, within_s: float = 20.0) -> str:
    """The text every editor holds once they all hold the same one (bounded)."""
    deadline = time.monotonic() + within_s
    while True:
        texts = [await p.text() for p in persons]
        if all(t == texts[0] for t in texts):
            return texts[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"editors did not converge within {within_s}s: {texts!r}")
        await persons[0].page.wait_for_timeout(100)


def subsequence(part: str, whole: str) -> bool:
    it = iter(whole)
    return all(ch in it for ch in part)
