"""Pods sharing one instance: the fold bills each its share of the instance's time (Instance.shares)."""

from __future__ import annotations

import pytest

from collector.snapshot import Instance, Metrics, Tenant, TenantShare
from processor.aggregate import Aggregates, fold_snapshot, tenant_rows
from tests.processor.build import at, inst, mig

A, C = Tenant("team-a", "bert-0", "trainer"), Tenant("team-b", "etl-3", "worker")


def _shared_3g(u: float) -> Instance:
    return Instance(1, "3g.40gb", 3, Metrics(gr_engine_active=u), A, tenants=(TenantShare(A, 0.5), TenantShare(C, 0.5)))


def test_each_pod_is_billed_its_share_and_the_gpu_reconciles() -> None:
    agg = Aggregates.empty()
    # dt = 15 s; GI 1 (3g, w = 3/7, u = 0.6) shared by A and C; GI 2 (2g, w = 2/7, u = 0.2) unassigned.
    fold_snapshot(mig(at(0), [_shared_3g(0.6), inst(2, "2g.20gb", 0.2)]), agg)
    by_pod = {(k.namespace, k.pod): v for k, v in tenant_rows(agg).items()}
    assert set(by_pod) == {("team-a", "bert-0"), ("team-b", "etl-3"), ("", "")}
    for pod in (("team-a", "bert-0"), ("team-b", "etl-3")):
        t = by_pod[pod]
        assert t.seconds == pytest.approx(7.5)  # 15 s x 1/2
        assert t.alloc_gpu_seconds == pytest.approx(22.5 / 7)  # 3/7 x 15 x 1/2 = 3.2142857
        assert t.util_alloc_gpu_seconds == pytest.approx(22.5 / 7)
        assert t.busy_gpu_seconds == pytest.approx(13.5 / 7)  # 3/7 x 0.6 x 15 x 1/2 = 1.9285714
        assert t.samples == 1
    unassigned = by_pod[("", "")]
    assert (unassigned.alloc_gpu_seconds, unassigned.busy_gpu_seconds) == (pytest.approx(30 / 7), pytest.approx(6 / 7))
    # Tenants + unassigned = the GPU's allocated and used time: 45/7 + 30/7 = 75/7; 27/7 + 6/7 = 33/7.
    (gpu,) = agg.gpus.values()
    assert sum(t.alloc_gpu_seconds for t in by_pod.values()) == pytest.approx(gpu.alloc_gpu_seconds) == \
        pytest.approx(75 / 7)
    assert sum(t.busy_gpu_seconds for t in by_pod.values()) == pytest.approx(gpu.busy_gpu_seconds) == \
        pytest.approx(33 / 7)
    # The instance row is one row (its primary tenant), holding the whole instance.
    (row,) = [v for k, v in agg.instances.items() if k.gi_id == 1]
    assert [k.pod for k in agg.instances if k.gi_id == 1] == ["bert-0"]
    assert row.alloc_gpu_seconds == pytest.approx(45 / 7)


def test_an_unshared_instance_is_billed_whole_as_before() -> None:
    agg = Aggregates.empty()
    fold_snapshot(mig(at(0), [inst(1, "3g.40gb", 0.6, "team-a", "bert-0")]), agg)
    ((key, t),) = tenant_rows(agg).items()
    assert (key.pod, t.seconds, t.alloc_gpu_seconds) == ("bert-0", 15.0, pytest.approx(45 / 7))


def test_shares_that_change_under_one_layout_are_read_per_snapshot() -> None:
    """The fold remembers a (bucket, GPU)'s rows by layout, and a layout names only the primary
    tenant: shares that move between snapshots of one layout must still be billed as sent."""
    agg = Aggregates.empty()

    def shared(a: float) -> Instance:
        return Instance(1, "3g.40gb", 3, Metrics(gr_engine_active=1.0), A,
                        tenants=(TenantShare(A, a), TenantShare(C, 1 - a)))

    # Three 15 s snapshots in minute 0, same layout (GI 1, primary tenant A): A's shares 0.6,
    # 0.2, then the instance held by A alone (1.0).
    alone = inst(1, "3g.40gb", 1.0, A.namespace, A.pod, A.container)
    for t, one in ((15, shared(0.6)), (30, shared(0.2)), (45, alone)):
        fold_snapshot(mig(at(t), [one]), agg)
    by_pod = {(k.namespace, k.pod): v for k, v in tenant_rows(agg).items()}
    a, c = by_pod[("team-a", "bert-0")], by_pod[("team-b", "etl-3")]
    assert a.seconds == pytest.approx(9 + 3 + 15)  # 15 x 0.6 + 15 x 0.2 + 15
    assert c.seconds == pytest.approx(6 + 12)  # 15 x 0.4 + 15 x 0.8
    assert a.busy_gpu_seconds == pytest.approx(27 * 3 / 7)
    assert (a.samples, c.samples) == (3, 2)
    (row,) = agg.instances.values()
    assert (row.seconds, row.samples) == (45.0, 3)
