"""Price parsing and the price-in-force rule, without a database."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from migmeter.errors import ConfigError
from warehouse.prices import Price, parse_currency, parse_day, parse_price, price_at, slice_cost

A100 = "NVIDIA A100-SXM4-80GB"
PRICES = [
    Price(A100, Decimal("2.00"), "USD", date(2025, 11, 1)),
    Price(A100, Decimal("3.00"), "USD", date(2025, 11, 16)),
    Price("A30", Decimal("1.00"), "USD", date(2025, 1, 1)),
]


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2025, 10, 31), None),  # before the first price: unpriced, not priced at the next one
        (date(2025, 11, 1), Decimal("2.00")),  # effective_from is inclusive
        (date(2025, 11, 15), Decimal("2.00")),
        (date(2025, 11, 16), Decimal("3.00")),  # the change day already has the new price
        (date(2026, 5, 1), Decimal("3.00")),  # the latest price stays in force
    ],
)
def test_price_in_force_on_a_day(day: date, expected: Decimal | None) -> None:
    p = price_at(PRICES, A100, day)
    assert (p.price_per_gpu_hour if p else None) == expected


def test_model_must_match_exactly() -> None:
    # An "A100" price must not price an "NVIDIA A100-SXM4-80GB" by substring.
    assert price_at(PRICES, "A100", date(2025, 12, 1)) is None


@pytest.mark.parametrize(("slices", "total", "expected"), [(1, 7, "0.5"), (7, 7, "3.5"), (1, 4, "0.875"), (2, 4, "1.75")])
def test_a_slice_costs_its_share_of_the_gpu(slices: int, total: int, expected: str) -> None:
    # 3.5 per GPU-hour for one hour: a 1g on a 7-slice GPU costs 0.5, on an A30 (4 slices) 0.875.
    assert slice_cost(Decimal("3.5"), slices, total, 3600) == Decimal(expected)


def test_slice_cost_refuses_impossible_slices() -> None:
    with pytest.raises(ConfigError):
        slice_cost(Decimal(1), 5, 4, 3600)


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
