"""Right-sizing: the smallest MIG profile each tenant workload's month would have fitted in.

Why: an instance sized for a peak it never reaches bills idle slices every hour. Rules, per
workload (namespace, pod, GPU model, profile) of a UTC month (``sql/reports/rightsize.sql``):

1. Utilization is the distribution of the workload's 1-minute rows: p50, p95 and max of the
   minutes (not an average of daily averages); minutes without a reading are not counted.
2. Fewer than :data:`MIN_UTIL_MINUTES` minutes with a reading = too little data: no
   recommendation, and the reason says so.
3. The compute it needs is p95 × its slices (utilization is relative to the instance: a
   saturated 1g reads 1.0); the memory it needs is its framebuffer high-water mark, when the
   source reports one (else compute only, and the reason says so).
4. Candidates are the plain ``Ng.XXgb`` profiles the GPU model offers (the profile table,
   :mod:`warehouse.profiles`; never a profile the model lacks; a model not in the table gets
   no recommendation). The smallest (compute slices, then memory) that holds the need × (1 +
   headroom) wins, ``headroom_ok`` = true. If none does, the smallest that holds the bare need
   wins with ``headroom_ok`` = false; if none holds even that, no recommendation.
5. Money saved per month = the month's cost by allocation × (current − recommended slices) /
   current slices, at the month's own prices; negative when the workload needs a larger profile.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import class_row

from migmeter.errors import ConfigError
from warehouse import profiles, reports
from warehouse.render import Column, Report

__all__ = ["MIN_UTIL_MINUTES", "DEFAULT_HEADROOM", "Workload", "Recommendation", "recommend", "rightsize"]

# An hour of minutes: less than that says nothing about a month's peaks.
MIN_UTIL_MINUTES = 60
# 20 % above p95 and peak memory: room for a busier week without an OOM or a saturated instance.
DEFAULT_HEADROOM = 0.2
_PLAIN_PROFILE = re.compile(r"^\d+g\.\d+gb$")
_MIB_PER_GB = 1024  # profile names are in (binary) GB; the driver keeps a little for itself, headroom covers it


@dataclass(frozen=True, slots=True)
class Workload:
    """One row of ``sql/reports/rightsize.sql``."""

    namespace: str
    pod: str
    gpu_model: str
    profile: str
    slices: int
    total_slices: int
    gpus: int
    instance_hours: float
    util_minutes: int
    p50_util_pct: float | None
    p95_util_pct: float | None
    max_util_pct: float | None
    peak_fb_mib: float | None
    cost: Decimal | None
    currency: str | None


@dataclass(frozen=True, slots=True)
class Recommendation:
    profile: str | None
    slices: int | None
    headroom_ok: bool | None
    reason: str


def recommend(w: Workload, headroom: float = DEFAULT_HEADROOM, min_minutes: int = MIN_UTIL_MINUTES) -> Recommendation:
    """Rules 2-4 for one workload (pure)."""
    if w.util_minutes < min_minutes or w.p95_util_pct is None:
        return Recommendation(None, None, None, f"too little data: {w.util_minutes} minutes with utilization"
                                                f" (needs {min_minutes})")
    candidates = sorted((p for p in profiles.profiles_for(w.gpu_model) if _PLAIN_PROFILE.match(p.name)),
                        key=lambda p: (p.compute_slices, p.memory_gb))
    if not candidates:
        return Recommendation(None, None, None, f"GPU model {w.gpu_model!r} is not in the MIG profile table")
    need_slices = w.p95_util_pct / 100.0 * w.slices
    need_mib = w.peak_fb_mib

    def fits(p: profiles.Profile, factor: float) -> bool:
        memory_ok = need_mib is None or p.memory_gb * _MIB_PER_GB >= need_mib * factor
        return p.compute_slices >= need_slices * factor - 1e-9 and memory_ok

    memory_note = "" if need_mib is not None else "; memory not reported: sized on compute only"
    for factor, ok in ((1.0 + headroom, True), (1.0, False)):
        for p in candidates:
            if fits(p, factor):
                verdict = "keep" if p.compute_slices == w.slices else \
                    "smaller" if p.compute_slices < w.slices else "larger (saturated)"
                how = f"with {headroom:.0%} headroom" if ok else "WITHOUT headroom (no profile leaves any)"
                return Recommendation(p.name, p.compute_slices, ok, f"{verdict}: p95 needs {need_slices:.2f} slices"
                                      f" {how}{memory_note}")
    return Recommendation(None, None, False, "needs more than the largest profile of the model")


def _saving(w: Workload, rec: Recommendation) -> Decimal | None:
    if w.cost is None or rec.slices is None or not w.slices:
        return None
    return (w.cost * (w.slices - rec.slices) / w.slices).quantize(Decimal("0.000001"))


def rightsize(
    conn: psycopg.Connection[Any], month: date, cluster: str | None = None, headroom: float = DEFAULT_HEADROOM
) -> Report:
    """One row per workload of the month with its distribution, recommendation and saving (rules 1-5)."""
    if not (0.0 <= headroom <= 1.0):
        raise ConfigError(f"--headroom {headroom} outside 0..1 (0.2 = 20 %)")
    start, end = reports.month_range(month)
    with conn.cursor(row_factory=class_row(Workload)) as cur:
        cur.execute(reports.load_query("rightsize"), {"start": start, "end": end, "cluster": cluster})
        workloads: Sequence[Workload] = cur.fetchall()
    rows = []
    savings: dict[str, Decimal] = {}
    for w in workloads:
        rec = recommend(w, headroom)
        saving = _saving(w, rec)
        if saving is not None and saving > 0 and w.currency:
            savings[w.currency] = savings.get(w.currency, Decimal(0)) + saving
        rows.append((w.namespace, w.pod, w.gpu_model, w.profile, w.gpus, w.instance_hours, w.util_minutes,
                     w.p50_util_pct, w.p95_util_pct, w.max_util_pct, w.peak_fb_mib, rec.profile, rec.headroom_ok,
                     w.cost, saving, w.currency, rec.reason))
    columns = (Column("namespace"), Column("pod"), Column("gpu_model"), Column("profile"), Column("gpus", "int"),
               Column("instance_hours", "hours"), Column("util_minutes", "int"), Column("p50_util_pct", "pct"),
               Column("p95_util_pct", "pct"), Column("max_util_pct", "pct"), Column("peak_fb_mib", "int"),
               Column("recommended"), Column("headroom_ok"), Column("cost", "money"),
               Column("saving_per_month", "money"), Column("currency"), Column("reason"))
    notes = [f"possible saving {v:,.2f} {c} per month (workloads that would fit a smaller profile)"
             for c, v in sorted(savings.items())]
    notes.append(f"p50/p95/max over the 1-minute rows; recommended = smallest profile of the model holding p95 compute"
                 f" and peak memory with {headroom:.0%} headroom")
    where = f" cluster {cluster}" if cluster else " all clusters"
    return Report(f"Right-sizing {month:%Y-%m} (UTC),{where}", columns, tuple(rows), tuple(notes))
