"""The sink against a real TimescaleDB: known values from the views, additive merge, offsets CAS."""

from __future__ import annotations

import psycopg
import pytest

from processor.fold import BatchFold
from processor.sink import OffsetConflict, Sink
from tests.processor.build import KNOWN_VALUES, T0, at, inst, mig

pytestmark = pytest.mark.integration

TOPIC = "t"


def _batch(snaps, sink, stored=None, partition=0, first_offset=0):  # type: ignore[no-untyped-def]
    states = sink.load_states({s.gpu_uuid for s in snaps})
    stored = sink.read_offsets(TOPIC, [partition]) if stored is None else stored
    fold = BatchFold(states, {(TOPIC, p): o for p, o in stored.items()})
    for i, s in enumerate(snaps):
        fold.add(TOPIC, partition, first_offset + i, s.key, s.to_json(), s)
    return fold.finish()


def test_known_values_from_the_views(fresh_db):  # type: ignore[no-untyped-def]
    sink = Sink(fresh_db, "g")
    snaps = []
    for n, (layout, _) in enumerate(KNOWN_VALUES):
        for t in range(15, 3601, 15):  # one hour of samples per GPU: (0, 3600] (v2: the first covers (0, 15])
            snaps.append(mig(at(t), [inst(i, p, u / 100) for i, (p, u) in enumerate(layout)], gpu=f"GPU-{n}"))
    snaps.append(mig(at(15), [inst(0, "2g.12gb", 0.5), inst(1, "1g.6gb", 1.0)], gpu="GPU-a30", total=4, model="A30"))
    snaps.sort(key=lambda s: s.ts)
    # Written in three batches, so every bucket is merged from parts.
    third = len(snaps) // 3
    offset = 0
    for part in (snaps[:third], snaps[third:2 * third], snaps[2 * third:]):
        sink.write(_batch(part, sink, first_offset=offset))
        offset += len(part)
    with psycopg.connect(fresh_db) as conn:
        for grain in ("1m", "1h", "1d"):
            got = {r[0]: tuple(float(x) for x in r[1:]) for r in conn.execute(
                f"SELECT gpu_uuid, round(simple_util_pct::numeric, 2), round(weighted_util_pct::numeric, 2), "
                f"round(whole_util_pct::numeric, 2) FROM gpu_utilization_{grain} WHERE bucket = %s", (T0,))}
            for n, (_, expected) in enumerate(KNOWN_VALUES):
                assert got[f"GPU-{n}"] == expected, grain
            assert got["GPU-a30"] == (75.00, 66.67, 50.00)
        hours = conn.execute("SELECT sum(gpu_hours), sum(alloc_gpu_hours) FROM gpu_utilization_1h "
                             "WHERE gpu_uuid LIKE 'GPU-_'").fetchone()
        assert hours[0] == pytest.approx(3.0)
        assert hours[1] == pytest.approx((4 + 5 + 7) / 7)
        (next_offset, merged) = conn.execute("SELECT next_offset, snapshots FROM sink_offsets").fetchone()
        assert next_offset == len(snaps) == merged
    sink.close()


def test_offset_conflict_rolls_back_everything(fresh_db):  # type: ignore[no-untyped-def]
    sink = Sink(fresh_db, "g")
    first = _batch([mig(at(0), [inst(0, "1g.10gb", 0.5)])], sink)
    sink.write(first)
    # A zombie still believes the partition starts at 0: its batch must not land.
    zombie = _batch([mig(at(15), [inst(0, "1g.10gb", 0.5)])], sink, stored={0: 0}, first_offset=0)
    with pytest.raises(OffsetConflict):
        sink.write(zombie)
    # A processor that never saw a stored row (expected None) conflicts too.
    fresh = _batch([mig(at(30), [inst(0, "1g.10gb", 0.5)])], sink, stored={0: None}, first_offset=0)
    with pytest.raises(OffsetConflict):
        sink.write(fresh)
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT sum(snapshots) FROM gpu_usage_1m").fetchone()[0] == 1
        assert conn.execute("SELECT last_ts FROM gpu_state").fetchone()[0] == at(0)
    # The sink's connection is still usable after the conflict.
    sink.write(_batch([mig(at(15), [inst(0, "1g.10gb", 0.5)])], sink, first_offset=1))
    sink.close()


def test_hour_and_day_rows_are_rolled_up_from_the_minutes(fresh_db):  # type: ignore[no-untyped-def]
    """1h and 1d rows are the database's rollup of the staged 1-minute partials (processor.sink
    step 3): sums add, min/max keep theirs, attributes are the latest minute's, across a day edge
    and across two batches."""
    # One 3g instance of 7 slices scraped every 15 s at 86310 + 15k, k = 0..10: covers
    # (86295, 86460]: 105 s of 2025-03-03 (23:58:15 - 24:00) and 60 s of 2025-03-04.
    # u = 0.25 / 0.75 alternating up to midnight (k <= 6), then 1.0; the container changes at k = 4
    # (inside the hour, inside batch 1); fb_used = 1000 + 100 k.
    def snap(k):  # type: ignore[no-untyped-def]
        u = (0.25 if k % 2 == 0 else 0.75) if k <= 6 else 1.0
        return mig(at(86310 + 15 * k), [inst(0, "3g.40gb", u, "a", "p", "before" if k < 4 else "after",
                                             fb_used=1000.0 + 100 * k)])
    sink = Sink(fresh_db, "g")
    sink.write(_batch([snap(k) for k in range(6)], sink))
    with psycopg.connect(fresh_db) as conn:
        # After batch 1: the 23:00 hour holds k = 0..5: 90 s, and the latest minute's container.
        assert conn.execute("SELECT seconds, container, samples FROM instance_usage_1h").fetchall() == [
            (90.0, "after", 6)]
    sink.write(_batch([snap(k) for k in range(6, 11)], sink, first_offset=6))
    w = 3 / 7
    with psycopg.connect(fresh_db) as conn:
        for grain, first in (("1h", at(86400 - 3600)), ("1d", at(0))):
            rows = conn.execute(
                f"SELECT bucket, seconds, alloc_gpu_seconds, util_seconds, busy_seconds, busy_gpu_seconds, samples, "
                f"util_min, util_max, fb_used_max_mib, container, cluster, slices FROM instance_usage_{grain} "
                f"ORDER BY bucket").fetchall()
            # Before midnight 4 x 0.25 + 3 x 0.75 over 15 s each = 48.75 busy seconds; after, 60 x 1.0.
            assert rows == [
                (first, 105.0, pytest.approx(105 * w), 105.0, 48.75, pytest.approx(48.75 * w), 7, 0.25, 0.75,
                 1600.0, "after", "c1", 3),
                (at(86400), 60.0, pytest.approx(60 * w), 60.0, 60.0, pytest.approx(60 * w), 4, 1.0, 1.0, 2000.0,
                 "after", "c1", 3)], grain
            tenants = conn.execute(f"SELECT bucket, namespace, pod, seconds, samples FROM tenant_usage_{grain} "
                                   f"ORDER BY bucket").fetchall()
            assert tenants == [(first, "a", "p", 105.0, 7), (at(86400), "a", "p", 60.0, 4)], grain
            gpus = conn.execute(f"SELECT bucket, seconds, snapshots, instance_samples, alloc_min, alloc_max, host "
                                f"FROM gpu_usage_{grain} ORDER BY bucket").fetchall()
            assert gpus == [(first, 105.0, 7, 7, pytest.approx(w), pytest.approx(w), "h1"),
                            (at(86400), 60.0, 4, 4, pytest.approx(w), pytest.approx(w), "h1")], grain
        # Every grain bills the same time: the 1m rows add up to the hours and the days.
        for family in ("instance_usage", "tenant_usage", "gpu_usage"):
            totals = [conn.execute(f"SELECT sum(seconds) FROM {family}_{g}").fetchone()[0] for g in ("1m", "1h", "1d")]
            assert totals == [165.0, 165.0, 165.0], family
    sink.close()


def test_a_sink_writes_only_the_grains_it_is_given(fresh_db):  # type: ignore[no-untyped-def]
    sink = Sink(fresh_db, "g", grains=("1d",))
    sink.write(_batch([mig(at(t), [inst(0, "1g.10gb", 0.5)]) for t in (15, 30, 45)], sink))
    with psycopg.connect(fresh_db) as conn:
        counts = [conn.execute(f"SELECT count(*), sum(seconds) FROM gpu_usage_{g}").fetchone() for g in ("1m", "1h", "1d")]
    assert counts == [(0, None), (0, None), (1, 45.0)]
    sink.close()
    with pytest.raises(ValueError, match="unknown grains"):
        Sink(fresh_db, "g", grains=("5m",))


def test_tenant_rows_are_derived_from_the_instance_rows_in_the_database(fresh_db):  # type: ignore[no-untyped-def]
    """The sink stages tenant rows from the staged instance rows and the fold's corrections for
    shared instances (processor.sink step 2); per tenant they add up to what each was billed."""
    from collector.snapshot import Instance, Metrics, Tenant, TenantShare
    from processor.aggregate import tenant_rows

    a, c = Tenant("team-a", "bert-0", "trainer"), Tenant("team-b", "etl-3", "worker")
    shared = Instance(3, "3g.40gb", 3, Metrics(gr_engine_active=0.8), a,
                      tenants=(TenantShare(a, 0.25), TenantShare(c, 0.75)))
    # Minute 0, two 15 s snapshots of one 7-slice GPU: team-b/etl-3 holds a 1g (u 0.5) and a 2g
    # (u unknown); the 3g (u 0.8) is shared, team-a/bert-0 (primary) 1/4, team-b/etl-3 3/4.
    layout = [inst(1, "1g.10gb", 0.5, "team-b", "etl-3"), inst(2, "2g.20gb", None, "team-b", "etl-3"), shared]
    sink = Sink(fresh_db, "g")
    batch = _batch([mig(at(15), layout), mig(at(30), layout)], sink)
    sink.write(batch)
    with psycopg.connect(fresh_db) as conn:
        got = {r[0]: tuple(float(x) for x in r[1:]) for r in conn.execute(
            "SELECT pod, seconds, alloc_gpu_seconds, util_alloc_gpu_seconds, busy_gpu_seconds, samples "
            "FROM tenant_usage_1m WHERE bucket = %s", (T0,))}
        hour = conn.execute("SELECT sum(alloc_gpu_seconds) FROM tenant_usage_1h").fetchone()[0]
    # bert-0: 3g x 1/4 of 30 s = 7.5 s; alloc 3/7 x 7.5; busy 0.8 x that; 2 samples.
    assert got["bert-0"] == pytest.approx((7.5, 22.5 / 7, 22.5 / 7, 18 / 7, 2))
    # etl-3: 1g 30 s + 2g 30 s + 3g x 3/4 of 30 s = 82.5 s; alloc (1 + 2) / 7 x 30 + 3/7 x 22.5 =
    # 157.5 / 7; util known for the 1g and the 3g: (30 + 67.5) / 7; busy (0.5 x 30 + 0.8 x 67.5) / 7
    # = 69 / 7; samples 2 x 3 (its two instances and its share of the third).
    assert got["etl-3"] == pytest.approx((82.5, 157.5 / 7, 97.5 / 7, 69 / 7, 6))
    # The Python derivation (tests, benchmarks) says the same as the database's.
    py = {k.pod: (v.seconds, v.alloc_gpu_seconds, v.util_alloc_gpu_seconds, v.busy_gpu_seconds, v.samples)
          for k, v in tenant_rows(batch.aggregates).items()}
    assert py.keys() == got.keys()
    for pod, values in got.items():
        assert py[pod] == pytest.approx(values), pod
    # Tenants add up to the GPU's allocated time: 6/7 of 30 s.
    assert float(hour) == pytest.approx(180 / 7)
    sink.close()
