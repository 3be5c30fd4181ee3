"""Settings refuse what the services could not honour: intervals arq's cron cannot express."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.settings import Settings

CRON_FIELDS = ("flush_interval", "warm_interval_s", "presence_sweep_s")


@pytest.mark.parametrize("name", CRON_FIELDS)
@pytest.mark.parametrize("seconds", [7, 90, 3601])
def test_a_cron_interval_must_divide_a_minute_or_an_hour(name: str, seconds: int) -> None:
    # 7 s would sweep at :00, :07 ... :56 and then after 4 s; 90 s would run every minute.
    with pytest.raises(ValidationError, match=f"{name} must divide 60 seconds"):
        Settings.model_validate({name: seconds})


@pytest.mark.parametrize("name", CRON_FIELDS)
@pytest.mark.parametrize("seconds", [1, 5, 30, 60, 120, 3600])
def test_intervals_arq_can_express_are_kept(name: str, seconds: int) -> None:
    assert getattr(Settings.model_validate({name: seconds}), name) == seconds
