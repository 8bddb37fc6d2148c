"""Mergeable window aggregates: every stored measure is a sum (or a min/max), never a ratio.

Because each measure is a sum, a bucket can be written in parts — by several micro-batches,
late data, a restarted processor — and the parts add up to exactly what one pass over all
samples would give. Ratios (weighted utilization, whole-GPU utilization, simple mean,
allocation) are computed only in the database views, from the sums.

Time-weighting (DESIGN.md "Time model"): a snapshot stands for the time it covers, which
``processor.fold`` decides (``(prev_ts, ts]`` of its GPU, minus what is billed already) and
:mod:`processor.timeline` splits at bucket edges in proportion to time: each part is a
(bucket, dt) pair. Buckets are ``[start, start + width)`` in UTC (1 minute, 1 hour, 1 day).
Counts (samples, snapshots) go to the bucket holding the snapshot's ts (the last part).

Per part of a snapshot of a GPU with instances i (w_i = slices_i / total_slices,
u_i = gr_engine_active):

- instance: seconds += dt, alloc += w·dt, and where u is known util_seconds += dt,
  busy += u·dt, busy_gpu += w·u·dt; samples += 1; min/max of u; peak framebuffer use.
- GPU: seconds += dt (metered GPU-seconds); alloc += Σw_i·dt; busy += Σw_i·u_i·dt;
  util_alloc += Σ w_i·dt over instances with known u; simple mean (Σu_i/n)·dt over the
  snapshots that have at least one known u. MIG on with no instances adds alloc 0.
  unmetered_seconds: time inside the GPU's life that no snapshot covers (may be negative in
  a batch: backfill filling a hole written by an earlier batch); capacity = seconds +
  unmetered_seconds.
- tenant (per GPU, so one processor writes each row): alloc/busy GPU-seconds per tenant;
  unassigned instances under namespace '' and pod ''. An instance shared by several pods
  (``Instance.shares()``) bills each pod its share of dt; the instance row keeps its primary
  tenant. A tenant's row is not folded a second time: it is the sum of its instances' rows,
  column by column (:data:`TENANT_FROM_INSTANCE`), which the sink computes in SQL from the
  staged instance rows (:func:`tenant_rows` is the same in Python). The fold keeps tenant
  sums only as corrections for shared instances (``Aggregates.tenants``): the primary
  tenant's share minus the whole, and every other pod's share.

Unknown utilization stays unknown: allocated time without a value is out of the numerator
and the denominator of every utilization (weighted, whole-GPU, simple); all unknown -> None.

The processor folds a batch at 1-minute grain only; the sink derives 1h and 1d in the
database by merging the 1-minute partials (``processor.sink``), which is exact because merge
is associative.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, NamedTuple

from collector.snapshot import Snapshot
from processor.grains import FOLD_GRAIN, GRAINS
from processor.layout import Signature, signature_of
from processor.timeline import split, to_us

__all__ = [
    "GRAINS",
    "TENANT_FROM_INSTANCE",
    "tenant_rows",
    "bucket_start",
    "InstanceKey",
    "TenantKey",
    "GpuKey",
    "InstanceSums",
    "TenantSums",
    "GpuSums",
    "Aggregates",
    "fold_snapshot",
    "add_unmetered",
]


def bucket_start(epoch_s: float, width_s: int) -> int:
    """Start (epoch seconds, UTC) of the ``width_s`` bucket containing ``epoch_s``: [start, start+width)."""
    return int(epoch_s // width_s) * width_s


class InstanceKey(NamedTuple):
    bucket: int
    gpu_uuid: str
    gi_id: int
    profile: str
    namespace: str
    pod: str


class TenantKey(NamedTuple):
    bucket: int
    gpu_uuid: str
    namespace: str
    pod: str


class GpuKey(NamedTuple):
    bucket: int
    gpu_uuid: str


# Makes a key (any of the NamedTuples above) from a plain tuple of its fields without the
# NamedTuple's Python-level __new__: the fold makes two or three keys per instance sample.
_new_key = tuple.__new__


def _min(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a <= b else b


def _max(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b


class _Mergeable:
    """Merge by field role: ATTRS (last seen wins), SUMS (add), MINS / MAXS (None = no value).

    The same role lists drive the fold below and the database's merges (``processor.sink``:
    the upserts and the 1h/1d rollups), so they cannot disagree.
    """

    __slots__ = ()
    ATTRS: ClassVar[tuple[str, ...]]
    SUMS: ClassVar[tuple[str, ...]]
    MINS: ClassVar[tuple[str, ...]]
    MAXS: ClassVar[tuple[str, ...]]


@dataclass(slots=True)
class InstanceSums(_Mergeable):
    """Sums for one (bucket, GPU, GI, profile, tenant). Attributes are the last seen values."""

    ATTRS: ClassVar[tuple[str, ...]] = ("cluster", "gpu_model", "slices", "total_slices", "container")
    SUMS: ClassVar[tuple[str, ...]] = (
        "seconds", "alloc_gpu_seconds", "util_seconds", "busy_seconds", "busy_gpu_seconds", "samples",
    )
    MINS: ClassVar[tuple[str, ...]] = ("util_min",)
    MAXS: ClassVar[tuple[str, ...]] = ("util_max", "fb_used_max_mib")

    cluster: str
    gpu_model: str
    slices: int
    total_slices: int
    container: str
    seconds: float = 0.0
    alloc_gpu_seconds: float = 0.0
    util_seconds: float = 0.0
    busy_seconds: float = 0.0
    busy_gpu_seconds: float = 0.0
    samples: int = 0
    util_min: float | None = None
    util_max: float | None = None
    fb_used_max_mib: float | None = None

    def add(self, dt: float, w: float, u: float | None, fb_used_mib: float | None, n: int = 1) -> None:
        """Fold ``dt`` seconds of one instance sample (share ``w`` of the GPU, utilization ``u``);
        ``n`` = 1 in the bucket holding the sample's ts, 0 in the others it covers."""
        self.seconds += dt
        self.alloc_gpu_seconds += w * dt
        self.samples += n
        if u is not None:
            self.util_seconds += dt
            self.busy_seconds += u * dt
            self.busy_gpu_seconds += w * u * dt
            self.util_min = _min(self.util_min, u)
            self.util_max = _max(self.util_max, u)
        if fb_used_mib is not None:
            self.fb_used_max_mib = _max(self.fb_used_max_mib, fb_used_mib)


@dataclass(slots=True)
class TenantSums(_Mergeable):
    """Sums for one (bucket, GPU, tenant): what chargeback bills."""

    ATTRS: ClassVar[tuple[str, ...]] = ("cluster", "gpu_model")
    SUMS: ClassVar[tuple[str, ...]] = (
        "seconds", "alloc_gpu_seconds", "util_alloc_gpu_seconds", "busy_gpu_seconds", "samples",
    )
    MINS: ClassVar[tuple[str, ...]] = ()
    MAXS: ClassVar[tuple[str, ...]] = ()

    cluster: str
    gpu_model: str
    seconds: float = 0.0
    alloc_gpu_seconds: float = 0.0
    util_alloc_gpu_seconds: float = 0.0
    busy_gpu_seconds: float = 0.0
    samples: int = 0

    def add(self, dt: float, w: float, u: float | None, n: int = 1) -> None:
        self.seconds += dt
        self.alloc_gpu_seconds += w * dt
        self.samples += n
        if u is not None:
            self.util_alloc_gpu_seconds += w * dt
            self.busy_gpu_seconds += w * u * dt


# A tenant's row from its instances' rows (same bucket, GPU, namespace and pod; attributes
# cluster and gpu_model by name): (tenant sum, instance sum, weighted), weighted = times the
# instance's share of the GPU, slices / total_slices. The sink's SQL and tenant_rows() are
# both made from this table.
TENANT_FROM_INSTANCE: tuple[tuple[str, str, bool], ...] = (
    ("seconds", "seconds", False),
    ("alloc_gpu_seconds", "alloc_gpu_seconds", False),
    ("util_alloc_gpu_seconds", "util_seconds", True),
    ("busy_gpu_seconds", "busy_gpu_seconds", False),
    ("samples", "samples", False),
)


@dataclass(slots=True)
class GpuSums(_Mergeable):
    """Sums for one (bucket, physical GPU)."""

    ATTRS: ClassVar[tuple[str, ...]] = ("cluster", "host", "gpu_model", "total_slices")
    SUMS: ClassVar[tuple[str, ...]] = (
        "seconds", "mig_seconds", "alloc_gpu_seconds", "util_alloc_gpu_seconds", "busy_gpu_seconds",
        "simple_util_seconds", "simple_seconds", "instance_samples", "snapshots", "unmetered_seconds",
    )
    MINS: ClassVar[tuple[str, ...]] = ("alloc_min", "whole_util_min")
    MAXS: ClassVar[tuple[str, ...]] = ("alloc_max", "whole_util_max")

    cluster: str
    host: str
    gpu_model: str
    total_slices: int
    seconds: float = 0.0
    mig_seconds: float = 0.0
    alloc_gpu_seconds: float = 0.0
    util_alloc_gpu_seconds: float = 0.0
    busy_gpu_seconds: float = 0.0
    simple_util_seconds: float = 0.0
    simple_seconds: float = 0.0
    instance_samples: int = 0
    snapshots: int = 0
    unmetered_seconds: float = 0.0
    alloc_min: float | None = None
    alloc_max: float | None = None
    whole_util_min: float | None = None
    whole_util_max: float | None = None

    def add_snapshot(
        self,
        dt: float,
        mig_enabled: bool,
        alloc: float,
        util_alloc: float,
        busy: float,
        simple_mean: float | None,
        n_instances: int,
        all_known: bool,
        n: int = 1,
    ) -> None:
        """Fold ``dt`` seconds of one snapshot's per-GPU totals (Σw, Σw over known u, Σw·u, mean u);
        ``n`` = 1 in the bucket holding its ts, 0 in the others."""
        self.seconds += dt
        if mig_enabled:
            self.mig_seconds += dt
        self.alloc_gpu_seconds += alloc * dt
        self.util_alloc_gpu_seconds += util_alloc * dt
        self.busy_gpu_seconds += busy * dt
        if simple_mean is not None:
            self.simple_util_seconds += simple_mean * dt
            self.simple_seconds += dt
        self.instance_samples += n_instances * n
        self.snapshots += n
        self.alloc_min = _min(self.alloc_min, alloc)
        self.alloc_max = _max(self.alloc_max, alloc)
        if all_known:
            self.whole_util_min = _min(self.whole_util_min, busy)
            self.whole_util_max = _max(self.whole_util_max, busy)


# What the fold remembers per (bucket, GPU): the layout signature, each instance's row, and the
# GPU's row.
_LayoutRows = tuple[Signature, list[InstanceSums], GpuSums]


@dataclass(slots=True)
class Aggregates:
    """Partials of one batch at one grain, keyed like the tables' primary keys."""

    instances: dict[InstanceKey, InstanceSums]
    tenants: dict[TenantKey, TenantSums]  # corrections for shared instances only: see tenant_rows()
    gpus: dict[GpuKey, GpuSums]
    # The fold's index into the rows above, not data: (bucket, GPU) -> (layout signature, each
    # instance's row, the GPU's row). See fold_snapshot.
    layouts: dict[tuple[int, str], _LayoutRows] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def empty(cls) -> Aggregates:
        return cls({}, {}, {})

    def __len__(self) -> int:
        return len(self.instances) + len(self.tenants) + len(self.gpus)


def fold_snapshot(snap: Snapshot, agg: Aggregates, parts: Sequence[tuple[int, float]] | None = None,
                  sig: Signature | None = None) -> None:
    """Fold one (already validated, not duplicate) snapshot into ``agg``, one row per bucket part.

    ``parts`` are (bucket start, seconds) pairs from :func:`processor.timeline.split`, the last
    one holding ``ts`` (it gets the counts); default: ``(ts - interval_s, ts]`` split into
    1-minute buckets, what a GPU's first snapshot covers. ``sig``: the snapshot's
    :func:`processor.layout.signature_of`, when the caller has it already.

    This is the processor's hot path. Per-instance values are computed once, then added to
    each part's rows. The rows of a (bucket, GPU) are found once per layout: ``agg.layouts``
    remembers, per (bucket, GPU), the layout signature its rows were made for and the rows in
    instance order, so a snapshot with that layout (nearly every one) adds to them without
    building or looking up a key per instance (:func:`_layout_rows` does that for any other).
    The signature holds every key field and attribute the rows take from an instance, so the
    remembered rows are exactly the ones the keys would find.
    """
    if parts is None:
        ts_us = to_us(snap.ts.timestamp())
        parts = split(ts_us - to_us(snap.interval_s), ts_us, GRAINS[FOLD_GRAIN])
    if sig is None:
        sig = signature_of(snap)
    total = snap.total_slices
    alloc = util_alloc = busy = u_sum = 0.0
    n_known = 0
    # Per instance: (share of the GPU, utilization, framebuffer used); shared instances also
    # (share of the GPU, utilization, instance) in ``shared``: shares are not part of the
    # layout, so they are read per snapshot.
    values = []
    shared = []
    for inst in snap.instances:
        w = inst.slices / total
        metrics = inst.metrics
        u = metrics.gr_engine_active
        values.append((w, u, metrics.fb_used_mib))
        if inst.tenants:
            shared.append((w, u, inst))
        alloc += w
        if u is not None:
            util_alloc += w
            busy += w * u
            u_sum += u
            n_known += 1
    n_inst = len(snap.instances)
    simple = u_sum / n_known if n_known else None
    all_known = n_known == n_inst
    last = len(parts) - 1
    layouts = agg.layouts
    gpu = snap.gpu_uuid
    for i, (b, dt) in enumerate(parts):
        n = 1 if i == last else 0  # the counts (samples, snapshots) go to the part holding ts
        ref = (b, gpu)
        rows = layouts.get(ref)
        if rows is None or rows[0] != sig:
            rows = layouts[ref] = _layout_rows(snap, agg, b, sig)
        for isum, (w, u, fb) in zip(rows[1], values):
            isum.add(dt, w, u, fb, n)
        for w, u, inst in shared:
            # Several pods on one instance: each is billed its share of the instance's time. The
            # instance's row bills it whole to its primary tenant (the first of the shares), so
            # that tenant is corrected by its share minus the whole, the others by their shares.
            for k, (owner, share) in enumerate(inst.shares()):
                tkey = _new_key(TenantKey, (b, gpu, owner.namespace, owner.pod))
                tsum = agg.tenants.get(tkey)
                if tsum is None:
                    tsum = agg.tenants[tkey] = TenantSums(snap.cluster, snap.gpu_model)
                tsum.add(dt * (share - 1.0) if k == 0 else dt * share, w, u, 0 if k == 0 else n)
        gsum = rows[2]
        gsum.host = snap.host
        gsum.add_snapshot(dt, snap.mig_enabled, alloc, util_alloc, busy, simple, n_inst, all_known, n)


def _layout_rows(snap: Snapshot, agg: Aggregates, b: int, sig: Signature) -> _LayoutRows:
    """The rows of bucket ``b`` for ``snap``'s GPU and layout, found (or made) by key: each
    instance's row, then the GPU's row."""
    gpu = snap.gpu_uuid
    instances_d = agg.instances
    rows = []
    for inst in snap.instances:
        tenant = inst.tenant
        ns, pod = tenant.namespace, tenant.pod
        # Keys through tuple.__new__: a NamedTuple's own __new__ is a Python call per key.
        ikey = _new_key(InstanceKey, (b, gpu, inst.gi_id, inst.profile, ns, pod))
        isum = instances_d.get(ikey)
        if isum is None:
            isum = instances_d[ikey] = InstanceSums(snap.cluster, snap.gpu_model, inst.slices, snap.total_slices,
                                                    tenant.container)
        else:
            isum.container = tenant.container
        rows.append(isum)
    return sig, rows, _gpu_row(agg.gpus, b, snap)


def tenant_rows(agg: Aggregates) -> dict[TenantKey, TenantSums]:
    """The tenant rows of ``agg``: its instances' rows summed per tenant by
    :data:`TENANT_FROM_INSTANCE`, plus its shared-instance corrections. What the sink derives
    in SQL; for tests and benchmarks. ``agg`` is not changed."""
    out = {k: replace(v) for k, v in agg.tenants.items()}
    for key, isum in agg.instances.items():
        tkey = _new_key(TenantKey, (key.bucket, key.gpu_uuid, key.namespace, key.pod))
        tsum = out.get(tkey)
        if tsum is None:
            tsum = out[tkey] = TenantSums(isum.cluster, isum.gpu_model)
        for tenant_col, instance_col, weighted in TENANT_FROM_INSTANCE:
            value = getattr(isum, instance_col)
            if weighted:
                value = value * isum.slices / isum.total_slices
            setattr(tsum, tenant_col, getattr(tsum, tenant_col) + value)
    return out


def add_unmetered(snap: Snapshot, agg: Aggregates, parts: Sequence[tuple[int, float]], sign: int) -> None:
    """Add (sign = 1) or remove (sign = -1) unmetered seconds of ``snap``'s GPU in these buckets."""
    for b, dt in parts:
        _gpu_row(agg.gpus, b, snap).unmetered_seconds += sign * dt


def _gpu_row(gpus_d: dict[GpuKey, GpuSums], b: int, snap: Snapshot) -> GpuSums:
    gkey = _new_key(GpuKey, (b, snap.gpu_uuid))
    gsum = gpus_d.get(gkey)
    if gsum is None:
        gsum = gpus_d[gkey] = GpuSums(snap.cluster, snap.host, snap.gpu_model, snap.total_slices)
    else:
        gsum.host = snap.host
    return gsum
