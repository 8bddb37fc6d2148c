"""MIG-weighted PromQL: generate a Prometheus rules file (recording + alerting) as YAML text.

Why this exists: ``avg(DCGM_FI_PROF_GR_ENGINE_ACTIVE)`` treats a 1g and a 7g instance alike, and
the usual fix (weights by profile name, ``label_replace(vector(0), ...)``) breaks on real profile
names and is not even valid PromQL. Here weights come from a metric instead: the migmeter
collector's ``/metrics`` exports the live layout, and the rules join DCGM's per-instance
utilization to it.

Join contract (the collector must export exactly these; the rules rely on nothing else):

* ``migmeter_instance_slices{UUID, GPU_I_ID, GPU_I_PROFILE, gpu, modelName, Hostname}`` =
  compute slices of one GPU instance. A GPU without MIG: one series with ``GPU_I_ID=""`` (i.e. the
  label absent or empty) and value = its total slices (weight 1).
* ``migmeter_gpu_total_slices{UUID, gpu, modelName, Hostname}`` = 7 (A100/H100/H200/B200) or 4 (A30).

The join key is ``(UUID, GPU_I_ID)`` and only that: ``UUID`` is the parent GPU's on an instance
row and ``GPU_I_ID`` repeats across GPUs, so the pair is the instance. ``Hostname`` is never joined
on (on Kubernetes it is the exporter pod's name and changes when the pod restarts);
``GPU_I_PROFILE``, ``gpu``, ``modelName``, ``Hostname`` are informational only. Per-GPU results are
keyed by ``UUID`` alone. A consequence worth knowing: the GPU-level row that old exporters emit for
a MIG GPU (no ``GPU_I_ID``) finds no weight (the layout has no ``GPU_I_ID=""`` instance on a MIG
GPU) and drops out, so it is never counted twice.

Staleness: every rule reads instant vectors, so an instance that disappears (MIG layout change)
stops counting as soon as Prometheus writes its staleness marker (next scrape of that target), or
after the 5-minute lookback when no marker comes. A weight without utilization, or utilization
without a weight, drops out of the join instead of skewing a ratio.

``rules_yaml(RuleOptions(...))`` is a pure function; the CLI (``collector.promql_cli``) parses and
validates options and prints the text. No YAML library is needed: strings are emitted as JSON
strings (a subset of YAML double-quoted scalars) and expressions as literal block scalars.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from collector.metrics import GPU_TOTAL_SLICES_METRIC, INSTANCE_SLICES_METRIC
from migmeter.errors import ConfigError

__all__ = [
    "BY_LABELS",
    "UTIL_METRIC",
    "INSTANCE_SLICES_METRIC",
    "GPU_TOTAL_SLICES_METRIC",
    "RuleOptions",
    "PromqlOptionError",
    "validate_selector",
    "validate_duration",
    "validate_ratio",
    "validate_by",
    "rules_yaml",
    "record_names",
]

UTIL_METRIC = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"

# --by value -> the labels a tenant is identified by. A pod name is unique only inside its
# namespace, so "pod" groups by both. Label spellings vary by dcgm-exporter version.
BY_LABELS: dict[str, tuple[str, ...]] = {
    "pod": ("namespace", "pod"),
    "namespace": ("namespace",),
    "Hostname": ("Hostname",),
    "hostname": ("hostname",),
    "pod_name": ("pod_namespace", "pod_name"),
    "pod_namespace": ("pod_namespace",),
}

# One matcher inside {...}: label name, operator, double-quoted string (PromQL escapes allowed,
# no raw newline). Anything else — a second expression, braces, comments — is refused.
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
# Only spaces and tabs between tokens: a newline could break out of the YAML block scalar.
_MATCHER = rf'[ \t]*({_LABEL})[ \t]*(=~|!~|!=|=)[ \t]*"((?:[^"\\\x00-\x1f]|\\[^\x00-\x1f])*)"[ \t]*'
_SELECTOR_RE = re.compile(rf"[ \t]*\{{(?:{_MATCHER}(?:,{_MATCHER})*,?)?[ \t]*\}}[ \t]*")
_MATCHER_RE = re.compile(_MATCHER)
# Prometheus durations: 1h30m, 5m, 90s, 500ms ...
_DURATION_RE = re.compile(r"(?:\d+(?:ms|s|m|h|d|w|y))+")

_GROUP_NAME = "migmeter-mig-weighted"


class PromqlOptionError(ConfigError):
    """An option would produce an invalid or unsafe rules file (the CLI exits 2)."""


@dataclass(frozen=True)
class RuleOptions:
    """What the generated rules look like. Ratios are 0..1, like DCGM's field."""

    selector: str = ""  # extra matchers for the DCGM series, e.g. '{namespace="ml"}'
    weights_selector: str = ""  # extra matchers for the migmeter_* gauges, e.g. '{job="migmeter"}'
    by: Sequence[str] = field(default_factory=lambda: ("namespace",))
    util_threshold: float = 0.9  # weighted utilization of allocated capacity above which to alert
    util_for: str = "15m"
    idle_threshold: float = 0.05  # an allocated instance below this is idle
    idle_for: str = "1h"
    layout_window: str = "10m"  # how long a MIG layout change keeps its alert firing
    group_name: str = _GROUP_NAME


def validate_selector(selector: str) -> str:
    """Return the matchers inside a ``{...}`` selector (no braces), or raise PromqlOptionError."""
    if selector is None or selector.strip() == "":
        return ""
    if not _SELECTOR_RE.fullmatch(selector):
        raise PromqlOptionError(
            f"--selector must be a label selector like '{{namespace=\"ml\"}}', got {selector!r}"
        )
    parts = []
    for m in _MATCHER_RE.finditer(selector):
        name, op, value = m.group(1), m.group(2), m.group(3)
        if name == "__name__":
            raise PromqlOptionError("--selector may not match on __name__ (the rules choose metrics)")
        parts.append(f'{name}{op}"{value}"')
    return ", ".join(parts)


def validate_duration(value: str, option: str = "--for") -> str:
    if not isinstance(value, str) or not _DURATION_RE.fullmatch(value):
        raise PromqlOptionError(f"{option} must be a Prometheus duration like 15m or 1h30m, got {value!r}")
    return value


def validate_ratio(value: float, option: str) -> float:
    if not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
        raise PromqlOptionError(f"{option} is a ratio between 0 and 1 (DCGM reports 0..1), got {value!r}")
    return float(value)


def validate_by(values: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        if v not in BY_LABELS:
            raise PromqlOptionError(f"--by must be one of {', '.join(BY_LABELS)}, got {v!r}")
        if v not in out:
            out.append(v)
    return tuple(out)


def _sel(metric: str, matchers: str) -> str:
    return f"{metric}{{{matchers}}}" if matchers else metric


def record_names(by: Sequence[str] = ("namespace",)) -> list[str]:
    """Names of the recording rules generated for ``by`` (for dashboards and tests)."""
    names = [
        "migmeter:instance_weight:ratio",
        "migmeter:instance_gr_engine_active:ratio",
        "migmeter:instance_weight_observed:ratio",
        "migmeter:instance_gr_engine_active_weighted:ratio",
        "migmeter:gpu_gr_engine_active_weighted:ratio",
        "migmeter:gpu_gr_engine_active_whole:ratio",
        "migmeter:gpu_gr_engine_active_simple_mean:ratio",
        "migmeter:gpu_allocated_share:ratio",
        "migmeter:gpu_instances:count",
        "migmeter:gpu_allocated_slices:sum",
    ]
    for b in by:
        key = b.lower()
        names += [f"migmeter:{key}_gr_engine_active_weighted:ratio", f"migmeter:{key}_allocated_gpus:sum"]
    return names


def _block(expr: str, indent: int) -> str:
    pad = " " * indent
    return "|-\n" + "\n".join(pad + line if line else "" for line in expr.strip("\n").splitlines())


def _fmt(x: float) -> str:
    return repr(float(x))


@dataclass(frozen=True)
class _Rule:
    """One rule of the group; ``for_`` is None for a recording rule, an alert's duration otherwise."""

    name: str
    expr: str
    for_: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Checked:
    """``RuleOptions`` after validation: what the rules are built from."""

    sel: str
    wsel: str
    by: tuple[str, ...]
    util_t: float
    idle_t: float
    util_for: str
    idle_for: str
    window: str
    group_name: str


def rules_yaml(opts: RuleOptions) -> str:
    """The rules file for ``opts`` as YAML text, ready for ``rule_files:``. Validates ``opts``."""
    checked = _check(opts)
    return _render(checked.group_name, [*_recording_rules(checked), *_alert_rules(checked)])


def _check(opts: RuleOptions) -> _Checked:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", opts.group_name):
        raise PromqlOptionError(f"group name {opts.group_name!r} must be [A-Za-z0-9_.-]+")
    return _Checked(
        sel=validate_selector(opts.selector),
        wsel=validate_selector(opts.weights_selector),
        by=validate_by(opts.by),
        util_t=validate_ratio(opts.util_threshold, "--util-threshold"),
        idle_t=validate_ratio(opts.idle_threshold, "--idle-threshold"),
        util_for=validate_duration(opts.util_for, "--for"),
        idle_for=validate_duration(opts.idle_for, "--idle-for"),
        window=validate_duration(opts.layout_window, "--layout-window"),
        group_name=opts.group_name,
    )


def _recording_rules(c: _Checked) -> list[_Rule]:
    """Weights, weighted utilization per GPU, per tenant label set, and the layout counters."""
    tenant_labels: list[str] = []
    for b in c.by:
        for lab in BY_LABELS[b]:
            if lab not in tenant_labels:
                tenant_labels.append(lab)
    keep = ", ".join(["UUID", "GPU_I_ID", *tenant_labels])
    slices = _sel(INSTANCE_SLICES_METRIC, c.wsel)
    total = _sel(GPU_TOTAL_SLICES_METRIC, c.wsel)
    util = _sel(UTIL_METRIC, c.sel)
    rules: list[_Rule] = []

    def rec(name: str, expr: str) -> None:
        rules.append(_Rule(name, expr))

    rec(
        "migmeter:instance_weight:ratio",
        f"""
# w_i = slices_i / total_slices, one series per (UUID, GPU_I_ID); max dedups HA collectors.
max by (UUID, GPU_I_ID) (
  {slices}
  / on (UUID) group_left ()
  max by (UUID) ({total})
)""",
    )
    rec(
        "migmeter:instance_gr_engine_active:ratio",
        f"""
# u_i per instance that the live layout knows; drops the GPU-level row old exporters emit on MIG GPUs.
max by ({keep}) ({util})
and on (UUID, GPU_I_ID)
migmeter:instance_weight:ratio""",
    )
    rec(
        "migmeter:instance_weight_observed:ratio",
        """
# w_i of the instances that report utilization, carrying their tenant labels (x ^ 0 == 1).
migmeter:instance_weight:ratio
* on (UUID, GPU_I_ID) group_right ()
(migmeter:instance_gr_engine_active:ratio ^ 0)""",
    )
    rec(
        "migmeter:instance_gr_engine_active_weighted:ratio",
        """
# w_i * u_i
migmeter:instance_gr_engine_active:ratio
* on (UUID, GPU_I_ID) group_left ()
migmeter:instance_weight:ratio""",
    )
    rec(
        "migmeter:gpu_gr_engine_active_weighted:ratio",
        """
# weighted utilization of allocated capacity: sum(w*u) / sum(w)
sum by (UUID) (migmeter:instance_gr_engine_active_weighted:ratio)
/
sum by (UUID) (migmeter:instance_weight_observed:ratio)""",
    )
    rec(
        "migmeter:gpu_gr_engine_active_whole:ratio",
        """
# whole-GPU utilization: sum(w*u); unallocated slices count as idle
sum by (UUID) (migmeter:instance_gr_engine_active_weighted:ratio)""",
    )
    rec(
        "migmeter:gpu_gr_engine_active_simple_mean:ratio",
        """
# simple mean over instances: wrong for mixed profiles, kept only for comparison
avg by (UUID) (migmeter:instance_gr_engine_active:ratio)""",
    )
    rec(
        "migmeter:gpu_allocated_share:ratio",
        """
# share of the GPU's compute slices held by instances: sum(w)
sum by (UUID) (migmeter:instance_weight:ratio)""",
    )
    rec(
        "migmeter:gpu_instances:count",
        """
count by (UUID) (migmeter:instance_weight:ratio)""",
    )
    rec(
        "migmeter:gpu_allocated_slices:sum",
        f"""
# integer slices, so changes() sees every resize exactly
sum by (UUID) (max by (UUID, GPU_I_ID) ({slices}))""",
    )
    for b in c.by:
        key = b.lower()
        labs = ", ".join(BY_LABELS[b])
        rec(
            f"migmeter:{key}_gr_engine_active_weighted:ratio",
            f"""
# per tenant ({labs}): slice-weighted utilization of the instances it holds
sum by ({labs}) (migmeter:instance_gr_engine_active_weighted:ratio)
/
sum by ({labs}) (migmeter:instance_weight_observed:ratio)""",
        )
        rec(
            f"migmeter:{key}_allocated_gpus:sum",
            f"""
# per tenant ({labs}): allocated GPUs, sum(w) (3g + 1g on a 7-slice GPU = 0.571)
sum by ({labs}) (migmeter:instance_weight_observed:ratio)""",
        )
    return rules


def _alert_rules(c: _Checked) -> list[_Rule]:
    """High weighted utilization, an allocated but idle instance, and a layout change."""
    slices = _sel(INSTANCE_SLICES_METRIC, c.wsel)
    window = c.window
    return [
        _Rule(
            "MigGpuWeightedUtilizationHigh",
            f"migmeter:gpu_gr_engine_active_weighted:ratio > {_fmt(c.util_t)}",
            c.util_for,
            {"severity": "warning"},
            {
                "summary": "GPU {{ $labels.UUID }}: slice-weighted utilization of allocated MIG capacity is high",
                "description": "Weighted GR engine activity {{ $value | humanizePercentage }} > "
                + f"{c.util_t * 100:g}% for {c.util_for} (sum(w*u)/sum(w) over its MIG instances).",
            },
        ),
        _Rule(
            "MigAllocatedInstanceIdle",
            f"migmeter:instance_gr_engine_active:ratio < {_fmt(c.idle_t)}",
            c.idle_for,
            {"severity": "info"},
            {
                "summary": "MIG instance {{ $labels.GPU_I_ID }} on GPU {{ $labels.UUID }} is allocated but idle",
                "description": "GR engine activity {{ $value | humanizePercentage }} < "
                + f"{c.idle_t * 100:g}% for {c.idle_for}; its slices could serve another tenant.",
            },
        ),
        _Rule(
            "MigLayoutChanged",
            f"""
# instance count or allocated slices changed, or an instance (GI id + profile) appeared
# on a GPU that was already known {window} ago (so a Prometheus restart does not fire).
(changes(migmeter:gpu_instances:count[{window}]) > 0)
or on (UUID)
(changes(migmeter:gpu_allocated_slices:sum[{window}]) > 0)
or on (UUID)
(
  count by (UUID) (
    {slices}
    unless on (UUID, GPU_I_ID, GPU_I_PROFILE)
    ({slices} offset {window})
  )
  and on (UUID)
  count by (UUID) ({slices} offset {window})
)""",
            "0s",
            {"severity": "info"},
            {
                "summary": "MIG layout of GPU {{ $labels.UUID }} changed in the last " + window,
                "description": "Instances were created, destroyed or resized; per-instance history "
                + "before the change belongs to the old layout.",
            },
        ),
    ]


def _render(group_name: str, rules: list[_Rule]) -> str:
    out = [
        "# Generated by `migmeter promql rules`: MIG slice-weighted GPU utilization.",
        f"# Joins {UTIL_METRIC} (dcgm-exporter) to {INSTANCE_SLICES_METRIC} / {GPU_TOTAL_SLICES_METRIC}",
        "# (migmeter collector) on (UUID, GPU_I_ID). Ratios are 0..1.",
        "groups:",
        f"  - name: {json.dumps(group_name)}",
        "    rules:",
    ]
    for rule in rules:
        out.append(f"      - alert: {rule.name}" if rule.for_ is not None else f"      - record: {rule.name}")
        out.append(f"        expr: {_block(rule.expr, 10)}")
        if rule.for_ not in (None, "0s"):
            out.append(f"        for: {rule.for_}")
        if rule.labels:
            out.append("        labels:")
            out += [f"          {k}: {json.dumps(v)}" for k, v in rule.labels.items()]
        if rule.annotations:
            out.append("        annotations:")
            out += [f"          {k}: {json.dumps(v)}" for k, v in rule.annotations.items()]
    return "\n".join(out) + "\n"
