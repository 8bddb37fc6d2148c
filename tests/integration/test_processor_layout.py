"""Layout events and intervals, duplicates, late data and poison records, through Kafka into the database."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.fix_faults import config, produce, produce_raw, read_topic, run_until_idle, stored_offsets_total
from tests.processor.build import T0, at, inst, mig, whole

pytestmark = pytest.mark.integration


def test_reconfiguration_sequence_gives_exact_events_and_intervals(kafka_bootstrap, new_topic, fresh_db):  # type: ignore[no-untyped-def]
    topic = new_topic(partitions=1)
    a = inst(0, "3g.40gb", 0.5, "ns1", "p1")
    snaps = [
        mig(at(0), [a, inst(1, "2g.20gb", 0.5)]),
        mig(at(15), [a, inst(1, "2g.20gb", 0.5, "ns2", "p2")]),   # tenant_changed 1
        mig(at(30), [a]),                                          # destroyed 1
        mig(at(45), [a, inst(2, "1g.10gb", 0.1)]),                 # created 2
        mig(at(60), [inst(0, "4g.40gb", 0.5, "ns1", "p1"), inst(2, "1g.10gb", 0.1)]),  # profile_changed 0
        # MIG off -> on on a second GPU; MIG on with no instances = allocation 0.
        whole(at(0), 0.3, gpu="GPU-b", ns="t", pod="w"),
        mig(at(15), [], gpu="GPU-b"),
        mig(at(30), [inst(1, "7g.40gb", 0.2)], gpu="GPU-b"),
    ]
    produce(kafka_bootstrap, topic, snaps)
    run_until_idle(config(kafka_bootstrap, fresh_db, topic, batch_records=3))  # many small batches
    with psycopg.connect(fresh_db) as conn:
        events = conn.execute("SELECT gpu_uuid, ts, event, gi_id, before->>'namespace', after->>'namespace', "
                              "after->>'profile' FROM layout_events ORDER BY gpu_uuid, ts, source_offset, "
                              "event IN ('created'), gi_id NULLS FIRST").fetchall()
        intervals = conn.execute("SELECT gpu_uuid, gi_id, profile, namespace, valid_from, valid_to "
                                 "FROM instance_intervals ORDER BY gpu_uuid, gi_id, valid_from").fetchall()
        alloc = conn.execute("SELECT bucket, allocation_pct FROM gpu_utilization_1m WHERE gpu_uuid = 'GPU-b' "
                             "ORDER BY bucket").fetchall()
        b_seconds = conn.execute("SELECT sum(seconds), sum(alloc_gpu_seconds) FROM gpu_usage_1m "
                                 "WHERE gpu_uuid = 'GPU-b'").fetchone()
    assert events == [
        ("GPU-a", at(15), "tenant_changed", 1, "", "ns2", "2g.20gb"),
        ("GPU-a", at(30), "destroyed", 1, "ns2", None, None),
        ("GPU-a", at(45), "created", 2, None, "", "1g.10gb"),
        ("GPU-a", at(60), "profile_changed", 0, "ns1", "ns1", "4g.40gb"),
        ("GPU-b", at(15), "mig_enabled", None, None, None, None),
        ("GPU-b", at(15), "destroyed", -1, "t", None, None),
        ("GPU-b", at(30), "created", 1, None, "", "7g.40gb"),
    ]
    assert intervals == [
        ("GPU-a", 0, "3g.40gb", "ns1", at(0), at(60)),
        ("GPU-a", 0, "4g.40gb", "ns1", at(60), None),
        ("GPU-a", 1, "2g.20gb", "", at(0), at(15)),
        ("GPU-a", 1, "2g.20gb", "ns2", at(15), at(30)),
        ("GPU-a", 2, "1g.10gb", "", at(45), None),
        ("GPU-b", -1, "full", "t", at(0), at(15)),
        ("GPU-b", 1, "7g.40gb", "", at(30), None),
    ]
    # GPU-b: 15 s whole (w=1), 15 s MIG with nothing (w=0), 15 s one 7g (w=1): 2/3 allocated.
    assert b_seconds == (45.0, 30.0)
    # v2 time model: the first snapshot (ts 0) covers (-15, 0], the minute before T0 (100 %
    # allocated); T0's minute holds (0, 15] MIG with nothing and (15, 30] the 7g: 50 %.
    assert [round(float(p), 2) for _, p in alloc] == [100.0, 50.0]


def test_duplicates_and_late_data(kafka_bootstrap, new_topic, fresh_db):  # type: ignore[no-untyped-def]
    topic = new_topic(partitions=1)
    s = {t: mig(at(t), [inst(0, "7g.40gb", 0.5, "a", "p")]) for t in (0, 15, 30, 45, 60, 75)}
    late = mig(at(62), [inst(0, "7g.40gb", 0.5, "a", "p")])  # older than 75 when it arrives: duplicate
    # First run: 0, 15, 30(twice), 15 again.
    produce(kafka_bootstrap, topic, [s[0], s[15], s[30], s[30], s[15]])
    run_until_idle(config(kafka_bootstrap, fresh_db, topic))
    # Second run (state comes from the database now): 30 again, then 60 arriving before 45, 75, late 62.
    produce(kafka_bootstrap, topic, [s[30], s[60], s[45], s[75], late])
    run_until_idle(config(kafka_bootstrap, fresh_db, topic))
    assert stored_offsets_total(fresh_db) == (10, 5, 5, 0)  # merged 0,15,30,60,75; 45 and 62 too old
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute("SELECT bucket, snapshots, seconds FROM gpu_usage_1m ORDER BY bucket").fetchall()
        (last,) = conn.execute("SELECT last_ts FROM gpu_state").fetchone()
    # v2 time model: 0 covers (-15, 0] (the minute before); 15, 30 and 60 (after a 30 s gap,
    # <= 3 x 15 s) cover (0, 60]; 75 covers (60, 75]. 45 and 62 lie inside billed time.
    assert rows == [(at(-60), 1, 15.0), (at(0), 3, 60.0), (at(60), 1, 15.0)]
    assert last == at(75)


def test_late_but_newer_merges_into_its_old_bucket(kafka_bootstrap, new_topic, fresh_db):  # type: ignore[no-untyped-def]
    topic = new_topic(partitions=1)
    produce(kafka_bootstrap, topic, [mig(at(15), [inst(0, "1g.10gb", 1.0)]), mig(at(600), [inst(0, "1g.10gb", 1.0)], gpu="GPU-z")])
    run_until_idle(config(kafka_bootstrap, fresh_db, topic))
    # GPU-a's next snapshot arrives much later than GPU-z's, but is newer than GPU-a's last ts.
    produce(kafka_bootstrap, topic, [mig(at(30), [inst(0, "1g.10gb", 1.0)])])
    run_until_idle(config(kafka_bootstrap, fresh_db, topic))
    with psycopg.connect(fresh_db) as conn:
        row = conn.execute("SELECT snapshots, seconds, busy_gpu_seconds FROM gpu_usage_1m "
                           "WHERE gpu_uuid = 'GPU-a' AND bucket = %s", (T0,)).fetchone()
    assert row == (2, 30.0, pytest.approx(30 / 7))


def test_poison_records_go_to_the_dead_letter_topic_and_table(kafka_bootstrap, new_topic, fresh_db):  # type: ignore[no-untyped-def]
    topic = new_topic(partitions=1)
    good = mig(at(0), [inst(0, "1g.10gb", 0.5)])
    bad_ratio = good.to_dict()
    bad_ratio["ts"] = "2025-03-03T00:00:15.000Z"
    bad_ratio["instances"][0]["metrics"]["gr_engine_active"] = 1.7
    v2 = dict(good.to_dict(), v=2)
    future = mig(at(0).replace(year=2099), [inst(0, "1g.10gb", 0.5)])
    backward = mig(at(-7200), [inst(0, "1g.10gb", 0.5)])
    records = [
        (good.key, good.to_json()),
        (b"GPU-a", b"\xff\xfe not json"),
        (b"GPU-a", json.dumps(bad_ratio).encode()),
        (b"GPU-a", json.dumps(v2).encode()),
        (b"GPU-a", None),
        (future.key, future.to_json()),
        (backward.key, backward.to_json()),
        (good.key, mig(at(15), [inst(0, "1g.10gb", 0.5)]).to_json()),
    ]
    produce_raw(kafka_bootstrap, topic, records)
    run_until_idle(config(kafka_bootstrap, fresh_db, topic))
    assert stored_offsets_total(fresh_db) == (8, 2, 0, 6)
    with psycopg.connect(fresh_db) as conn:
        table = conn.execute('SELECT "offset", reason, payload_bytes FROM dead_letters ORDER BY "offset"').fetchall()
        (snapshots,) = conn.execute("SELECT sum(snapshots) FROM gpu_usage_1m").fetchone()
    assert [o for o, _, _ in table] == [1, 2, 3, 4, 5, 6]
    reasons = [r for _, r, _ in table]
    assert reasons[0].startswith("not JSON")
    assert "gr_engine_active=1.7 outside 0..1" in reasons[1]
    assert "unsupported wire version" in reasons[2]
    assert "no value" in reasons[3]
    assert "ahead of the processor clock" in reasons[4]
    assert "behind the GPU's last ts" in reasons[5]
    assert snapshots == 2
    published = [json.loads(v) for v in read_topic(kafka_bootstrap, topic + ".dlq", expect=6)]
    assert sorted(m["offset"] for m in published) == [1, 2, 3, 4, 5, 6]
    first = next(m for m in published if m["offset"] == 1)
    assert (first["topic"], first["partition"], first["kind"], first["key"]) == (topic, 0, "decode", "GPU-a")
    assert first["reason"] == reasons[0] and "not json" in first["payload"]
