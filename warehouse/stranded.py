"""Stranded capacity: unallocated MIG slices that the profile tenants ask for could not use.

Why: "12 % of the fleet is unallocated" reads as room for 12 % more work, but a free slice
hosts only a profile that may start there. Rules, per GPU model and cluster over a UTC month:

1. The most requested profile is the one with the most instance-hours of that model and
   cluster in the month (``sql/reports/profile_demand.sql``).
2. Per GPU and hour (``sql/reports/stranded.sql``), as many instances of the most requested
   profile are placed in the free slices as fit at its allowed starts, beside the instances
   present that hour where they really sat when every one of them has a ``placement_start``
   in the layout history (:func:`warehouse.placement.placed`: the split is EXACT), else placed
   as well as MIG allows (:func:`warehouse.placement.best_fit`: an ESTIMATE, best case). Each
   row says which (``exact``, ``estimated`` or ``partly estimated``) and how many of its
   unallocated slice-hours were split by estimate.
3. Of the hour's unallocated slice-hours, the share those instances would fill (their compute
   slices over the free compute slices, at most 1) is *hostable*; the rest is *stranded* by
   fragmentation. An hour whose layout leaves no free compute slice although the GPU had
   unallocated time (a layout change inside the hour) counts as stranded.
4. Cost = slice-hours / total slices × the day's GPU-hour price (NULL without a price).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import class_row

from warehouse import placement, reports
from warehouse.render import Column, Report

__all__ = ["ESTIMATE_NOTE", "FreeHour", "split_hour", "stranded"]

ESTIMATE_NOTE = ("estimated where the source gives no placement_start (dcgm-exporter, Prometheus), or an instance"
                 " moved within the hour (a reconfiguration): the best valid placement of the instances present is"
                 " assumed, so stranded slices are those no placement could have used; exact where every instance's"
                 " placement_start is known and fixed for the hour (NVML, the simulator)")


@dataclass(frozen=True, slots=True)
class FreeHour:
    """One row of ``sql/reports/stranded.sql``."""

    bucket: datetime
    cluster: str
    gpu_uuid: str
    gpu_model: str
    total_slices: int
    unallocated_slice_hours: float
    profiles: list[str]
    slices: list[int]
    starts: list[int | None]
    price_per_gpu_hour: Decimal | None
    currency: str | None


def split_hour(h: FreeHour, target_profile: str | None, target_slices: int | None) -> tuple[float, float, bool]:
    """(hostable, stranded) slice-hours of one GPU-hour and whether the real placement decided it (rules 2, 3)."""
    free_compute = h.total_slices - sum(h.slices)
    starts = [s for s in h.starts if s is not None]
    occupied = placement.placed(h.gpu_model, h.total_slices, list(zip(h.profiles, h.slices, starts))) \
        if len(starts) == len(h.starts) else None
    if target_profile is None or not target_slices or free_compute <= 0:
        return 0.0, h.unallocated_slice_hours, occupied is not None
    if occupied is not None:
        n = placement.fits(h.gpu_model, h.total_slices, occupied, target_profile, target_slices)
    else:
        n = placement.best_fit(h.gpu_model, h.total_slices, list(zip(h.profiles, h.slices)), target_profile,
                               target_slices)
    hostable = h.unallocated_slice_hours * min(1.0, n * target_slices / free_compute)
    return hostable, h.unallocated_slice_hours - hostable, occupied is not None


@dataclass
class _Group:
    gpus: set[str] = field(default_factory=set)
    unallocated: float = 0.0
    hostable: float = 0.0
    stranded: float = 0.0
    estimated: float = 0.0  # unallocated slice-hours split by estimate
    cost_unallocated: Decimal = Decimal(0)
    cost_stranded: Decimal = Decimal(0)
    currencies: set[str] = field(default_factory=set)
    unpriced: bool = False


def _placement_label(g: _Group) -> str:
    if g.estimated <= 0:
        return "exact"
    return "estimated" if g.estimated >= g.unallocated else "partly estimated"


def stranded(conn: psycopg.Connection[Any], month: date, cluster: str | None = None) -> Report:
    """One row per (cluster, GPU model) with unallocated, hostable and stranded slice-hours and their cost."""
    start, end = reports.month_range(month)
    params = {"start": start, "end": end, "cluster": cluster}
    demand: dict[tuple[str, str], tuple[str, int]] = {}
    for c, model, profile, slices, _hours in conn.execute(reports.load_query("profile_demand"), params):
        demand.setdefault((c, model), (profile, int(slices)))  # rows come most instance-hours first
    with conn.cursor(row_factory=class_row(FreeHour)) as cur:
        cur.execute(reports.load_query("stranded"), params)
        hours = cur.fetchall()
    groups: dict[tuple[str, str], _Group] = defaultdict(_Group)
    for h in hours:
        target = demand.get((h.cluster, h.gpu_model), (None, None))
        hostable, strand, exact = split_hour(h, *target)
        g = groups[(h.cluster, h.gpu_model)]
        if not exact:
            g.estimated += h.unallocated_slice_hours
        g.gpus.add(h.gpu_uuid)
        g.unallocated += h.unallocated_slice_hours
        g.hostable += hostable
        g.stranded += strand
        if h.price_per_gpu_hour is None or h.currency is None:
            g.unpriced = True
            continue
        per_slice_hour = h.price_per_gpu_hour / h.total_slices
        g.cost_unallocated += Decimal(repr(h.unallocated_slice_hours)) * per_slice_hour
        g.cost_stranded += Decimal(repr(strand)) * per_slice_hour
        g.currencies.add(h.currency)
    rows = []
    for (c, model), g in sorted(groups.items(), key=lambda kv: (-kv[1].stranded, kv[0])):
        priced = not g.unpriced and len(g.currencies) == 1
        rows.append((c, model, len(g.gpus), demand[(c, model)][0] if (c, model) in demand else None, g.unallocated, g.hostable, g.stranded,
                     100.0 * g.stranded / g.unallocated if g.unallocated else None,
                     g.cost_unallocated.quantize(Decimal("0.000001")) if priced else None,
                     g.cost_stranded.quantize(Decimal("0.000001")) if priced else None,
                     min(g.currencies) if priced else None, g.estimated, _placement_label(g)))
    columns = (Column("cluster"), Column("gpu_model"), Column("gpus", "int"), Column("most_requested_profile"),
               Column("unallocated_slice_hours", "hours"), Column("hostable_slice_hours", "hours"),
               Column("stranded_slice_hours", "hours"), Column("stranded_pct", "pct"),
               Column("unallocated_cost", "money"), Column("stranded_cost", "money"), Column("currency"),
               Column("estimated_slice_hours", "hours"), Column("placement"))
    notes = ((f"split {ESTIMATE_NOTE}",) if any(g.estimated > 0 for g in groups.values()) else
             ("split exact: every instance's placement_start is known",)) + (
             "hostable = free slices the most requested profile (most instance-hours) could have used at its allowed"
             " starts; stranded = the rest (fragmentation); cost '-' = unpriced days or more than one currency",)
    where = f" cluster {cluster}" if cluster else " all clusters"
    return Report(f"Stranded MIG capacity {month:%Y-%m} (UTC),{where}", columns, tuple(rows), notes)
