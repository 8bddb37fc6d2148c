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
