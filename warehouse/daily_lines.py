"""The per-instance daily lines both money outputs price: the FOCUS export and profile pricing.

One row per UTC day, GPU instance (or whole GPU), profile and tenant, plus each GPU's
unallocated hours per day, each day at its own GPU-hour price: the reader view
``focus_usage_daily`` (``sql/030_focus_views.sql``) through ``sql/reports/focus.sql``. Kept
apart from :mod:`warehouse.focus` and :mod:`warehouse.profile_pricing` so that each of them
reads the same lines, quantized the same way, without importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import class_row

from warehouse import reports

__all__ = ["QUANTITY_PLACES", "BREAKDOWN_LINES", "DailyLine", "hours", "fetch"]

# 1e-9 GPU-hour = 3.6 µs of a whole GPU: far below any billing unit, far above the float
# noise of a day's sums; the same quantum for every quantity keeps the products exact.
QUANTITY_PLACES = 9
_QUANTUM = Decimal(1).scaleb(-QUANTITY_PLACES)
# The chargeback line kinds focus_usage_daily breaks down per instance; any other kind the
# chargeback report returns (e.g. unmetered capacity) is carried whole by its consumers.
BREAKDOWN_LINES = ("tenant", "unassigned", "unallocated")


@dataclass(frozen=True, slots=True)
class DailyLine:
    """One row of ``sql/reports/focus.sql`` (the view ``focus_usage_daily``)."""

    bucket: datetime
    cluster: str
    gpu_uuid: str
    gpu_model: str
    gi_id: int | None
    profile: str | None
    slices: int | None
    total_slices: int
    line: str
    namespace: str
    pod: str
    container: str
    alloc_gpu_hours: float
    used_gpu_hours: float
    price_per_gpu_hour: Decimal | None
    currency: str | None


def hours(value: float | Decimal) -> Decimal:
    """A quantity of hours as a Decimal of :data:`QUANTITY_PLACES` places (a float through its shortest repr)."""
    return (value if isinstance(value, Decimal) else Decimal(repr(float(value)))).quantize(_QUANTUM)


def fetch(conn: psycopg.Connection[Any], month: date, cluster: str | None = None) -> list[DailyLine]:
    """The month's lines (UTC), optionally of one cluster."""
    start, end = reports.month_range(month)
    with conn.cursor(row_factory=class_row(DailyLine)) as cur:
        cur.execute(reports.load_query("focus"), {"start": start, "end": end, "cluster": cluster})
        return cur.fetchall()
