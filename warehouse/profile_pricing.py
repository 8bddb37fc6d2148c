"""Chargeback with per-profile prices and a per-model share rule (``report chargeback --pricing profile``).

Why: the default chargeback bills a MIG instance ``slices/total`` of its GPU's price (compute
share). A 1g.20gb on an H100 holds 1 of 7 compute slices but 2 of 8 memory slices, and
finance often lists a price per profile. Rules, per daily instance line (rows of the reader
view ``focus_usage_daily``, each UTC day at the prices in force that day):

1. instance-hours = allocated GPU-hours / (slices/total): the hours the instance existed.
2. A profile price for (model, profile) wins: charge = instance-hours × that price.
3. Otherwise the model's share rule (``gpu_share_rules``; none = ``compute``) prices it:
   charge = instance-hours × share × the GPU-hour price, share = compute slices/total,
   memory slices/8 (4 on 4-slice GPUs, :mod:`warehouse.profiles`) or the larger of the two.
   A profile whose memory share is unknown (model not in the profile table) falls back to
   compute and is counted in the notes.
4. The GPU's own cost is unchanged: Σ GPU-hours × GPU-hour price over every line, unallocated
   slices included, i.e. the default chargeback's total. What the instance charges do not
   cover of it is the ``(not covered)`` line (negative when the rule or the profile prices
   recover more than the GPU costs), so the lines still add up to that total: shown, not lost.
5. A profile price in another currency than its GPU's price is refused (never summed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

import psycopg
from psycopg.rows import class_row

from migmeter.errors import ConfigError, MigmeterError
from warehouse import profiles, reports
from warehouse.focus import DailyLine
from warehouse.render import Column, Report

__all__ = ["SHARE_RULES", "NOT_COVERED", "ProfilePrice", "ShareRule", "share", "price_lines", "chargeback",
           "set_profile_price", "set_share_rule"]

SHARE_RULES = ("compute", "memory", "max")
NOT_COVERED = "(not covered)"
_MONEY = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class ProfilePrice:
    gpu_model: str
    profile: str
    price_per_instance_hour: Decimal
    currency: str
    effective_from: date
    effective_to: date | None


@dataclass(frozen=True, slots=True)
class ShareRule:
    gpu_model: str
    rule: str
    effective_from: date
    effective_to: date | None


def _in_force(rows: Sequence[Any], day: date) -> Any | None:
    for r in rows:
        if r.effective_from <= day and (r.effective_to is None or day < r.effective_to):
            return r
    return None


def share(rule: str, gpu_model: str, profile: str | None, slices: int, total_slices: int) -> tuple[Fraction, bool]:
    """(share of the GPU's price, whether the rule could be applied as asked) for one instance."""
    if rule not in SHARE_RULES:
        raise ConfigError(f"share rule {rule[:20]!r} is not one of {', '.join(SHARE_RULES)}")
    compute = profiles.compute_share(slices, total_slices)
    if rule == "compute" or slices >= total_slices:
        return compute, True
    memory = profiles.memory_share(gpu_model, profile or "")
    if memory is None:
        return compute, False
    return (memory if rule == "memory" else max(compute, memory)), True


@dataclass
class _Line:
    instance_hours: float = 0.0
    alloc_gpu_hours: float = 0.0
    charge: Decimal = Decimal(0)
    by_profile_price: float = 0.0


def price_lines(
    lines: Iterable[DailyLine], profile_prices: Sequence[ProfilePrice], rules: Sequence[ShareRule]
) -> tuple[dict[tuple[str, str, str], _Line], dict[str, Decimal], list[str]]:
    """Rules 1-5 over priced daily lines: per (line, namespace, currency) totals, the GPUs' cost per currency, notes."""
    pp: dict[tuple[str, str], list[ProfilePrice]] = defaultdict(list)
    for p in profile_prices:
        pp[(p.gpu_model, p.profile)].append(p)
    rr: dict[str, list[ShareRule]] = defaultdict(list)
    for r in rules:
        rr[r.gpu_model].append(r)
    out: dict[tuple[str, str, str], _Line] = defaultdict(_Line)
    gpu_cost: dict[str, Decimal] = defaultdict(Decimal)
    fallback: set[tuple[str, str]] = set()
    for d in lines:
        if d.price_per_gpu_hour is None or d.currency is None:
            continue  # unpriced GPUs: the chargeback report already warns about them
        day = d.bucket.astimezone(timezone.utc).date()
        hours = Decimal(repr(d.alloc_gpu_hours))
        gpu_cost[d.currency] += hours * d.price_per_gpu_hour  # rule 4
        if d.line == "unallocated" or not d.slices:
            continue
        instance_hours = d.alloc_gpu_hours * d.total_slices / d.slices  # rule 1
        acc = out[(d.line, d.namespace, d.currency)]
        acc.instance_hours += instance_hours
        acc.alloc_gpu_hours += d.alloc_gpu_hours
        price = _in_force(pp.get((d.gpu_model, d.profile or ""), ()), day)
        if price is not None:  # rule 2
            if price.currency != d.currency:
                raise MigmeterError(f"profile price of {d.gpu_model} {d.profile} is in {price.currency} but the GPU's"
                                    f" price on {day} is in {d.currency}: use one currency per model")
            acc.charge += Decimal(repr(instance_hours)) * price.price_per_instance_hour
            acc.by_profile_price += instance_hours
            continue
        rule = _in_force(rr.get(d.gpu_model, ()), day)
        frac, applied = share(rule.rule if rule else "compute", d.gpu_model, d.profile, d.slices, d.total_slices)
        if not applied:
            fallback.add((d.gpu_model, d.profile or ""))
        acc.charge += Decimal(repr(instance_hours)) * d.price_per_gpu_hour * frac.numerator / frac.denominator
    notes = [f"note: memory share of {p} on {m} unknown (model not in the profile table): priced by compute share"
             for m, p in sorted(fallback)]
    return dict(out), dict(gpu_cost), notes


def chargeback(conn: psycopg.Connection[Any], month: date, cluster: str | None = None) -> Report:
    """The month's chargeback by namespace under profile prices and share rules, with the ``(not covered)`` line."""
    start, end = reports.month_range(month)
    with conn.cursor(row_factory=class_row(DailyLine)) as cur:
        cur.execute(reports.load_query("focus"), {"start": start, "end": end, "cluster": cluster})  # type: ignore[arg-type]
        lines = cur.fetchall()
    with conn.cursor(row_factory=class_row(ProfilePrice)) as cur:
        cur.execute("SELECT gpu_model, profile, price_per_instance_hour, currency, effective_from, effective_to"
                    " FROM gpu_profile_prices")
        profile_prices = cur.fetchall()
    with conn.cursor(row_factory=class_row(ShareRule)) as cur:
        cur.execute("SELECT gpu_model, rule, effective_from, effective_to FROM gpu_share_rules")
        rules = cur.fetchall()
    totals, gpu_cost, notes = price_lines(lines, profile_prices, rules)
    rows: list[tuple[Any, ...]] = []
    order = {"tenant": 0, "unassigned": 1}
    for (line, ns, currency), t in sorted(totals.items(), key=lambda kv: (order.get(kv[0][0], 2), -kv[1].alloc_gpu_hours,
                                                                          kv[0][1], kv[0][2])):
        rows.append((line, ns, t.instance_hours, t.alloc_gpu_hours, t.by_profile_price, t.charge.quantize(_MONEY),
                     currency))
    charged: dict[str, Decimal] = defaultdict(Decimal)
    for (_, _, currency), t in totals.items():
        charged[currency] += t.charge
    for currency, cost in sorted(gpu_cost.items()):
        rows.append(("not covered", NOT_COVERED, None, None, None, (cost - charged[currency]).quantize(_MONEY), currency))
        notes.insert(0, f"reconciliation: lines {sum(r[5] for r in rows if r[6] == currency):,.2f} {currency}"
                        f" = GPUs' cost (GPU-hours x GPU-hour price) {cost:,.2f} {currency}")
    for r in rules:
        notes.append(f"share rule of {r.gpu_model} from {r.effective_from}: {r.rule}")
    notes.append("instances without a profile price share their GPU's price by the model's rule (default compute);"
                 " (not covered) = what the instance charges leave of the GPUs' cost (negative = over-recovered)")
    columns = (Column("line"), Column("namespace"), Column("instance_hours", "hours"), Column("alloc_gpu_hours", "hours"),
               Column("profile_priced_hours", "hours"), Column("cost", "money"), Column("currency"))
    where = f" cluster {cluster}" if cluster else " all clusters"
    return Report(f"Chargeback {month:%Y-%m} (UTC) by namespace, profile prices and share rules,{where}", columns,
                  tuple(rows), tuple(notes))


def set_profile_price(conn: psycopg.Connection[Any], gpu_model: str, profile: str, price: Decimal, currency: str,
                      effective_from: date) -> None:
    """Insert or replace one instance-hour price of ``profile`` on ``gpu_model`` from a UTC day on (idempotent)."""
    model, name = gpu_model.strip(), profile.strip()
    if not model or not name or len(name) > 64:
        raise ConfigError("GPU model and profile must not be empty (profile at most 64 characters)")
    if profiles.profiles_for(model) and profiles.find_profile(model, name) is None:
        offered = ", ".join(p.name for p in profiles.profiles_for(model))
        raise ConfigError(f"{model} does not offer profile {name!r} (it offers: {offered})")
    conn.execute(
        "INSERT INTO profile_prices (gpu_model, profile, price_per_instance_hour, currency, effective_from)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (gpu_model, profile, effective_from) DO UPDATE"
        " SET price_per_instance_hour = EXCLUDED.price_per_instance_hour, currency = EXCLUDED.currency",
        (model, name, price, currency, effective_from),
    )


def set_share_rule(conn: psycopg.Connection[Any], gpu_model: str, rule: str, effective_from: date) -> None:
    """Insert or replace the share rule of ``gpu_model`` from a UTC day on (idempotent)."""
    if rule not in SHARE_RULES:
        raise ConfigError(f"share rule {rule[:20]!r} is not one of {', '.join(SHARE_RULES)}")
    conn.execute(
        "INSERT INTO share_rules (gpu_model, rule, effective_from) VALUES (%s, %s, %s)"
        " ON CONFLICT (gpu_model, effective_from) DO UPDATE SET rule = EXCLUDED.rule",
        (gpu_model.strip(), rule, effective_from),
    )
