"""Refusals the decoder cannot see (issue 16 item 3): the database refuses a batch.

- For a data reason (a CHECK constraint a DBA added, SQLSTATE 23514): after two retries the
  processor bisects the batch, dead-letters exactly the refused records with the server's
  message and SQLSTATE, and writes everything else: the warehouse equals the oracle of the
  records that were not refused, and the books balance.
- For a lasting system reason (INSERT privilege revoked, SQLSTATE 42501): it retries with
  backoff, logs and counts the refusal, dead-letters nothing and never moves its stored offsets
  past unwritten data; once the privilege is granted back it resumes and ends exact.

Processors run in this test process against the shared stack (own topic, own database).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid

import msgspec
import psycopg
import pytest
from kafka import KafkaConsumer, TopicPartition

from collector.snapshot import Snapshot, Tenant
from collector.sources.simulate import SimulatedFleet
from tests.fix_faults import (
    assert_same_totals,
    caught_up,
    config,
    end_offsets_total,
    Feeder,
    oracle,
    produce_raw,
    read_topic,
    run_until_idle,
    start_in_thread,
    stored_offsets,
    wait_until,
)
from tests.integration.test_processor_roles import login  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Unique per run: consumer groups live on the broker, which concurrent test runs share.
GROUP = f"refusals-{uuid.uuid4().hex[:8]}"
POISON = "poison-ns"
# Rounds whose first / third / sixth GPU gets its first instance assigned to the refused namespace.
POISON_AT = {(3, 0), (11, 2), (19, 5)}
ROUNDS = 24
GPUS = 8  # 2 hosts x 4


def _poisoned(fleet: SimulatedFleet, rounds: int) -> tuple[list[Snapshot], set[int]]:
    """``rounds`` rounds of the fleet; returns them in production order and the indexes of the poison ones."""
    out: list[Snapshot] = []
    poison: set[int] = set()
    for n in range(rounds):
        for g, snap in enumerate(fleet.read()):
            if (n, g) in POISON_AT:
                inst = msgspec.structs.replace(snap.instances[0], tenant=Tenant(POISON, "pod-x", "c"))
                snap = dataclasses.replace(snap, instances=(inst, *snap.instances[1:]))
                poison.add(len(out))
            out.append(snap)
    return out, poison


def _positions(bootstrap: str, topic: str, total: int) -> dict[bytes, tuple[int, int]]:
    """value -> (partition, offset) of its first copy, reading the topic's ``total`` records."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        seen: list[tuple[int, int, bytes]] = []
        for _ in range(200):
            for recs in consumer.poll(timeout_ms=500).values():
                seen.extend((r.partition, r.offset, r.value) for r in recs)
            if len(seen) >= total:
                break
        out: dict[bytes, tuple[int, int]] = {}
        for p, o, v in sorted(seen):
            out.setdefault(v, (p, o))
        return out
    finally:
        consumer.close()


def test_check_constraint_dead_letters_exactly_the_refused_records(kafka_bootstrap: str, new_topic,
                                                                    fresh_db: str) -> None:  # type: ignore[no-untyped-def]
    topic = new_topic(partitions=4)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE tenant_usage_1h ADD CONSTRAINT dba_rule CHECK (namespace <> '{POISON}')")
    snaps, poison = _poisoned(SimulatedFleet(seed=16, hosts=2, gpus_per_host=4, reconfigure_every_s=1800.0), ROUNDS)
    # Round 7 re-sent (8 duplicates) and one record that is not JSON (a decode dead letter): the
    # bisection must keep every kind of outcome counted once.
    resent = snaps[7 * GPUS:8 * GPUS]
    records = [(s.key, s.to_json()) for s in snaps] + [(s.key, s.to_json()) for s in resent] + [(b"k", b"{not json")]
    assert produce_raw(kafka_bootstrap, topic, records) == len(records) == 24 * 8 + 8 + 1
    where = _positions(kafka_bootstrap, topic, len(records))
    refused_at = {where[snaps[i].to_json()] for i in poison}
    assert len(refused_at) == 3

    # All 201 records arrive in one batch (batch_records 2000): refused three times, then bisected.
    # A generous deadline: each refused record is published to the dead-letter topic (flushed)
    # before its commit, and the shared broker may be slow under a loaded test run.
    metrics = run_until_idle(config(kafka_bootstrap, fresh_db, topic, group=GROUP), timeout_s=300.0)

    good = [s for i, s in enumerate(snaps) if i not in poison] + resent
    expected = oracle(good)
    assert expected.snapshots == 24 * 8 - 3 and expected.duplicates == 8
    assert_same_totals(expected, fresh_db)
    with psycopg.connect(fresh_db) as conn:
        dead = conn.execute("SELECT partition, \"offset\", reason FROM dead_letters").fetchall()
        for table in ("instance_usage_1m", "tenant_usage_1m", "tenant_usage_1d"):
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE namespace = %s", (POISON,)).fetchone() == (0,)
    refused_rows = {(p, o): r for p, o, r in dead if r.startswith("database refused")}
    assert set(refused_rows) == refused_at
    for reason in refused_rows.values():
        assert "dba_rule" in reason and "(SQLSTATE 23514)" in reason, reason
    assert len(dead) == 3 + 1  # the refused ones and the record that is not JSON
    # Books: 201 records = 189 merged + 8 duplicates + 4 dead letters, and offsets at the end.
    stored = stored_offsets(fresh_db, GROUP).values()
    assert sum(v[0] for v in stored) == len(records)
    assert (sum(v[1] for v in stored), sum(v[2] for v in stored), sum(v[3] for v in stored)) == (189, 8, 4)
    assert metrics.dead_letters.labels("db_refused")._value.get() == 3
    # Two retries of the whole batch, then at least one refusal per bisection level.
    assert metrics.db_refusals.labels("23514", "data")._value.get() >= 3 + 3
    # The topic is an at-least-once notification (the decode dead letter went out with each try).
    published = read_topic(kafka_bootstrap, topic + ".dlq", expect=end_offsets_total(kafka_bootstrap, topic + ".dlq"))
    notified = {(m["partition"], m["offset"]) for m in map(json.loads, published) if m["kind"] == "db_refused"}
    assert notified == refused_at


def test_revoked_privilege_retries_without_dead_letters_then_resumes(kafka_bootstrap: str, new_topic, fresh_db: str,
                                                                     login, caplog) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    topic = new_topic(partitions=4)
    url = login("migmeter_writer", fresh_db)
    feeder = Feeder(kafka_bootstrap, topic, rounds=60, pause_s=0.05, seed=17)
    caplog.set_level(logging.WARNING, logger="migmeter.processor")
    proc, metrics, thread, errors = start_in_thread(config(kafka_bootstrap, url, topic, group=GROUP,
                                                           stop_when_idle_s=0.0, batch_records=100))
    try:
        feeder.start()
        wait_until(lambda: sum(v[0] for v in stored_offsets(fresh_db, GROUP).values()) > 0, "a first commit")
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("REVOKE INSERT ON gpu_usage_1m FROM migmeter_writer")
        refusals = metrics.db_refusals.labels("42501", "system")
        wait_until(lambda: refusals._value.get() >= 3, "three refusals of the revoked privilege")
        assert thread.is_alive() and not errors
        frozen = stored_offsets(fresh_db, GROUP)
        sent = feeder.finish()
        # Still refused: the stored offsets have not moved past unwritten data, nothing is dead-lettered.
        wait_until(lambda: refusals._value.get() >= 5, "two more refusals")
        assert stored_offsets(fresh_db, GROUP) == frozen
        with psycopg.connect(fresh_db) as conn:
            assert conn.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("GRANT INSERT ON gpu_usage_1m TO migmeter_writer")
        wait_until(caught_up(kafka_bootstrap, topic, fresh_db, GROUP), "the processor to catch up")
    finally:
        proc.stop()
        thread.join(60)
        feeder.join(30)
    assert not thread.is_alive() and not errors, errors
    assert_same_totals(oracle(sent), fresh_db)
    stored = stored_offsets(fresh_db, GROUP).values()
    assert sum(v[0] for v in stored) == end_offsets_total(kafka_bootstrap, topic) == 60 * 8
    assert sum(v[3] for v in stored) == 0
    assert metrics.dead_letters.labels("db_refused")._value.get() == 0
    lines = [r.getMessage() for r in caplog.records if "lasting system reason" in r.getMessage()]
    assert lines and "SQLSTATE 42501" in lines[0] and "permission denied" in lines[0], lines[:1]
    assert not [r for r in caplog.records if "bisect" in r.getMessage()]
    # Backoff, not a hot loop: --retry-max 2 s between refusals; not asserted on time, only that
    # the refusals were counted as retries too.
    assert metrics.db_retries._value.get() >= refusals._value.get()
