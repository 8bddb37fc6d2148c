"""A database transaction that fails in the middle of a merge: the batch is rolled back and
retried (with the database's reason in the log), and the stored offsets never pass a record
whose data was not written. Once the cause is removed, the warehouse ends exact.

The failure is injected with a CHECK constraint on ``tenant_usage_1h`` (a hypertable written
after the 1-minute tables inside the same transaction) that refuses one namespace; one
snapshot of the feed carries that namespace."""

from __future__ import annotations

import uuid
import dataclasses
import time
from pathlib import Path

import psycopg
import pytest
from kafka import KafkaConsumer, TopicPartition

from collector.snapshot import Snapshot, Tenant, from_json
from tests.fix_faults import (
    Feeder,
    assert_same_totals,
    caught_up,
    end_offsets_total,
    free_port,
    oracle,
    processor_args,
    spawn,
    stored_offsets,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Unique per run: consumer groups live on the broker, which concurrent test runs share.
GROUP = f"merge-failure-{uuid.uuid4().hex[:8]}"
POISON = "poison-ns"
POISON_ROUND = 25


def _poison(n: int, snaps: list[Snapshot]) -> list[Snapshot]:
    """Round POISON_ROUND: the first GPU's first instance is assigned to the refused namespace."""
    if n != POISON_ROUND:
        return snaps
    first = snaps[0]
    inst = dataclasses.replace(first.instances[0], tenant=Tenant(POISON, "pod-1", "c"))
    return [dataclasses.replace(first, instances=(inst, *first.instances[1:])), *snaps[1:]]


def _records(bootstrap: str, topic: str, total: int) -> list[tuple[int, int, bytes]]:
    """Every (partition, offset, value) of the topic."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        out: list[tuple[int, int, bytes]] = []
        for _ in range(200):
            for recs in consumer.poll(timeout_ms=500).values():
                out.extend((r.partition, r.offset, r.value) for r in recs)
            if len(out) >= total:
                break
        return sorted(out)
    finally:
        consumer.close()


def test_constraint_violation_mid_merge_is_retried_and_offsets_hold(kafka_bootstrap: str, new_topic, fresh_db: str,
                                                                    tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    topic = new_topic(partitions=4)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE tenant_usage_1h ADD CONSTRAINT injected_fault CHECK (namespace <> '{POISON}')")
    port = free_port()
    proc = spawn("process", processor_args(kafka_bootstrap, fresh_db, topic, GROUP, port), tmp_path, metrics_port=port)
    try:
        # Live feed: batches before the poisoned round commit, then every batch holding it fails.
        feeder = Feeder(kafka_bootstrap, topic, rounds=50, pause_s=0.05, mutate=_poison)
        feeder.start()
        sent = feeder.finish()
        total = end_offsets_total(kafka_bootstrap, topic)
        records = _records(kafka_bootstrap, topic, total)
        assert len(records) == total == len(sent)
        (poison_part, poison_off), = [(p, o) for p, o, v in records if POISON.encode() in v]

        def stalled() -> bool:
            if proc.metrics().get("migmeter_processor_db_retries_total", 0) < 3:
                return False
            before = stored_offsets(fresh_db, GROUP)
            time.sleep(3.0)  # longer than one backoff (--retry-max 2): a retry would have committed by now
            return before == stored_offsets(fresh_db, GROUP)

        wait_until(stalled, "the poisoned batch to be retried without progress", alive=[proc])
        stored = stored_offsets(fresh_db, GROUP)
        # Never past the record whose data the database refused.
        assert stored.get(poison_part, (0,))[0] <= poison_off
        with psycopg.connect(fresh_db) as conn:
            for table in ("instance_usage_1m", "tenant_usage_1m", "tenant_usage_1h", "tenant_usage_1d"):
                assert conn.execute(f"SELECT count(*) FROM {table} WHERE namespace = %s", (POISON,)).fetchone()[0] == 0
        # What is committed is exactly the records below the stored offsets: nothing half-written.
        committed = [from_json(v) for p, o, v in records if o < stored.get(p, (0,))[0]]
        assert_same_totals(oracle(committed), fresh_db)
        assert "injected_fault" in proc.log.read_text(), "the retry does not say why the database refused the batch"
        assert proc.running()

        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("ALTER TABLE tenant_usage_1h DROP CONSTRAINT injected_fault")
        wait_until(caught_up(kafka_bootstrap, topic, fresh_db, GROUP), "the processor to catch up", alive=[proc])
    finally:
        rc = proc.terminate()
    assert rc == 0, proc.tail()
    expected = oracle(sent)
    assert_same_totals(expected, fresh_db)
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM tenant_usage_1h WHERE namespace = %s", (POISON,)).fetchone()[0] == 1
    assert sum(v[3] for v in stored_offsets(fresh_db, GROUP).values()) == 0
