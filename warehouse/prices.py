"""GPU-hour prices for chargeback: one price per GPU model, effective from a date (UTC).

Why a dated table rather than a single number: finance changes prices, and a change in the
middle of a month must split that month. The BI views join every *daily* usage bucket to
the price in force on that bucket's UTC day, so a report for the month is the sum of days
at their own price, never one monthly price applied to the whole month.

A MIG slice costs its share of its GPU's price: an instance of ``slices`` compute slices on
a GPU of ``total_slices`` is charged ``slices/total_slices`` of the GPU-hour price per hour.
That share is already in the warehouse's GPU-hours (they are Σ w·dt), so the price applies
to GPU-hours directly (a 1g instance of a 7-slice GPU at 3.50 per GPU-hour costs 0.50 per hour).

``gpu_model`` must equal the model string the collectors report (``gpus.gpu_model``, e.g.
``NVIDIA A100-SXM4-80GB``): matching by substring would silently price an H100 NVL as an
H100 SXM. ``migmeter price list`` shows models that have usage but no price.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation

import psycopg
from psycopg.rows import class_row

from migmeter.errors import ConfigError

__all__ = [
    "DEFAULT_CURRENCY",
    "Price",
    "parse_price",
    "parse_currency",
    "parse_day",
    "set_price",
    "delete_price",
    "list_prices",
    "unpriced_models",
]

DEFAULT_CURRENCY = "USD"
# numeric(14, 6) in the table: sub-cent prices per GPU-hour exist (spot, internal rates),
# and nobody prices a GPU-hour above 10^8.
_MAX_PRICE = Decimal("99999999.999999")
_PRICE_DECIMALS = 6  # the scale of numeric(14, 6)
_PRICE_STEP = Decimal(1).scaleb(-_PRICE_DECIMALS)
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_MAX_MODEL_LEN = 256


@dataclass(frozen=True, slots=True)
class Price:
    """One row of ``prices``: from ``effective_from`` (a UTC day) on, a GPU-hour of this model costs this."""

    gpu_model: str
    price_per_gpu_hour: Decimal
    currency: str
    effective_from: date


def parse_price(text: str | Decimal | float) -> Decimal:
    """A non-negative, finite decimal price; a ConfigError names what is wrong."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise ConfigError(f"price {str(text)[:40]!r} is not a number") from None
    if not value.is_finite():
        raise ConfigError(f"price {str(text)[:40]!r} is not finite")
    if value < 0:
        raise ConfigError(f"price {str(text)[:40]!r} is negative")
    if value > _MAX_PRICE:
        raise ConfigError(f"price {str(text)[:40]!r} is above {_MAX_PRICE} per GPU-hour")
    stored = value.quantize(_PRICE_STEP)
    if stored != value:
        # Rounding silently (1e-30 stored as 0.000000) would bill something other than what was set.
        raise ConfigError(f"price {str(text)[:40]!r} has more than {_PRICE_DECIMALS} decimal "
                          f"places; the warehouse stores multiples of {_PRICE_STEP} (it would be {stored})")
    return stored


def parse_currency(text: str) -> str:
    """An ISO-4217-shaped code (three letters), upper-cased."""
    code = text.strip().upper()
    if not _CURRENCY_RE.match(code):
        raise ConfigError(f"currency {text[:20]!r} is not a three-letter code such as USD or EUR")
    return code


def parse_day(text: str) -> date:
    """A YYYY-MM-DD day (prices change at UTC midnight)."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{text[:40]!r} is not a date (YYYY-MM-DD)") from None


def _check_model(model: str) -> str:
    model = model.strip()
    if not model or len(model) > _MAX_MODEL_LEN:
        raise ConfigError(f"GPU model must be 1..{_MAX_MODEL_LEN} characters")
    return model


def set_price(conn: psycopg.Connection[object], price: Price) -> None:
    """Insert or replace the price of ``price.gpu_model`` from ``price.effective_from`` on.

    Setting the same (model, day) again replaces it, so the command is idempotent.
    """
    model = _check_model(price.gpu_model)
    amount = parse_price(price.price_per_gpu_hour)
    currency = parse_currency(price.currency)
    conn.execute(
        """
        INSERT INTO prices (gpu_model, price_per_gpu_hour, currency, effective_from)
        VALUES (%s, %s, %s, %s)
        ON CONFLICT (gpu_model, effective_from)
        DO UPDATE SET price_per_gpu_hour = EXCLUDED.price_per_gpu_hour, currency = EXCLUDED.currency
        """,
        (model, amount, currency, price.effective_from),
    )


def delete_price(conn: psycopg.Connection[object], gpu_model: str, effective_from: date) -> bool:
    """Remove one dated price (a typo); True when a row was deleted."""
    cur = conn.execute(
        "DELETE FROM prices WHERE gpu_model = %s AND effective_from = %s",
        (_check_model(gpu_model), effective_from),
    )
    return cur.rowcount > 0


def list_prices(conn: psycopg.Connection[object], gpu_model: str | None = None) -> list[Price]:
    """All prices (or one model's), by model then date; reads the view, so a BI login can list them."""
    with conn.cursor(row_factory=class_row(Price)) as cur:
        if gpu_model is None:
            cur.execute(
                "SELECT gpu_model, price_per_gpu_hour, currency, effective_from FROM gpu_prices "
                "ORDER BY gpu_model, effective_from"
            )
        else:
            cur.execute(
                "SELECT gpu_model, price_per_gpu_hour, currency, effective_from FROM gpu_prices "
                "WHERE gpu_model = %s ORDER BY effective_from",
                (gpu_model,),
            )
        return cur.fetchall()


def unpriced_models(conn: psycopg.Connection[object]) -> list[str]:
    """GPU models with daily usage but no price at all (their cost reads as empty); views only."""
    rows = conn.execute(
        "SELECT DISTINCT u.gpu_model FROM gpu_usage_hours_1d u "
        "WHERE NOT EXISTS (SELECT 1 FROM gpu_prices p WHERE p.gpu_model = u.gpu_model) ORDER BY 1"
    ).fetchall()
    return [str(r[0]) for r in rows]  # type: ignore[index]
