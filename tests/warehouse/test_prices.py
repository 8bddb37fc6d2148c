"""Price parsing, without a database (the price-in-force rule is the views', tested in
tests/integration/test_chargeback.py)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from migmeter.errors import ConfigError
from warehouse.prices import parse_currency, parse_day, parse_price


@pytest.mark.parametrize("bad", ["-1", "abc", "NaN", "Infinity", "1e12", ""])
def test_bad_prices_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_price(bad)


def test_price_is_quantized_to_micro_units() -> None:
    assert parse_price("1.234568") == Decimal("1.234568")
    assert parse_price(" 2 ") == Decimal("2.000000")
    assert parse_price("2.50000000000") == Decimal("2.500000")  # trailing zeros lose nothing


@pytest.mark.parametrize("text", ["1e-30", "0.0000001", "1.2345678"])
def test_a_price_the_column_cannot_hold_is_refused_not_rounded(text: str) -> None:
    """numeric(14,6): 1e-30 was stored as 0.000000 (issue 18); any rounding bills something else."""
    with pytest.raises(ConfigError, match="more than 6 decimal places"):
        parse_price(text)


@pytest.mark.parametrize(("text", "expected"), [("usd", "USD"), (" EUR ", "EUR")])
def test_currency_is_normalized(text: str, expected: str) -> None:
    assert parse_currency(text) == expected


@pytest.mark.parametrize("bad", ["US", "USDX", "U$D", "'; drop"])
def test_bad_currency_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_currency(bad)


def test_day_must_be_iso() -> None:
    assert parse_day("2025-11-16") == date(2025, 11, 16)
    with pytest.raises(ConfigError):
        parse_day("16/11/2025")
