"""A group join that never ends (kafka-python was seen to stop heartbeating after a revocation
and never join again): after JOIN_STALL_SESSIONS session timeouts the processor joins again with
a new Kafka client, and the warehouse still equals the oracle (nothing lost, nothing doubled)."""

from __future__ import annotations

import time

import pytest

from collector.sources.simulate import SimulatedFleet
from tests.fix_faults import DEADLINE_S, assert_billed_once, config, produce, start_in_thread, stored_offsets_total, wait_until

REJOINS = "migmeter_processor_group_rejoins_total"

pytestmark = pytest.mark.integration


def test_a_stalled_join_is_started_over_with_a_new_client(kafka_bootstrap, new_topic, fresh_db):  # type: ignore[no-untyped-def]
    topic = new_topic(partitions=2)
    fleet = SimulatedFleet(seed=11, hosts=2, gpus_per_host=2, reconfigure_every_s=1200.0)
    snaps = [s for r in fleet.rounds(20) for s in r]  # 80 snapshots
    half = len(snaps) // 2
    produce(kafka_bootstrap, topic, snaps[:half])
    proc, metrics, thread, errors = start_in_thread(config(kafka_bootstrap, fresh_db, topic, stop_when_idle_s=0))
    try:
        wait_until(lambda: stored_offsets_total(fresh_db)[0] == half, "the first half committed")
        first_client = proc._consumer
        # The join's clock as if it had begun an hour ago with no assignment since: a stall.
        proc._joining_since = time.monotonic() - 3600
        wait_until(lambda: metrics.registry.get_sample_value(REJOINS) == 1 and proc._consumer is not first_client,
                   "a join with a new client")
        produce(kafka_bootstrap, topic, snaps[half:])
        wait_until(lambda: stored_offsets_total(fresh_db)[0] == len(snaps), "the second half committed")
        assert metrics.registry.get_sample_value(REJOINS) == 1  # the new client joined: no second restart
        assert proc._joining_since is None
    finally:
        proc.stop()
        thread.join(DEADLINE_S)
    assert not thread.is_alive() and not errors
    assert_billed_once(fresh_db, snaps)
