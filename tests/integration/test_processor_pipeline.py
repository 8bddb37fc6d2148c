"""The processor end to end on real Kafka + TimescaleDB: reconciliation, layout, duplicates, dead letters."""

from __future__ import annotations

import psycopg
import pytest

from collector.sources.simulate import SimulatedFleet
from tests.integration.proc_kit import (
    Oracle,
    assert_matches_oracle,
    config,
    produce,
    run_until_idle,
    stored_offsets_total,
)

pytestmark = pytest.mark.integration

# Floating sums are added in a different order than the oracle's: equal to ~1e-9 relative.
REL = 1e-9


def _fleet_snaps(rounds: int, **kw):  # type: ignore[no-untyped-def]
    fleet = SimulatedFleet(seed=kw.pop("seed", 3), hosts=kw.pop("hosts", 3), gpus_per_host=kw.pop("gpus_per_host", 4),
                           reconfigure_every_s=kw.pop("reconfigure_every_s", 1800.0), **kw)
    return [s for r in fleet.rounds(rounds) for s in r]


def test_simulated_fleet_reconciles_with_oracle(kafka_bootstrap, new_topic, fresh_db):  # type: ignore[no-untyped-def]
    topic = new_topic(partitions=3)
    snaps = _fleet_snaps(240)  # 12 GPUs x 1 hour at 15 s, with reconfigurations
    produce(kafka_bootstrap, topic, snaps)
    run_until_idle(config(kafka_bootstrap, fresh_db, topic))
    oracle = Oracle.of(snaps)
    assert oracle.snapshots == len(snaps)
    assert_matches_oracle(fresh_db, oracle, REL)
    # Reconciliation through the views: tenants + unassigned + unallocated = physical GPU-hours.
    with psycopg.connect(fresh_db) as conn:
        tenants, unassigned = conn.execute(
            "SELECT sum(alloc_gpu_hours) FILTER (WHERE namespace <> '(unassigned)'), "
            "sum(alloc_gpu_hours) FILTER (WHERE namespace = '(unassigned)') FROM tenant_gpu_hours_1h").fetchone()
        physical, unallocated = conn.execute(
            "SELECT sum(gpu_hours), sum(unallocated_gpu_hours) FROM gpu_utilization_1h").fetchone()
    assert tenants > 0 and unassigned > 0 and unallocated > 0
    assert tenants + unassigned + unallocated == pytest.approx(physical, rel=REL)
    assert physical == pytest.approx(len(snaps) * 15 / 3600, rel=REL)
    next_sum, merged, dups, dead = stored_offsets_total(fresh_db)
    assert (next_sum, merged, dups, dead) == (len(snaps), len(snaps), 0, 0)
