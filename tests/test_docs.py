"""The README's settings table is the reference users read: it must name every setting."""

from __future__ import annotations

import re
from pathlib import Path

from shared.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [n for n in Settings.model_fields if f"`REDLINE_{n.upper()}`" not in README]
    assert missing == [], f"add these to the README's settings table: {missing}"


def test_the_readme_names_no_setting_that_does_not_exist() -> None:
    named = set(re.findall(r"`REDLINE_([A-Z0-9_]+)`", README))
    # Read by the test suite and `make run`, not by the services' Settings.
    outside = {
        "TEST_REDIS_URL",
        "TEST_DATABASE_URL",
        "EMBEDDED_REDIS_PORT",
        "EMBEDDED_POSTGRES_PORT",
    }
    unknown = sorted(n for n in named - outside if n.lower() not in Settings.model_fields)
    assert unknown == [], f"the README names settings that do not exist: {unknown}"
