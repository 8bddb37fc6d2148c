"""FinOps FOCUS 1.2 export of a month's chargeback: one charge per day, GPU instance and tenant.

Why a second view of the same money: FinOps tools (and finance's data lake) read FOCUS, not
our chargeback table. The export must bill exactly what ``migmeter report chargeback`` bills,
so it is built from, and checked against, that report's lines:

1. The per-instance daily lines come from the reader view ``focus_usage_daily``
   (``sql/030_focus_views.sql``, query ``sql/reports/focus.sql``): tenant, unassigned and
   unallocated hours per day, GPU instance, profile and tenant, each day at its own price.
2. The chargeback report of the month (:func:`warehouse.reports.chargeback`) gives the lines
   and totals the export must reproduce. A chargeback line kind the per-instance view does
   not break down (e.g. ``unmetered`` capacity) becomes FOCUS rows of its own, one per line,
   namespace and currency for the whole month (``x_Line`` says which), so it is never lost.
3. Every line kind's GPU-hours must equal the chargeback's (to
   :data:`warehouse.reports.RECONCILE_TOLERANCE_GPU_HOURS`) and the sum of ``BilledCost`` per
   currency must equal the chargeback's total to the cent; otherwise the export is refused
   (:class:`FocusExportError`), never written half right.
4. FOCUS forbids a null ``BilledCost``: usage on a GPU model without a price that day is
   refused with the models and days to price (``migmeter price set``).
5. ``pricing="profile"`` bills as ``report chargeback --pricing profile`` does
   (:class:`warehouse.profile_pricing.Pricer`, the one copy of those rules): an instance with
   a profile price is priced in ``Instance-Hours`` at that price (``SkuId``
   ``instance-hour/MODEL/PROFILE``), the others in GPU-hours at their model's share rule
   (``SkuPriceId`` ``gpu-hour/MODEL/memory-share`` or ``/max-share``; the compute rule is the
   default pricing's row); unallocated slices stay at the GPU-hour price. What that leaves of
   the GPUs' cost is one ``Adjustment`` row per currency for the month (``x_Line`` ``not
   covered``; negative = over-recovered), so Σ ``BilledCost`` is still the chargeback total.

Quantities are hours as ``Decimal`` with :data:`QUANTITY_PLACES` places; every cost is
``PricingQuantity × unit price`` computed exactly, so ``ListCost = ListUnitPrice ×
PricingQuantity`` holds to the last digit, as the spec requires. Rows with no hours to bill
(a fully allocated GPU's 0 h unallocated line) are left out and counted in the notes:
``ConsumedQuantity`` must be positive on usage rows.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TextIO

import psycopg

from migmeter.errors import ConfigError, MigmeterError
from warehouse import daily_lines, profile_pricing, reports
from warehouse.daily_lines import BREAKDOWN_LINES, QUANTITY_PLACES, DailyLine, hours

__all__ = [
    "FOCUS_VERSION",
    "PRICINGS",
    "QUANTITY_PLACES",
    "BREAKDOWN_LINES",
    "FocusExportError",
    "FocusIdentity",
    "FocusColumn",
    "COLUMNS",
    "DailyLine",
    "FocusDataset",
    "build_rows",
    "carried_rows",
    "not_covered_rows",
    "export",
    "csv_text",
    "write_csv",
    "write_parquet",
]

FOCUS_VERSION = "1.2"
PRICINGS = profile_pricing.PRICINGS
_QUANTUM = Decimal(1).scaleb(-QUANTITY_PLACES)
# A carried line's unit price is its cost / hours; 12 places keep the rounding of that
# division below 1e-9 of a cent per GPU-hour.
_PRICE_SCALE = 12
_CARRIED_PRICE_QUANTUM = Decimal(1).scaleb(-_PRICE_SCALE)
# quantity × unit price, exactly: the Parquet decimal type must hold every digit.
_COST_SCALE = QUANTITY_PLACES + _PRICE_SCALE
_CENT = Decimal("0.01")
_UNIT = profile_pricing.GPU_UNIT
_TAG_PREFIX = "migmeter/"


class FocusExportError(MigmeterError):
    """The export cannot be written as valid FOCUS that bills what chargeback bills."""


@dataclass(frozen=True, slots=True)
class FocusIdentity:
    """Who provides and invoices the GPU capacity: the platform team, not a cloud."""

    provider_name: str = "GPU platform"
    publisher_name: str = "GPU platform"
    invoice_issuer_name: str = "GPU platform"
    billing_account_id: str = "gpu-platform"
    billing_account_name: str = "GPU platform"
    service_name: str = "MIG GPU compute"

    def __post_init__(self) -> None:
        for name in ("provider_name", "publisher_name", "invoice_issuer_name", "billing_account_id",
                     "billing_account_name", "service_name"):
            value = getattr(self, name)
            if not value.strip() or len(value) > 200:
                raise ConfigError(f"{name.replace('_', ' ')} must be 1..200 characters")


Kind = Literal["string", "decimal", "datetime", "int", "json"]


@dataclass(frozen=True, slots=True)
class FocusColumn:
    name: str
    kind: Kind
    scale: int = 0  # decimal places of a decimal column (its Parquet type)


# FOCUS columns first, then custom x_ columns (the spec's column-ordering rule).
COLUMNS: tuple[FocusColumn, ...] = (
    FocusColumn("BilledCost", "decimal", _COST_SCALE),
    FocusColumn("BillingAccountId", "string"),
    FocusColumn("BillingAccountName", "string"),
    FocusColumn("BillingCurrency", "string"),
    FocusColumn("BillingPeriodEnd", "datetime"),
    FocusColumn("BillingPeriodStart", "datetime"),
    FocusColumn("ChargeCategory", "string"),
    FocusColumn("ChargeClass", "string"),
    FocusColumn("ChargeDescription", "string"),
    FocusColumn("ChargeFrequency", "string"),
    FocusColumn("ChargePeriodEnd", "datetime"),
    FocusColumn("ChargePeriodStart", "datetime"),
    FocusColumn("ConsumedQuantity", "decimal", QUANTITY_PLACES),
    FocusColumn("ConsumedUnit", "string"),
    FocusColumn("ContractedCost", "decimal", _COST_SCALE),
    FocusColumn("ContractedUnitPrice", "decimal", _PRICE_SCALE),
    FocusColumn("EffectiveCost", "decimal", _COST_SCALE),
    FocusColumn("InvoiceIssuerName", "string"),
    FocusColumn("ListCost", "decimal", _COST_SCALE),
    FocusColumn("ListUnitPrice", "decimal", _PRICE_SCALE),
    FocusColumn("PricingQuantity", "decimal", QUANTITY_PLACES),
    FocusColumn("PricingUnit", "string"),
    FocusColumn("ProviderName", "string"),
    FocusColumn("PublisherName", "string"),
    FocusColumn("ResourceId", "string"),
    FocusColumn("ResourceName", "string"),
    FocusColumn("ResourceType", "string"),
    FocusColumn("ServiceCategory", "string"),
    FocusColumn("ServiceName", "string"),
    FocusColumn("SkuId", "string"),
    FocusColumn("SkuMeter", "string"),
    FocusColumn("SkuPriceId", "string"),
    FocusColumn("SubAccountId", "string"),
    FocusColumn("SubAccountName", "string"),
    FocusColumn("Tags", "json"),
    FocusColumn("x_Line", "string"),
    FocusColumn("x_Cluster", "string"),
    FocusColumn("x_Namespace", "string"),
    FocusColumn("x_Pod", "string"),
    FocusColumn("x_GpuUuid", "string"),
    FocusColumn("x_GpuModel", "string"),
    FocusColumn("x_GpuInstanceId", "int"),
    FocusColumn("x_Profile", "string"),
    FocusColumn("x_Slices", "int"),
    FocusColumn("x_TotalSlices", "int"),
    FocusColumn("x_UsedGpuHours", "decimal", QUANTITY_PLACES),
    FocusColumn("x_UsedCost", "decimal", _COST_SCALE),
)
_NAMES = tuple(c.name for c in COLUMNS)


@dataclass(frozen=True, slots=True)
class FocusDataset:
    """The export's rows (dicts keyed by :data:`COLUMNS` names, in that order) and notes for people."""

    month: date
    rows: tuple[dict[str, Any], ...]
    notes: tuple[str, ...]

    def billed_total(self) -> dict[str, Decimal]:
        """Σ BilledCost per currency."""
        totals: dict[str, Decimal] = defaultdict(Decimal)
        for r in self.rows:
            totals[r["BillingCurrency"]] += r["BilledCost"]
        return dict(totals)


def _tags(cluster: str, line: str, namespace: str | None, pod: str | None, container: str | None) -> str:
    tags = {f"{_TAG_PREFIX}cluster": cluster, f"{_TAG_PREFIX}line": line}
    if line == "tenant":
        for key, value in (("namespace", namespace), ("pod", pod), ("container", container)):
            if value:
                tags[f"{_TAG_PREFIX}{key}"] = value
    return json.dumps(tags, sort_keys=True, ensure_ascii=False)


def _resource(d: DailyLine) -> tuple[str, str, str]:
    """(ResourceId, ResourceName, ResourceType) of a per-instance line."""
    gpu = f"migmeter://{d.cluster}/{d.gpu_uuid}"
    if d.line == "unallocated":
        return gpu, f"{d.gpu_model} {d.gpu_uuid}", "GPU"
    if d.gi_id is None or d.gi_id < 0:
        return gpu, f"{d.gpu_model} {d.gpu_uuid}", "GPU"
    return f"{gpu}/gi/{d.gi_id}", f"{d.profile} GI {d.gi_id} on {d.gpu_model} {d.gpu_uuid}", "MIG GPU instance"


def _description(d: DailyLine) -> str:
    if d.line == "unallocated":
        return f"Unallocated MIG slices of {d.gpu_model} {d.gpu_uuid}"
    what = f"{d.profile} MIG instance ({d.slices}/{d.total_slices} of the GPU)" if d.gi_id is not None and d.gi_id >= 0 \
        else "whole GPU (no MIG)"
    who = "nobody (unassigned)" if d.line == "unassigned" else f"{d.namespace}/{d.pod}"
    return f"{what} on {d.gpu_model}, allocated to {who}"


def _common(identity: FocusIdentity, month: date, currency: str) -> dict[str, Any]:
    start, end = reports.month_range(month)
    return {
        "BillingAccountId": identity.billing_account_id,
        "BillingAccountName": identity.billing_account_name,
        "BillingCurrency": currency,
        "BillingPeriodEnd": end,
        "BillingPeriodStart": start,
        "ChargeCategory": "Usage",
        "ChargeClass": None,
        "ChargeFrequency": "Usage-Based",
        "ConsumedUnit": _UNIT,
        "InvoiceIssuerName": identity.invoice_issuer_name,
        "PricingUnit": _UNIT,
        "ProviderName": identity.provider_name,
        "PublisherName": identity.publisher_name,
        "ServiceCategory": "Compute",
        "ServiceName": identity.service_name,
    }


def _priced(row: dict[str, Any], quantity: Decimal, unit_price: Decimal, used: Decimal,
            consumed: Decimal | None = None) -> dict[str, Any]:
    """Costs = quantity x unit price; ``consumed`` (GPU-hours) when the pricing quantity is not in GPU-hours."""
    cost = quantity * unit_price
    used_cost = used * unit_price if consumed is None else \
        (cost * used / consumed).quantize(Decimal(1).scaleb(-_COST_SCALE))  # the used share of the charge
    row.update({
        "BilledCost": cost, "ContractedCost": cost, "EffectiveCost": cost, "ListCost": cost,
        "ConsumedQuantity": quantity if consumed is None else consumed, "PricingQuantity": quantity,
        "ContractedUnitPrice": unit_price, "ListUnitPrice": unit_price,
        "x_UsedGpuHours": used, "x_UsedCost": used_cost,
    })
    return {name: row.get(name) for name in _NAMES}


def _profile_priced(row: dict[str, Any], d: DailyLine, lp: profile_pricing.LinePrice, quantity: Decimal,
                    used: Decimal) -> dict[str, Any]:
    """Step 5: an instance line at its profile price or its model's share rule."""
    if lp.rule == "profile":
        sku = f"instance-hour/{d.gpu_model}/{d.profile}"
        row.update({"SkuId": sku, "SkuPriceId": sku, "SkuMeter": "MIG instance", "PricingUnit": lp.unit})
    elif lp.rule != "compute":
        row["SkuPriceId"] = f"gpu-hour/{d.gpu_model}/{lp.rule}-share"
    if lp.rule == "compute":  # the default pricing's row, to the digit
        return _priced(row, lp.quantity, lp.unit_price, used)
    return _priced(row, lp.quantity, lp.unit_price, used, consumed=quantity)


def build_rows(lines: Iterable[DailyLine], month: date, identity: FocusIdentity,
               pricer: profile_pricing.Pricer | None = None) -> tuple[list[dict[str, Any]], int]:
    """FOCUS rows of the per-instance daily lines, and how many had no hours to bill (left out).

    Pure: the caller has already refused unpriced lines. ``pricer``: step 5 (None = GPU prices).
    """
    out: list[dict[str, Any]] = []
    empty = 0
    for d in lines:
        if d.price_per_gpu_hour is None or d.currency is None:
            raise FocusExportError(f"line of {d.gpu_model} on {d.bucket:%Y-%m-%d} has no price")
        quantity = hours(d.alloc_gpu_hours)
        if quantity <= 0:
            if quantity < -_QUANTUM * 1000:
                raise FocusExportError(f"{d.line} line of {d.gpu_uuid} on {d.bucket:%Y-%m-%d} has negative hours"
                                       f" ({d.alloc_gpu_hours}): the warehouse does not reconcile")
            empty += 1
            continue
        resource_id, resource_name, resource_type = _resource(d)
        row = _common(identity, month, d.currency)
        day_start = d.bucket.astimezone(timezone.utc)
        sku = f"gpu-hour/{d.gpu_model}"
        tenant = d.line == "tenant"
        row.update({
            "ChargeDescription": _description(d),
            "ChargePeriodStart": day_start,
            "ChargePeriodEnd": day_start + timedelta(days=1),
            "ResourceId": resource_id, "ResourceName": resource_name, "ResourceType": resource_type,
            "SkuId": sku, "SkuPriceId": sku, "SkuMeter": "GPU allocation",
            "SubAccountId": d.cluster, "SubAccountName": d.cluster,
            "Tags": _tags(d.cluster, d.line, d.namespace, d.pod, d.container),
            "x_Line": d.line, "x_Cluster": d.cluster,
            "x_Namespace": d.namespace if tenant else None, "x_Pod": d.pod if tenant else None,
            "x_GpuUuid": d.gpu_uuid, "x_GpuModel": d.gpu_model,
            "x_GpuInstanceId": d.gi_id, "x_Profile": d.profile, "x_Slices": d.slices, "x_TotalSlices": d.total_slices,
        })
        lp = pricer.price(d) if pricer is not None else None
        if lp is not None:
            out.append(_profile_priced(row, d, lp, quantity, hours(d.used_gpu_hours)))
        else:
            out.append(_priced(row, quantity, d.price_per_gpu_hour, hours(d.used_gpu_hours)))
    return out, empty


def carried_rows(chargeback_lines: Sequence[dict[str, Any]], month: date, identity: FocusIdentity) -> list[dict[str, Any]]:
    """Month-grain FOCUS rows for chargeback lines of a kind not in :data:`BREAKDOWN_LINES`.

    ``chargeback_lines`` are the chargeback report's rows by namespace (``as_dicts()``).
    """
    start, end = reports.month_range(month)
    out: list[dict[str, Any]] = []
    for c in chargeback_lines:
        if c["line"] in BREAKDOWN_LINES:
            continue
        quantity = hours(c["alloc_gpu_hours"] or 0.0)
        if quantity <= 0:
            continue
        if c["currency"] is None or c["cost_alloc"] is None:
            raise FocusExportError(f"chargeback line {c['line']!r} ({quantity} GPU-hours) has no price")
        unit_price = (Decimal(c["cost_alloc"]) / quantity).quantize(_CARRIED_PRICE_QUANTUM)
        row = _common(identity, month, c["currency"])
        sku = f"gpu-hour/({c['line']})"
        row.update({
            "ChargeDescription": f"{c['line']} GPU capacity, {c['namespace']} (whole month, not per instance)",
            "ChargePeriodStart": start, "ChargePeriodEnd": end,
            "SkuId": sku, "SkuPriceId": sku, "SkuMeter": "GPU allocation",
            "Tags": json.dumps({f"{_TAG_PREFIX}line": c["line"]}),
            "x_Line": c["line"],
        })
        out.append(_priced(row, quantity, unit_price, hours(c["used_gpu_hours"] or 0.0)))
    return out


def not_covered_rows(rows: Sequence[dict[str, Any]], lines: Iterable[DailyLine], month: date,
                     identity: FocusIdentity) -> list[dict[str, Any]]:
    """Step 5's ``Adjustment`` rows: per currency, the GPUs' cost (Σ GPU-hours x GPU-hour price of
    ``lines``) minus what the per-instance and unallocated ``rows`` bill; none where that is 0."""
    gpu_cost: dict[str, Decimal] = defaultdict(Decimal)
    for d in lines:
        if d.price_per_gpu_hour is not None and d.currency is not None:
            gpu_cost[d.currency] += hours(d.alloc_gpu_hours) * d.price_per_gpu_hour
    for r in rows:
        if r["x_Line"] in BREAKDOWN_LINES:
            gpu_cost[r["BillingCurrency"]] -= r["BilledCost"]
    start, end = reports.month_range(month)
    out = []
    for currency, rest in sorted(gpu_cost.items()):
        if rest == 0:
            continue
        row = _common(identity, month, currency)
        row.update({
            "ChargeCategory": "Adjustment",  # chargecategory.md: charges that fit no other category
            "ChargeDescription": "Share of the GPUs' cost that profile prices and share rules leave uncovered"
                                 " (negative: recovered more than the GPUs cost)",
            "ChargePeriodStart": start, "ChargePeriodEnd": end,
            "ConsumedUnit": None, "PricingUnit": None,  # not usage: no quantity (consumedquantity.md)
            "BilledCost": rest, "ContractedCost": rest, "EffectiveCost": rest, "ListCost": rest,
            "Tags": json.dumps({f"{_TAG_PREFIX}line": "not covered"}),
            "x_Line": "not covered",
        })
        out.append({name: row.get(name) for name in _NAMES})
    return out


def _refuse_unpriced(lines: Sequence[DailyLine]) -> None:
    missing: dict[str, set[date]] = defaultdict(set)
    for d in lines:
        if d.currency is None and d.alloc_gpu_hours > 0:
            missing[d.gpu_model].add(d.bucket.astimezone(timezone.utc).date())
    if missing:
        what = "; ".join(f"{m!r} on {min(days)}..{max(days)} ({len(days)} days)" for m, days in sorted(missing.items()))
        raise FocusExportError(
            f"FOCUS needs a BilledCost on every row, but these GPU models have usage and no price: {what}."
            " Set prices with `migmeter price set MODEL PRICE --from YYYY-MM-DD`."
        )


def _reconcile(rows: Sequence[dict[str, Any]], chargeback_lines: Sequence[dict[str, Any]]) -> list[str]:
    """Step 3: hours per line kind and cost per currency must match the chargeback report."""
    hours: dict[str, Decimal] = defaultdict(Decimal)
    cost: dict[str, Decimal] = defaultdict(Decimal)
    for r in rows:
        if r["ConsumedQuantity"] is not None:  # the not-covered adjustment has no hours
            hours[r["x_Line"]] += r["ConsumedQuantity"]
        cost[r["BillingCurrency"]] += r["BilledCost"]
    want_hours: dict[str, float] = defaultdict(float)
    want_cost: dict[str, Decimal] = defaultdict(Decimal)
    for c in chargeback_lines:
        want_hours[c["line"]] += float(c["alloc_gpu_hours"] or 0.0)
        if c["currency"] is not None:
            want_cost[c["currency"]] += Decimal(c["cost_alloc"])
    # Each row's hours are rounded to QUANTITY_PLACES: allow that per row on top of float noise.
    slack = reports.RECONCILE_TOLERANCE_GPU_HOURS + float(_QUANTUM) * (len(rows) + 1)
    for line in sorted(set(hours) | set(want_hours)):
        if abs(float(hours[line]) - want_hours[line]) > slack:
            raise FocusExportError(f"FOCUS rows hold {hours[line]} GPU-hours of line {line!r}, the chargeback"
                                   f" report {want_hours[line]:.9f}: refusing to export numbers that disagree")
    notes = []
    for currency in sorted(set(cost) | set(want_cost)):
        got, want = cost[currency].quantize(_CENT), want_cost[currency].quantize(_CENT)
        if abs(cost[currency] - want_cost[currency]) >= Decimal("0.005"):
            raise FocusExportError(f"Σ BilledCost {got} {currency} differs from the chargeback total {want} {currency}")
        notes.append(f"Σ BilledCost {got} {currency} = chargeback total {want} {currency}")
    return notes


def export(
    conn: psycopg.Connection[Any], month: date, identity: FocusIdentity | None = None, cluster: str | None = None,
    pricing: str = "gpu",
) -> FocusDataset:
    """The FOCUS dataset of one UTC month, checked against the chargeback report (steps 1-5 above)."""
    if pricing not in PRICINGS:
        raise ConfigError(f"pricing {pricing[:20]!r} is not one of {', '.join(PRICINGS)}")
    identity = identity or FocusIdentity()
    lines = daily_lines.fetch(conn, month, cluster)
    _refuse_unpriced(lines)
    chargeback = reports.chargeback(conn, month, by="namespace", cluster=cluster).as_dicts()
    pricer = profile_pricing.Pricer.load(conn) if pricing == "profile" else None
    priced = [d for d in lines if d.currency is not None]
    rows, empty = build_rows(priced, month, identity, pricer)
    if pricer is not None:
        rows += not_covered_rows(rows, priced, month, identity)
    rows += carried_rows(chargeback, month, identity)
    notes = _reconcile(rows, chargeback)
    if empty:
        notes.append(f"{empty} daily lines with no hours to bill left out (FOCUS needs a positive ConsumedQuantity)")
    rows.sort(key=lambda r: (r["ChargePeriodStart"], r["x_Line"] or "", r["ResourceId"] or "", r["x_Namespace"] or "",
                             r["x_Pod"] or "", r["x_Profile"] or ""))
    return FocusDataset(month, tuple(rows), tuple(notes))


def _text(value: Any, kind: Kind) -> str:
    if value is None:
        return ""
    if kind == "decimal":
        return format(value, "f")
    if kind == "datetime":
        return str(value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    text = str(value)
    # A cell starting with = + - @ is a formula to spreadsheet programs (CSV injection); FOCUS
    # string columns we fill from collector labels get a leading quote, like render_csv's.
    if kind == "string" and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def write_csv(dataset: FocusDataset, out: TextIO) -> None:
    """RFC 4180 CSV, header = FOCUS column IDs; decimals in full, times as ``YYYY-MM-DDTHH:MM:SSZ``, null = empty."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_NAMES)
    for row in dataset.rows:
        writer.writerow([_text(row[c.name], c.kind) for c in COLUMNS])


def csv_text(dataset: FocusDataset) -> str:
    buf = io.StringIO()
    write_csv(dataset, buf)
    return buf.getvalue()


def write_parquet(dataset: FocusDataset, path: Path) -> Path:
    """Parquet with typed columns (decimal128, UTC timestamps); needs the ``parquet`` extra (pyarrow)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("Parquet output needs pyarrow: pip install 'migmeter[parquet]' (or use --format csv)") from None

    def arrow_type(c: FocusColumn) -> Any:
        if c.kind == "decimal":
            return pa.decimal128(38, c.scale)
        if c.kind == "datetime":
            return pa.timestamp("ms", tz="UTC")  # Parquet has no second unit
        if c.kind == "int":
            return pa.int32()
        return pa.string()

    schema = pa.schema([pa.field(c.name, arrow_type(c), nullable=True) for c in COLUMNS],
                       metadata={"FocusVersion": FOCUS_VERSION, "DataGenerator": "migmeter"})
    columns = []
    for c in COLUMNS:
        values = [r[c.name] for r in dataset.rows]
        if c.kind == "decimal":
            values = [None if v is None else v.quantize(Decimal(1).scaleb(-c.scale)) for v in values]
        columns.append(pa.array(values, type=arrow_type(c)))
    table = pa.Table.from_arrays(columns, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path
