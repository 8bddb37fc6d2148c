"""Aggregates: known values, bucketing, associativity of merge by the role lists."""

from __future__ import annotations

import random
from typing import NamedTuple

import pytest

from bench.common import merged  # by the role lists, as the database merges rows
from processor.aggregate import (
    Aggregates,
    GpuSums,
    InstanceSums,
    TenantSums,
    bucket_start,
    fold_snapshot,
    tenant_rows,
)
from tests.processor.build import KNOWN_VALUES, at, inst, mig, whole


# ----------------------------------------------------------------------------- the oracle
# The processor stores sums only; ratios live in the database views (sql/014). These are the
# views' arithmetic spelled out in Python, to check the sums against DESIGN.md's known values.


class Ratios(NamedTuple):
    weighted: float | None  # busy / allocated time with a known value
    whole: float | None  # busy over all GPU time with a known value (unallocated slices idle)
    simple: float | None  # mean of instance utilizations (misleading; for comparison)
    allocation: float | None  # allocated share of the GPU


def whole_utilization(seconds: float, alloc: float, util_alloc: float, busy: float) -> float | None:
    """busy / (GPU time minus allocated time of unknown utilization); None when allocated time
    had no value at all (unknown, not 0 %) or there was no time."""
    if alloc > 0 and util_alloc <= 0:
        return None
    known = seconds - alloc + util_alloc
    return busy / known if known > 0 else None


def ratios(g: GpuSums) -> Ratios:
    return Ratios(
        weighted=g.busy_gpu_seconds / g.util_alloc_gpu_seconds if g.util_alloc_gpu_seconds else None,
        whole=whole_utilization(g.seconds, g.alloc_gpu_seconds, g.util_alloc_gpu_seconds, g.busy_gpu_seconds),
        simple=g.simple_util_seconds / g.simple_seconds if g.simple_seconds else None,
        allocation=g.alloc_gpu_seconds / g.seconds if g.seconds else None,
    )


def _fold(*snaps):  # type: ignore[no-untyped-def]
    agg = Aggregates.empty()
    for s in snaps:
        fold_snapshot(s, agg)
    return agg


@pytest.mark.parametrize(("layout", "expected"), KNOWN_VALUES)
def test_known_values(layout, expected):  # type: ignore[no-untyped-def]
    snap = mig(at(0), [inst(i, p, u / 100) for i, (p, u) in enumerate(layout)])
    (gsum,) = _fold(snap).gpus.values()
    r = ratios(gsum)
    simple, weighted, whole_gpu = expected
    assert round(r.simple * 100, 2) == simple
    assert round(r.weighted * 100, 2) == weighted
    assert round(r.whole * 100, 2) == whole_gpu


def test_known_values_hold_over_many_samples_in_one_bucket():
    layout, (simple, weighted, whole_gpu) = KNOWN_VALUES[0]
    snaps = [mig(at(t), [inst(i, p, u / 100) for i, (p, u) in enumerate(layout)]) for t in (15, 30, 45, 60)]
    (gsum,) = _fold(*snaps).gpus.values()
    assert gsum.snapshots == 4 and gsum.seconds == 60
    assert round(ratios(gsum).weighted * 100, 2) == weighted
    assert round(ratios(gsum).whole * 100, 2) == whole_gpu
    assert round(ratios(gsum).simple * 100, 2) == simple


def test_a30_four_slices():
    # A30: 2g at 50 % and 1g at 100 %, one slice unallocated.
    snap = mig(at(0), [inst(0, "2g.12gb", 0.5), inst(1, "1g.6gb", 1.0)], total=4, model="A30")
    agg = _fold(snap)
    r = ratios(next(iter(agg.gpus.values())))
    assert r.allocation == pytest.approx(0.75)
    assert r.whole == pytest.approx((2 * 0.5 + 1 * 1.0) / 4)  # 50 %
    assert r.weighted == pytest.approx((2 * 0.5 + 1 * 1.0) / 3)  # 66.67 %
    assert r.simple == pytest.approx(0.75)
    assert sum(t.alloc_gpu_seconds for t in tenant_rows(agg).values()) == pytest.approx(0.75 * 15)


def test_mig_on_without_instances_has_allocation_zero():
    (gsum,) = _fold(mig(at(0), [])).gpus.values()
    r = ratios(gsum)
    assert r.allocation == 0 and r.whole == 0
    assert r.weighted is None and r.simple is None
    assert gsum.seconds == 15 and gsum.mig_seconds == 15


def test_whole_gpu_is_weight_one():
    agg = _fold(whole(at(0), 0.4, ns="team", pod="p"))
    (gsum,) = agg.gpus.values()
    assert ratios(gsum) == (pytest.approx(0.4), pytest.approx(0.4), pytest.approx(0.4), 1.0)
    assert gsum.mig_seconds == 0
    (tsum,) = tenant_rows(agg).values()
    assert tsum.alloc_gpu_seconds == 15 and tsum.busy_gpu_seconds == pytest.approx(6)


def test_unknown_utilization_is_left_out_of_weighted_but_counts_as_allocated():
    agg = _fold(mig(at(0), [inst(0, "1g.10gb", 0.5), inst(1, "3g.40gb", None)]))
    (gsum,) = agg.gpus.values()
    assert gsum.alloc_gpu_seconds == pytest.approx(4 / 7 * 15)
    assert gsum.util_alloc_gpu_seconds == pytest.approx(1 / 7 * 15)
    assert ratios(gsum).weighted == pytest.approx(0.5)
    assert gsum.whole_util_min is None  # not every instance known
    inst_unknown = next(s for k, s in agg.instances.items() if k.gi_id == 1)
    assert inst_unknown.util_seconds == 0 and inst_unknown.busy_seconds == 0  # no utilization, not 0 %


@pytest.mark.parametrize(
    ("seconds", "width", "start"),
    [(0, 60, 0), (59.999, 60, 0), (60, 60, 60), (3599.9, 3600, 0), (86400 * 3 + 5, 86400, 86400 * 3)],
)
def test_bucket_start_is_half_open(seconds, width, start):  # type: ignore[no-untyped-def]
    base = at(0).timestamp()
    assert bucket_start(base + seconds, width) == base + start


def test_sample_is_split_at_the_bucket_edge_in_proportion_to_time():
    # v2 time model: ts 00:01:07 with a 15 s interval covers (00:00:52, 00:01:07]: 8 s in the
    # 00:00 bucket, 7 s in 00:01, which holds the ts and so the counts.
    agg = _fold(mig(at(67), [inst(0, "7g.40gb", 1.0, "a", "p")]))
    base = at(0).timestamp()
    assert sorted((k.bucket - base, s.seconds, s.snapshots) for k, s in agg.gpus.items()) == [(0, 8, 0), (60, 7, 1)]
    assert sorted((k.bucket - base, s.alloc_gpu_seconds, s.samples) for k, s in tenant_rows(agg).items()) == [
        (0, 8, 0), (60, 7, 1)]


def test_tenant_changes_inside_a_bucket_split_the_instance_rows():
    agg = _fold(mig(at(0), [inst(0, "1g.10gb", 0.2, "a", "p1")]), mig(at(15), [inst(0, "1g.10gb", 0.2, "b", "p2")]))
    assert sorted((k.namespace, s.samples) for k in agg.instances for s in [agg.instances[k]]) == [("a", 1), ("b", 1)]
    assert len(tenant_rows(agg)) == 2



def test_a_layout_that_changes_and_comes_back_inside_a_bucket_finds_its_rows_again():
    # Minute 0 of one GPU, 15 s apart: GI 1 held by a/p (container c1, u 0.5), then by b/q
    # (u 0.2), then a/p again with container c2 (u 1.0): the fold's remembered rows follow the
    # layout, and a/p's third snapshot adds to its first row, whose container becomes c2.
    agg = _fold(mig(at(15), [inst(1, "3g.40gb", 0.5, "a", "p", "c1")]),
                mig(at(30), [inst(1, "3g.40gb", 0.2, "b", "q")]),
                mig(at(45), [inst(1, "3g.40gb", 1.0, "a", "p", "c2")]))
    rows = {k.pod: s for k, s in agg.instances.items()}
    assert sorted(rows) == ["p", "q"]
    assert (rows["p"].seconds, rows["p"].samples, rows["p"].container) == (30.0, 2, "c2")
    assert rows["p"].busy_seconds == pytest.approx(22.5)  # 0.5 x 15 + 1.0 x 15
    assert (rows["q"].seconds, rows["q"].busy_seconds) == (15.0, pytest.approx(3.0))
    tenants = {k.pod: s for k, s in tenant_rows(agg).items()}
    assert tenants["p"].alloc_gpu_seconds == pytest.approx(90 / 7)  # 3/7 x 30
    assert tenants["q"].alloc_gpu_seconds == pytest.approx(45 / 7)
    ((_, gpu),) = agg.gpus.items()
    assert (gpu.seconds, gpu.snapshots, gpu.instance_samples) == (45.0, 3, 3)
    assert gpu.busy_gpu_seconds == pytest.approx(3 / 7 * 25.5)  # 3/7 x (7.5 + 3 + 15)


def _random_sums(rng: random.Random, cls):  # type: ignore[no-untyped-def]
    agg = Aggregates.empty()
    for t in range(rng.randint(1, 5)):
        u = rng.choice([None, rng.random()])
        fold_snapshot(mig(at(t * 15), [inst(0, "2g.20gb", u, "ns", "p", fb_used=rng.random() * 100)]), agg)
    pick = {InstanceSums: agg.instances, TenantSums: tenant_rows(agg), GpuSums: agg.gpus}[cls]
    return next(iter(pick.values()))


def _sums_equal(a, b):  # type: ignore[no-untyped-def]
    for name in a.__slots__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, float):
            assert x == pytest.approx(y, rel=1e-12, abs=1e-12), name
        else:
            assert x == y, name


@pytest.mark.parametrize("cls", [InstanceSums, TenantSums, GpuSums])
def test_merge_is_associative_and_pure(cls):  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    for _ in range(50):
        a, b, c = (_random_sums(rng, cls) for _ in range(3))
        before = [getattr(a, n) for n in a.__slots__]
        _sums_equal(merged(merged(a, b), c), merged(a, merged(b, c)))
        assert [getattr(a, n) for n in a.__slots__] == before  # merge did not touch its inputs


def test_batches_merged_equal_one_pass():
    """Folding in two parts and merging equals folding everything at once (the sink's premise)."""
    snaps = [mig(at(t), [inst(0, "3g.40gb", (t % 7) / 7, "a", "x"), inst(1, "4g.40gb", None)]) for t in range(0, 600, 15)]
    one = _fold(*snaps)
    p1, p2 = _fold(*snaps[:17]), _fold(*snaps[17:])
    for key, whole_sum in one.gpus.items():
        parts = [p.gpus[key] for p in (p1, p2) if key in p.gpus]
        combined = parts[0] if len(parts) == 1 else merged(parts[0], parts[1])
        _sums_equal(combined, whole_sum)


@pytest.mark.parametrize("cls", [InstanceSums, TenantSums, GpuSums])
def test_every_field_has_exactly_one_merge_role(cls):  # type: ignore[no-untyped-def]
    roles = cls.ATTRS + cls.SUMS + cls.MINS + cls.MAXS
    assert sorted(roles) == sorted(cls.__slots__)
