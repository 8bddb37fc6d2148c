"""Least squares and periods without a database."""

from __future__ import annotations

from datetime import date

import pytest

from warehouse import trend


def test_least_squares_known_line() -> None:
    # y = 2 + 3x exactly
    assert trend.least_squares([0, 1, 2, 3], [2, 5, 8, 11]) == pytest.approx((2.0, 3.0))
    # (0,1), (1,3), (2,2): mean x 1, mean y 2, Sxy = (-1)(-1) + 0 + (1)(0) = 1, Sxx = 2 -> slope 0.5, intercept 1.5
    assert trend.least_squares([0, 1, 2], [1, 3, 2]) == pytest.approx((1.5, 0.5))


def test_period_end() -> None:
    assert trend.period_end(date(2025, 12, 1), "month") == date(2026, 1, 1)
    assert trend.period_end(date(2025, 1, 6), "week") == date(2025, 1, 13)
