"""The v2 time model end to end (issue 11's "done when" list, issue 18 item 4), against the real
Kafka and TimescaleDB: snapshots go through a topic and ``Processor``; numbers are by hand.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import psycopg
import pytest

from collector.snapshot import Snapshot
from warehouse import reports
from processor.fold import BatchFold
from processor.sink import Sink, StateConflict
from tests.fix_faults import config, produce, produce_raw, run_until_idle, start_in_thread
from tests.processor.build import T0, at, inst, mig

pytestmark = pytest.mark.integration

HOUR = 3600.0


def _src(s: Snapshot, source: str = "test", host: str = "h1") -> Snapshot:
    return Snapshot(s.ts, s.interval_s, source, s.cluster, host, s.gpu_uuid, s.gpu_index, s.gpu_model,
                    s.mig_enabled, s.total_slices, s.instances)


def _seven_g(ts: datetime, interval_s: float = 15.0, util: float | None = 0.5, **kw) -> Snapshot:  # type: ignore[no-untyped-def]
    return mig(ts, [inst(0, "7g.80gb", util, "team", "pod")], interval_s=interval_s, **kw)


def _process(bootstrap: str, db: str, topic: str, snaps: list[Snapshot], group: str | None = None):  # type: ignore[no-untyped-def]
    produce(bootstrap, topic, snaps)
    return run_until_idle(config(bootstrap, db, topic, group))


def _hours(db: str, sql: str, *params: object) -> dict:  # type: ignore[type-arg]
    with psycopg.connect(db) as conn:
        return {r[0]: tuple(r[1:]) for r in conn.execute(sql, params).fetchall()}  # type: ignore[arg-type]


def test_two_interleaved_streams_bill_one_gpu_hour_per_hour(kafka_bootstrap, new_topic, fresh_db, caplog):  # type: ignore[no-untyped-def]
    # One 7g GPU fed by two collectors (node URL and service URL) at 15 s, offset by 7 s:
    # A at 15, 30, ..., 3600 and B at 7, 22, ..., 3592. Each covers (previous ts of the GPU, ts],
    # so the hour [T0, T0+3600) holds exactly (0, 3600] = 3600 s; B's first snapshot covers
    # (-8, 7]: 8 s in the hour before. Before v2 this billed 2.0 GPU-hours per hour.
    a = [_src(_seven_g(at(15 * k)), "dcgm", "node-1") for k in range(1, 241)]
    b = [_src(_seven_g(at(15 * k + 7)), "dcgm", "svc-1") for k in range(0, 240)]
    topic = new_topic(partitions=1)
    m = _process(kafka_bootstrap, fresh_db, topic, sorted(a + b, key=lambda s: s.ts))
    got = _hours(fresh_db, "SELECT bucket, seconds, alloc_gpu_seconds FROM gpu_usage_1h ORDER BY bucket")
    assert got[T0] == pytest.approx((3600.0, 3600.0))  # 1.000 allocated GPU-hours
    assert got[T0 - timedelta(hours=1)] == pytest.approx((8.0, 8.0))
    with psycopg.connect(fresh_db) as conn:
        worst = conn.execute("SELECT max(seconds) FROM gpu_usage_1m").fetchone()[0]
        off = conn.execute("SELECT snapshots, trimmed, duplicates, dead_letters FROM sink_offsets").fetchone()
    assert worst <= 60.0 + 1e-9  # one GPU's minute never holds more than 60 s
    assert off == (480, 0, 0, 0)  # in order: nothing overlaps, every record billed whole
    assert m.registry.get_sample_value("migmeter_processor_snapshots_total") == 480
    assert m.registry.get_sample_value("migmeter_processor_trimmed_seconds_total") == 0
    # The second feed is reported once, with both names (B's 7 came first, then A's 15).
    fed = [r.getMessage() for r in caplog.records if "fed by more than one stream" in r.getMessage()]
    assert fed == ["GPU GPU-a is fed by more than one stream (dcgm@svc-1 and dcgm@node-1): overlapping time "
                   "is billed once, the rest trimmed"]


def test_outage_is_unmetered_and_the_month_reconciles_to_capacity(kafka_bootstrap, new_topic, fresh_db):  # type: ignore[no-untyped-def]
    # 15 s scrapes at 15..300 and 900..1800. (0, 300] is billed (300 s); 900 follows a 600 s
    # silence (> 3 x 15 s), so it covers only (885, 900]; then (900, 1800]: 915 s.
    # Tenant 300 + 915 = 1,215 s; unmetered (300, 885] = 585 s; capacity 0..1800 = 1,800 s.
    snaps = [_seven_g(at(t)) for t in list(range(15, 301, 15)) + list(range(900, 1801, 15))]
    _process(kafka_bootstrap, fresh_db, new_topic(partitions=1), snaps)
    with psycopg.connect(fresh_db) as conn:
        g = conn.execute("SELECT sum(gpu_hours) * 3600, sum(unmetered_gpu_hours) * 3600, "
                         "sum(capacity_gpu_hours) * 3600 FROM gpu_usage_hours_1d").fetchone()
        report = reports.chargeback(conn, date(2025, 3, 1))
        view = conn.execute("SELECT tenant_gpu_hours, unmetered_gpu_hours, physical_gpu_hours, difference_gpu_hours "
                            "FROM chargeback_reconciliation_monthly").fetchone()
        cov = conn.execute("SELECT coverage_pct FROM gpu_utilization_1h").fetchone()[0]
    assert g == pytest.approx((1215.0, 585.0, 1800.0))
    lines = {r["line"]: r["alloc_gpu_hours"] for r in report.as_dicts()}
    assert lines == pytest.approx({"tenant": 1215 / 3600, "unallocated": 0.0, "unmetered": 585 / 3600})
    assert report.as_dicts()[-1]["namespace"] == "(unmetered)"
    assert "-> reconciles" in report.notes[0] and "capacity 0.500000" in report.notes[0]
    assert view == pytest.approx((1215 / 3600, 585 / 3600, 0.5, 0.0), abs=1e-9)
    assert cov == pytest.approx(100 * 1215 / 1800)  # 67.5 % of the GPU's life was metered


def test_five_minute_scrapes_split_across_hours(kafka_bootstrap, new_topic, fresh_db):  # type: ignore[no-untyped-def]
    # 300 s scrapes at hh:02:30 + k*300 from 10:02:30 to 12:02:30 (25 snapshots). The first
    # covers (09:57:30, 10:02:30]: 150 s in hour 9, 150 s in hour 10; the last ends at 12:02:30.
    # Hour 9: 150 s; hours 10 and 11: 3,600 s each; hour 12: 150 s. Every minute holds <= 60 s.
    start = T0 + timedelta(hours=10, minutes=2, seconds=30)
    snaps = [_seven_g(start + timedelta(seconds=300 * k), interval_s=300) for k in range(25)]
    _process(kafka_bootstrap, fresh_db, new_topic(partitions=1), snaps)
    got = _hours(fresh_db, "SELECT bucket, seconds FROM gpu_usage_1h")
    assert {(b - T0).total_seconds() / 3600: v[0] for b, v in got.items()} == pytest.approx(
        {9: 150.0, 10: 3600.0, 11: 3600.0, 12: 150.0})
    minutes = _hours(fresh_db, "SELECT bucket, seconds FROM gpu_usage_1m")
    # (09:57:30, 12:02:30] = 7,500 s: 09:57 and 12:02 hold 30 s each, the 124 minutes between 60 s.
    assert len(minutes) == 126 and max(v[0] for v in minutes.values()) == pytest.approx(60.0)
    assert sorted(v[0] for v in minutes.values())[:3] == pytest.approx([30.0, 30.0, 60.0])


def test_unknown_utilization_stays_unknown(kafka_bootstrap, new_topic, fresh_db):  # type: ignore[no-untyped-def]
    # GPU-k: 3g:95 (team a), 2g:70 (team b), 2g:no value (team c), one hour (0, 3600].
    #   weighted = (3/7*.95 + 2/7*.70) / (5/7) = 4.25/5 = 85.00 %; whole GPU = the same busy over
    #   the time with known utilization (7/7 - 2/7 unknown) = 85.00 % (before v2: 60.71 %).
    # GPU-u: one 7g without a value: every utilization NULL, and 1 h unmeasured.
    known = [mig(at(t), [inst(0, "3g.40gb", 0.95, "a", "p"), inst(1, "2g.20gb", 0.70, "b", "p"),
                         inst(2, "2g.20gb", None, "c", "p")], gpu="GPU-k") for t in range(15, 3601, 15)]
    unknown = [mig(at(t), [inst(0, "7g.80gb", None, "d", "p")], gpu="GPU-u") for t in range(15, 3601, 15)]
    _process(kafka_bootstrap, fresh_db, new_topic(partitions=2), known + unknown)
    with psycopg.connect(fresh_db) as conn:
        views = {r[0]: r[1:] for r in conn.execute(
            "SELECT gpu_uuid, round(weighted_util_pct::numeric, 2), round(whole_util_pct::numeric, 2), "
            "simple_util_pct, unmeasured_gpu_hours FROM gpu_utilization_1h").fetchall()}
        cb = {r["namespace"]: r for r in reports.chargeback(conn, date(2025, 3, 1)).as_dicts()}
        util = reports.utilization(conn, at(0), at(3600), by="hour", gpu="GPU-u").as_dicts()
    assert views["GPU-k"][:2] == (85.00, 85.00)
    assert views["GPU-k"][2] == pytest.approx(82.5)  # simple mean over known values: (95 + 70) / 2
    assert views["GPU-k"][3] == pytest.approx(2 / 7)
    assert views["GPU-u"] == (None, None, None, pytest.approx(1.0))
    assert [r["whole_util_pct"] for r in util] == [None, None]  # the hour and the total: unknown, not 0 %
    assert cb["c"]["unmeasured_gpu_hours"] == pytest.approx(2 / 7) and cb["c"]["used_gpu_hours"] == 0
    assert cb["a"]["unmeasured_gpu_hours"] == pytest.approx(0.0)
    assert cb["d"]["unmeasured_gpu_hours"] == pytest.approx(1.0) and cb["d"]["alloc_util_pct"] is None


def test_backfill_of_last_month_bills_once_beside_live(kafka_bootstrap, new_topic, fresh_db):  # type: ignore[no-untyped-def]
    # Live: the GPU is metered from 2025-04-01 00:00 for an hour (15 s, dcgm). Then an hour of
    # March 10 is backfilled from Prometheus (step 60 s: 10:01 .. 11:00 covers (10:00, 11:00]):
    # billed once into March's buckets, the GPU's state clock stays in April. The same backfill
    # again bills nothing (60 duplicates). A live collector whose clock jumps back 2 h is still
    # a dead letter (clock_backward).
    apr = datetime(2025, 4, 1, tzinfo=timezone.utc)
    mar = datetime(2025, 3, 10, 10, tzinfo=timezone.utc)
    live = [_src(_seven_g(apr + timedelta(seconds=t)), "dcgm") for t in range(15, 3601, 15)]
    history = [_src(_seven_g(mar + timedelta(seconds=t), interval_s=60), "prometheus") for t in range(60, 3601, 60)]
    jumped = _src(_seven_g(apr + timedelta(seconds=3600 - 2 * 3600 + 30)), "dcgm")
    topic = new_topic(partitions=1)
    _process(kafka_bootstrap, fresh_db, topic, live)
    _process(kafka_bootstrap, fresh_db, topic, history)
    again = _process(kafka_bootstrap, fresh_db, topic, history + [jumped])
    with psycopg.connect(fresh_db) as conn:
        march = conn.execute("SELECT sum(alloc_gpu_seconds) FROM tenant_usage_1d WHERE bucket < %s", (apr,)).fetchone()[0]
        april = conn.execute("SELECT sum(alloc_gpu_seconds) FROM tenant_usage_1d WHERE bucket >= %s", (apr,)).fetchone()[0]
        last_ts = conn.execute("SELECT last_ts FROM gpu_state").fetchone()[0]
        off = conn.execute("SELECT snapshots, trimmed, duplicates, dead_letters FROM sink_offsets").fetchone()
        dl = conn.execute("SELECT reason FROM dead_letters").fetchall()
        rec = reports.reconciliation(conn, *reports.month_range(date(2025, 3, 1)))
    assert march == pytest.approx(3600.0) and april == pytest.approx(3600.0)
    assert last_ts == apr + timedelta(hours=1)
    assert off == (240 + 60, 0, 60, 1)
    # the second backfill: 60 duplicates x 60 s not billed again
    assert again.registry.get_sample_value("migmeter_processor_trimmed_seconds_total") == 3600.0
    assert again.registry.get_sample_value("migmeter_processor_duplicates_total") == 60
    assert len(dl) == 1 and "behind the GPU's last ts" in dl[0][0]
    # March: 1 h billed, then the GPU's life runs on from 11:00 Mar 10 to April: unmetered
    # (Mar 10 11:00 .. Apr 1 00:00) = 13 h + 21 days = 517 h; capacity 518 h.
    assert rec.ok and rec.tenant_gpu_hours == pytest.approx(1.0) and rec.unmetered_gpu_hours == pytest.approx(517.0)


def test_gpu_on_two_partitions_with_two_processors_bills_180_s(kafka_bootstrap, new_topic, fresh_db):  # type: ignore[no-untyped-def]
    # Issue 18 item 4: S1 -> p0, S2 -> p1, S3 -> p1, S2 re-sent -> p0 (a producer not keyed to
    # partitions by GPU), two processors. S1 (0, 60], S2 (60, 120], S3 (120, 180]: 180 s
    # whatever order they are folded in; the re-sent S2 bills nothing. Before: 240 s, and
    # gpu_state.last_ts moved back from S3 to S2. A record keyed by something else than its
    # gpu_uuid is a dead letter key_mismatch.
    s1, s2, s3 = (_seven_g(at(60 * k), interval_s=60) for k in (1, 2, 3))
    stray = _seven_g(at(240), interval_s=60, gpu="GPU-b")
    topic = new_topic(partitions=2)
    produce_raw(kafka_bootstrap, topic, [(s1.key, s1.to_json())], partition=0)
    produce_raw(kafka_bootstrap, topic, [(s2.key, s2.to_json()), (s3.key, s3.to_json())], partition=1)
    produce_raw(kafka_bootstrap, topic, [(s2.key, s2.to_json()), (b"GPU-a", stray.to_json())], partition=0)
    cfg = config(kafka_bootstrap, fresh_db, topic, stop_when_idle_s=3.0)
    runs = [start_in_thread(cfg) for _ in range(2)]
    for proc, _, thread, errors in runs:
        thread.join(120)
        assert not thread.is_alive() and not errors
    with psycopg.connect(fresh_db) as conn:
        billed = conn.execute("SELECT sum(seconds) FROM gpu_usage_1m WHERE gpu_uuid = 'GPU-a'").fetchone()[0]
        last_ts = conn.execute("SELECT last_ts FROM gpu_state WHERE gpu_uuid = 'GPU-a'").fetchone()[0]
        counts = conn.execute("SELECT sum(next_offset), sum(snapshots + trimmed), sum(duplicates), "
                              "sum(dead_letters) FROM sink_offsets").fetchone()
        reason = conn.execute("SELECT reason FROM dead_letters").fetchone()[0]
    assert billed == pytest.approx(180.0)
    assert last_ts == at(180)
    assert counts == (5, 3, 1, 1)  # 5 records = 3 billed + 1 duplicate + 1 dead letter
    assert "is not the snapshot's gpu_uuid 'GPU-b'" in reason
    assert sum(m.registry.get_sample_value("migmeter_processor_dead_letters_total", {"kind": "key_mismatch"}) or 0
               for _, m, _, _ in runs) == 1


def test_sink_fence_refuses_a_batch_folded_on_a_stale_state(fresh_db):  # type: ignore[no-untyped-def]
    # Two processors read GPU-a's state (none yet), both fold a snapshot of it. The first
    # commits; the second must not: its billed set is stale (it would bill (0, 60] again).
    sink = Sink(fresh_db, "g")
    try:
        folds = []
        for partition, snap in ((0, _seven_g(at(60), 60)), (1, _seven_g(at(120), 120))):
            f = BatchFold(sink.load_states(["GPU-a"]), {("t", partition): None})
            f.add("t", partition, 0, snap.key, snap.to_json(), snap)
            folds.append(f.finish())
        sink.write(folds[0])
        with pytest.raises(StateConflict):
            sink.write(folds[1])
        with psycopg.connect(fresh_db) as conn:
            assert conn.execute("SELECT sum(seconds) FROM gpu_usage_1m").fetchone()[0] == pytest.approx(60.0)
            assert conn.execute("SELECT count(*) FROM sink_offsets").fetchone()[0] == 1  # p1 rolled back
        # Re-read and re-fold, as the processor does: (60, 120] is billed, nothing twice.
        f = BatchFold(sink.load_states(["GPU-a"]), {("t", 1): None})
        snap = _seven_g(at(120), 120)
        f.add("t", 1, 0, snap.key, snap.to_json(), snap)
        sink.write(f.finish())
        with psycopg.connect(fresh_db) as conn:
            assert conn.execute("SELECT sum(seconds) FROM gpu_usage_1m").fetchone()[0] == pytest.approx(120.0)
            assert conn.execute("SELECT version, billed FROM gpu_state").fetchone() == (
                2, [[int(at(0).timestamp() * 1e6), int(at(120).timestamp() * 1e6)]])
    finally:
        sink.close()
