"""Retention flags, without a database."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from migmeter.errors import ConfigError
from warehouse import retention


@pytest.mark.parametrize(("text", "expected"), [("30d", timedelta(days=30)), ("2y", timedelta(days=730)),
                                                ("8w", timedelta(days=56)), ("12h", timedelta(hours=12)),
                                                ("forever", None), (" FOREVER ", None)])
def test_parse_keep(text: str, expected: timedelta | None) -> None:
    assert retention.parse_keep(text) == expected


@pytest.mark.parametrize("bad", ["30", "0d", "-1d", "30 days", "1m", "30d; DROP TABLE gpus", ""])
def test_bad_keep_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        retention.parse_keep(bad)


def test_unknown_granularity_is_refused_before_any_sql() -> None:
    with pytest.raises(ConfigError):
        retention.plan(None, {"1s": timedelta(days=1)}, now=datetime(2025, 1, 1, tzinfo=timezone.utc))  # type: ignore[arg-type]


def test_every_usage_grain_has_a_default() -> None:
    assert set(retention.DEFAULT_KEEP) == set(retention.HYPERTABLES)
    assert retention.DEFAULT_KEEP["1d"] is None and retention.DEFAULT_KEEP["1m"] == timedelta(days=30)
