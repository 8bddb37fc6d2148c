"""Per-profile prices and a per-model share rule: ``--pricing profile`` of chargeback, FOCUS, statement.

Why: the default chargeback bills a MIG instance ``slices/total`` of its GPU's price (compute
share). A 1g.20gb on an H100 holds 1 of 7 compute slices but 2 of 8 memory slices, and
finance often lists a price per profile. Rules, per daily instance line (rows of the reader
view ``focus_usage_daily``, :mod:`warehouse.daily_lines`, each UTC day at the prices in force
that day); :class:`Pricer` is the one place they live, and every output that bills by profile
(``report chargeback --pricing profile``, ``report focus --pricing profile``, the statement,
the reader view ``chargeback_profile_lines_daily`` of ``sql/032_profile_pricing_views.sql``)
applies them:

1. instance-hours = allocated GPU-hours / (slices/total): the hours the instance existed.
2. A profile price for (model, profile) wins: charge = instance-hours × that price
   (quantity in ``Instance-Hours``).
3. Otherwise the model's share rule (``gpu_share_rules``; none = ``compute``) prices it:
   charge = instance-hours × share × the GPU-hour price, share = compute slices/total,
   memory slices/8 (4 on 4-slice GPUs, :mod:`warehouse.profiles`) or the larger of the two;
   the quantity is GPU-hours at that share (= the allocated GPU-hours under ``compute``) at
   the GPU-hour price. A profile whose memory share is unknown (model not in the profile
   table) falls back to compute and is counted in the notes.
4. The GPU's own cost is unchanged: Σ GPU-hours × GPU-hour price over every line, unallocated
   slices included, i.e. the default chargeback's total. What the instance charges do not
   cover of it is the ``(not covered)`` line (negative when the rule or the profile prices
   recover more than the GPU costs), so the lines still add up to that total: shown, not lost.
   Lines the daily view does not break down (``unmetered`` capacity) are carried from the
   default chargeback at GPU prices, so the grand total equals the default chargeback's.
5. A profile price in another currency than its GPU's price is refused (never summed).

Quantities are :func:`warehouse.daily_lines.hours` (9 places) and every charge is quantity ×
unit price exactly, so the FOCUS rows and this report add up to the same cents.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

import psycopg
from psycopg.rows import class_row

from migmeter.errors import ConfigError, MigmeterError
from warehouse import daily_lines, profiles, reports
from warehouse.daily_lines import DailyLine
from warehouse.render import Column, Report

__all__ = ["SHARE_RULES", "PRICINGS", "NOT_COVERED", "PROFILE_UNIT", "GPU_UNIT", "ProfilePrice", "ShareRule",
           "LinePrice", "Pricer", "share", "price_lines", "price_lines_with", "carried_lines", "chargeback", "set_profile_price",
           "set_share_rule"]

SHARE_RULES = ("compute", "memory", "max")
# --pricing of chargeback, focus and the statement: gpu = slices/total of the GPU-hour price
# (the default, what chargeback has always billed); profile = the rules above.
PRICINGS = ("gpu", "profile")
NOT_COVERED = "(not covered)"
PROFILE_UNIT = "Instance-Hours"
GPU_UNIT = "GPU-Hours"
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


def share(rule: str, gpu_model: str, profile: str | None, slices: int, total_slices: int,
          memory_shares: Mapping[tuple[str, str], Fraction] | None = None) -> tuple[Fraction, bool]:
    """(share of the GPU's price, whether the rule could be applied as asked) for one instance.

    ``memory_shares``: the warehouse's recorded shares (``profile_memory_shares``); None = the
    profile table of this release (:func:`warehouse.profiles.memory_share`).
    """
    if rule not in SHARE_RULES:
        raise ConfigError(f"share rule {rule[:20]!r} is not one of {', '.join(SHARE_RULES)}")
    compute = profiles.compute_share(slices, total_slices)
    if rule == "compute" or slices >= total_slices:
        return compute, True
    memory = profiles.memory_share(gpu_model, profile or "") if memory_shares is None \
        else memory_shares.get((gpu_model, profile or ""))
    if memory is None:
        return compute, False
    return (memory if rule == "memory" else max(compute, memory)), True


@dataclass(frozen=True, slots=True)
class LinePrice:
    """How one instance line is billed: ``quantity × unit_price``, exactly (rules 1-3)."""

    rule: str  # "profile", or the share rule applied: "compute", "memory", "max"
    quantity: Decimal  # Instance-Hours under a profile price, else GPU-hours at the rule's share
    unit: str
    unit_price: Decimal
    instance_hours: float
    fallback: bool = False  # the rule asked for could not be applied (memory share unknown): compute

    @property
    def cost(self) -> Decimal:
        return self.quantity * self.unit_price


class Pricer:
    """Rules 1-3 and 5 for single daily lines, from the profile prices and share rules in force."""

    def __init__(self, profile_prices: Sequence[ProfilePrice], rules: Sequence[ShareRule],
                 memory_shares: Mapping[tuple[str, str], Fraction] | None = None) -> None:
        self._prices: dict[tuple[str, str], list[ProfilePrice]] = defaultdict(list)
        for p in profile_prices:
            self._prices[(p.gpu_model, p.profile)].append(p)
        self._rules: dict[str, list[ShareRule]] = defaultdict(list)
        for r in rules:
            self._rules[r.gpu_model].append(r)
        self.rules = tuple(rules)
        self._memory = memory_shares

    @classmethod
    def load(cls, conn: psycopg.Connection[Any]) -> Pricer:
        """The prices, rules and recorded memory shares of the warehouse (reader-role tables and views)."""
        with conn.cursor(row_factory=class_row(ProfilePrice)) as cur:
            cur.execute("SELECT gpu_model, profile, price_per_instance_hour, currency, effective_from, effective_to"
                        " FROM gpu_profile_prices")
            profile_prices = cur.fetchall()
        with conn.cursor(row_factory=class_row(ShareRule)) as cur:
            cur.execute("SELECT gpu_model, rule, effective_from, effective_to FROM gpu_share_rules")
            rules = cur.fetchall()
        memory = {(m, p): Fraction(n, total) for m, p, n, total in conn.execute(
            "SELECT gpu_model, profile, memory_slices, memory_slices_total FROM profile_memory_shares")}
        return cls(profile_prices, rules, memory)

    def price(self, d: DailyLine) -> LinePrice | None:
        """The line's price, or None for what no instance pays for (unallocated, no slices, no GPU price)."""
        if d.line == "unallocated" or not d.slices or d.price_per_gpu_hour is None or d.currency is None:
            return None
        day = d.bucket.astimezone(timezone.utc).date()
        instance_hours = d.alloc_gpu_hours * d.total_slices / d.slices  # rule 1
        price = _in_force(self._prices.get((d.gpu_model, d.profile or ""), ()), day)
        if price is not None:  # rule 2
            if price.currency != d.currency:  # rule 5
                raise MigmeterError(f"profile price of {d.gpu_model} {d.profile} is in {price.currency} but the GPU's"
                                    f" price on {day} is in {d.currency}: use one currency per model")
            return LinePrice("profile", daily_lines.hours(instance_hours), PROFILE_UNIT,
                             price.price_per_instance_hour, instance_hours)
        rule = _in_force(self._rules.get(d.gpu_model, ()), day)
        name = rule.rule if rule and d.slices < d.total_slices else "compute"  # a whole GPU pays the whole price
        frac, applied = share(name, d.gpu_model, d.profile, d.slices, d.total_slices, self._memory)  # rule 3
        # GPU-hours at the rule's share = allocated GPU-hours x share / compute share (x 1 under compute)
        factor = frac / profiles.compute_share(min(d.slices, d.total_slices), d.total_slices)
        quantity = daily_lines.hours(Decimal(repr(d.alloc_gpu_hours)) * factor.numerator / factor.denominator)
        return LinePrice(name if applied else "compute", quantity, GPU_UNIT, d.price_per_gpu_hour, instance_hours,
                         not applied)


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
    return price_lines_with(Pricer(profile_prices, rules), lines)


def price_lines_with(
    pricer: Pricer, lines: Iterable[DailyLine]
) -> tuple[dict[tuple[str, str, str], _Line], dict[str, Decimal], list[str]]:
    """:func:`price_lines` with a :class:`Pricer` already loaded."""
    out: dict[tuple[str, str, str], _Line] = defaultdict(_Line)
    gpu_cost: dict[str, Decimal] = defaultdict(Decimal)
    fallback: set[tuple[str, str]] = set()
    for d in lines:
        if d.price_per_gpu_hour is None or d.currency is None:
            continue  # unpriced GPUs: the chargeback report already warns about them
        gpu_cost[d.currency] += daily_lines.hours(d.alloc_gpu_hours) * d.price_per_gpu_hour  # rule 4
        lp = pricer.price(d)
        if lp is None:
            continue
        acc = out[(d.line, d.namespace, d.currency)]
        acc.instance_hours += lp.instance_hours
        acc.alloc_gpu_hours += d.alloc_gpu_hours
        acc.charge += lp.cost
        if lp.rule == "profile":
            acc.by_profile_price += lp.instance_hours
        if lp.fallback:
            fallback.add((d.gpu_model, d.profile or ""))
    notes = [f"note: memory share of {p} on {m} unknown (model not in the profile table): priced by compute share"
             for m, p in sorted(fallback)]
    return dict(out), dict(gpu_cost), notes


def carried_lines(chargeback_lines: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rule 4's carried lines: the default chargeback's lines of a kind the daily view does not break down."""
    return [c for c in chargeback_lines if c["line"] not in daily_lines.BREAKDOWN_LINES
            and (c["alloc_gpu_hours"] or 0) > 0]


def chargeback(conn: psycopg.Connection[Any], month: date, cluster: str | None = None) -> Report:
    """The month's chargeback by namespace under profile prices and share rules, with the ``(not covered)`` line."""
    pricer = Pricer.load(conn)
    totals, gpu_cost, notes = price_lines_with(pricer, daily_lines.fetch(conn, month, cluster))
    carried = carried_lines(reports.chargeback(conn, month, by="namespace", cluster=cluster).as_dicts())
    rows: list[tuple[Any, ...]] = []
    order = {"tenant": 0, "unassigned": 1}
    for (line, ns, currency), t in sorted(totals.items(), key=lambda kv: (order.get(kv[0][0], 2), -kv[1].alloc_gpu_hours,
                                                                          kv[0][1], kv[0][2])):
        rows.append((line, ns, t.instance_hours, t.alloc_gpu_hours, t.by_profile_price, t.charge.quantize(_MONEY),
                     currency))
    charged: dict[str, Decimal] = defaultdict(Decimal)
    for (_, _, currency), t in totals.items():
        charged[currency] += t.charge
    for c in carried:  # rule 4: e.g. (unmetered), at GPU prices as in the default chargeback
        rows.append((c["line"], c["namespace"], None, c["alloc_gpu_hours"], None,
                     None if c["cost_alloc"] is None else Decimal(c["cost_alloc"]).quantize(_MONEY), c["currency"]))
        if c["currency"] is not None and c["cost_alloc"] is not None:
            gpu_cost[c["currency"]] = gpu_cost.get(c["currency"], Decimal(0)) + Decimal(c["cost_alloc"])
            charged[c["currency"]] += Decimal(c["cost_alloc"])
    for currency, cost in sorted(gpu_cost.items()):
        rows.append(("not covered", NOT_COVERED, None, None, None, (cost - charged[currency]).quantize(_MONEY), currency))
        notes.insert(0, f"reconciliation: lines {sum(r[5] for r in rows if r[6] == currency and r[5] is not None):,.2f}"
                        f" {currency} = GPUs' cost (GPU-hours x GPU-hour price) {cost:,.2f} {currency}")
    for r in pricer.rules:
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


def set_share_rule(conn: psycopg.Connection[Any], gpu_model: str, rule: str, effective_from: date) -> int:
    """Insert or replace the share rule of ``gpu_model`` from a UTC day on (idempotent), and record the
    memory shares of the model's profiles (``profile_memory_shares``); returns how many profiles."""
    if rule not in SHARE_RULES:
        raise ConfigError(f"share rule {rule[:20]!r} is not one of {', '.join(SHARE_RULES)}")
    model = gpu_model.strip()
    conn.execute(
        "INSERT INTO share_rules (gpu_model, rule, effective_from) VALUES (%s, %s, %s)"
        " ON CONFLICT (gpu_model, effective_from) DO UPDATE SET rule = EXCLUDED.rule",
        (model, rule, effective_from),
    )
    recorded = 0
    for p in profiles.profiles_for(model):
        memory = profiles.memory_share(model, p.name)
        if memory is None or p.compute_slices >= p.total_compute_slices:
            continue  # a whole-GPU profile always bills the whole price
        conn.execute(
            "INSERT INTO profile_memory_share_records (gpu_model, profile, memory_slices, memory_slices_total)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (gpu_model, profile) DO UPDATE"
            " SET memory_slices = EXCLUDED.memory_slices, memory_slices_total = EXCLUDED.memory_slices_total",
            (model, p.name, memory.numerator * (profiles.memory_slices_total(p.total_compute_slices)
                                                // memory.denominator),
             profiles.memory_slices_total(p.total_compute_slices)),
        )
        recorded += 1
    return recorded
