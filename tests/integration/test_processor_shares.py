"""A shared instance through Kafka into the warehouse: each pod billed its share, the GPU reconciles."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from collector.snapshot import Instance, Metrics, Tenant, TenantShare
from tests.fix_faults import config, produce, run_until_idle, stored_offsets_total
from tests.processor.build import at, inst, mig

pytestmark = pytest.mark.integration

PODS = (Tenant("team-a", "bert-0", "trainer"), Tenant("team-a", "nb-1", "jupyter"), Tenant("team-b", "etl-3", "w"))


def test_pods_sharing_a_gi_are_each_billed_a_third(kafka_bootstrap, new_topic, fresh_db):  # type: ignore[no-untyped-def]
    topic = new_topic(partitions=1)
    shared = Instance(1, "3g.40gb", 3, Metrics(gr_engine_active=0.6), PODS[0],
                      tenants=tuple(TenantShare(t, 1 / 3) for t in PODS))
    # Two 15 s snapshots inside one minute (ts 30 and 45: whatever stretch each covers, the
    # GPU is metered 30 s in the bucket at 0 s); GI 2 (2g) unassigned.
    snaps = [mig(at(t), [shared, inst(2, "2g.20gb", 0.2)]) for t in (30, 45)]
    produce(kafka_bootstrap, topic, snaps)
    # A consumer group of its own: a group shared with other runs on the same broker rebalances
    # whenever one of them joins or leaves, whatever topic it reads.
    group = f"shares-{uuid.uuid4().hex[:8]}"
    run_until_idle(config(kafka_bootstrap, fresh_db, topic, group=group))
    assert stored_offsets_total(fresh_db, group)[1] == 2  # both merged
    with psycopg.connect(fresh_db) as conn:
        tenants = conn.execute("SELECT namespace, pod, sum(seconds), sum(alloc_gpu_seconds), sum(busy_gpu_seconds) "
                               "FROM tenant_usage_1d GROUP BY namespace, pod ORDER BY namespace, pod").fetchall()
        (gpu_alloc, gpu_busy, gpu_seconds) = conn.execute(
            "SELECT sum(alloc_gpu_seconds), sum(busy_gpu_seconds), sum(seconds) FROM gpu_usage_1d").fetchone()
        (events,) = conn.execute("SELECT count(*) FROM layout_events").fetchone()
    # Per pod: 30 s x 1/3 = 10 s; allocated 3/7 x 30 / 3 = 30/7 = 4.2857; used x 0.6 = 18/7 = 2.5714.
    # Unassigned GI 2: allocated 2/7 x 30 = 60/7 = 8.5714; used x 0.2 = 12/7 = 1.7143.
    expect = [("", "", 30.0, 60 / 7, 12 / 7)] + [(t.namespace, t.pod, 10.0, 30 / 7, 18 / 7) for t in PODS]
    assert [(ns, pod) for ns, pod, *_ in tenants] == [(ns, pod) for ns, pod, *_ in expect]
    for got, want in zip(tenants, expect):
        assert got[2:] == pytest.approx(want[2:])
    # Reconciliation: tenants + unassigned = the GPU's allocated (150/7) and used (66/7) GPU-seconds.
    assert sum(r[3] for r in tenants) == pytest.approx(gpu_alloc) == pytest.approx(150 / 7)
    assert sum(r[4] for r in tenants) == pytest.approx(gpu_busy) == pytest.approx(66 / 7)
    assert gpu_seconds == pytest.approx(30.0)
    assert events == 0  # the same sharing both rounds: no layout change
