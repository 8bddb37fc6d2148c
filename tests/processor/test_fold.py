"""BatchFold: merged / duplicate / dead-letter decisions, the clock rule, partition progress."""

from __future__ import annotations

import pytest

from collector.snapshot import Snapshot, from_json
from migmeter.errors import BadSnapshot
from processor.aggregate import tenant_rows
from processor.fold import DEAD_LETTER, DUPLICATE, MERGED, BatchFold
from processor.layout import GpuState
from tests.processor.build import at, inst, mig

NOW = at(86400).timestamp()  # the processor's clock in these tests: one day after T0


def _fold(states=None, stored=None, **kw):  # type: ignore[no-untyped-def]
    return BatchFold(states or {}, stored or {}, clock=lambda: NOW, **kw)


def _add(fold, offset, snap, partition=0):  # type: ignore[no-untyped-def]
    return fold.add("t", partition, offset, snap.key, snap.to_json(), snap)


def test_duplicates_and_late_but_newer():
    f = _fold()
    s = [mig(at(t), [inst(0, "1g.10gb", 0.5)]) for t in (0, 15, 30)]
    assert [_add(f, 0, s[0]), _add(f, 1, s[2]), _add(f, 2, s[2]), _add(f, 3, s[1])] == [MERGED, MERGED, DUPLICATE,
                                                                                          DUPLICATE]
    batch = f.finish()
    assert batch.progress[("t", 0)].snapshots == 2 and batch.progress[("t", 0)].duplicates == 2
    assert batch.states["GPU-a"].last_ts == at(30)


def test_stored_state_makes_old_snapshots_duplicates():
    stored = GpuState.from_row(at(30), True, {"0": {"profile": "1g.10gb", "slices": 1}})
    f = _fold({"GPU-a": stored}, {("t", 0): 7})
    assert _add(f, 7, mig(at(30), [inst(0, "1g.10gb", 0.5)])) == DUPLICATE
    assert _add(f, 8, mig(at(45), [inst(0, "1g.10gb", 0.5)])) == MERGED
    p = f.finish().progress[("t", 0)]
    assert (p.expected, p.next_offset, p.snapshots, p.duplicates) == (7, 9, 1, 1)


def test_future_clock_is_dead_lettered_with_reason():
    f = _fold(max_future_skew_s=300)
    assert _add(f, 0, mig(at(86400 + 299), [])) == MERGED
    assert _add(f, 1, mig(at(86400 + 301), [])) == DEAD_LETTER
    (dl,) = f.finish().dead_letters
    assert dl.kind == "clock_future" and "ahead of the processor clock" in dl.reason and dl.offset == 1


def test_backward_jump_beyond_skew_is_dead_lettered_not_a_duplicate():
    f = _fold(max_backward_skew_s=3600)
    _add(f, 0, mig(at(7200), []))
    # Exactly at the limit: accepted; v2 time model: its own 15 s (3585, 3600] were never billed,
    # so they are billed (before v2 it was a duplicate). Re-sent, it bills nothing.
    assert _add(f, 1, mig(at(7200 - 3600), [])) == MERGED
    assert _add(f, 3, mig(at(7200 - 3600), [])) == DUPLICATE
    assert _add(f, 2, mig(at(7200 - 3601), [])) == DEAD_LETTER
    batch = f.finish()
    assert [d.kind for d in batch.dead_letters] == ["clock_backward"]
    assert "behind the GPU's last ts" in batch.dead_letters[0].reason


def test_reset_clock_on_a_new_gpu_is_dead_lettered():
    """A GPU never seen before whose first snapshot says 1970: no state to compare with, the age rule catches it."""
    from datetime import datetime, timezone

    f = _fold(max_age_s=30 * 86400)
    assert _add(f, 0, mig(datetime(1970, 1, 1, 0, 0, 15, tzinfo=timezone.utc), [])) == DEAD_LETTER
    assert _add(f, 1, mig(at(86400 - 29 * 86400), [])) == MERGED  # 29 days old: a backfill, merged
    batch = f.finish()
    assert [d.kind for d in batch.dead_letters] == ["clock_past"]
    assert "a reset clock" in batch.dead_letters[0].reason and batch.dead_letters[0].offset == 0


def test_age_limit_zero_means_no_limit():
    from datetime import datetime, timezone

    f = _fold(max_age_s=0)
    assert _add(f, 0, mig(datetime(1971, 1, 1, tzinfo=timezone.utc), [])) == MERGED


def test_bad_record_is_counted_and_kept_with_its_payload():
    f = _fold()
    try:
        from_json(b"{not json")
    except BadSnapshot as exc:
        assert f.add("t", 3, 41, b"k", b"{not json", exc) == DEAD_LETTER
    batch = f.finish()
    (dl,) = batch.dead_letters
    assert (dl.topic, dl.partition, dl.offset, dl.key, dl.payload, dl.kind) == ("t", 3, 41, b"k", b"{not json", "decode")
    assert dl.reason.startswith("not JSON")
    assert batch.progress[("t", 3)].dead_letters == 1 and batch.progress[("t", 3)].next_offset == 42
    assert batch.records == 1


def test_every_record_is_accounted_for():
    f = _fold()
    for off in range(30):
        snap = mig(at(15 * (off % 10)), [inst(0, "1g.10gb", 0.5)], gpu=f"GPU-{off % 3}")
        _add(f, off, snap, partition=off % 2)
    b = f.finish()
    assert b.records == 30 == len(f)
    # v2 time model: a snapshot merges when any of its covered time is new. Per GPU (ts index):
    # GPU-0 gets 0,3,6,9,2,5,8,1,4,7: 0 covers (-15,0], 3/6/9 (gap 45 s = 3 x 15) cover up to 135;
    #   the rest lie inside (-15,135]: 4 merged.
    # GPU-1 gets 1,4,7,0,3,6,9,2,5,8: 1,4,7 cover (0,105]; 0 fills (-15,0] before the life; 9
    #   covers (105,135]: 5 merged.
    # GPU-2 gets 2,5,8,1,4,7,0,3,6,9: 2,5,8 cover (15,120]; 1 fills (0,15]; 0 fills (-15,0];
    #   9 covers (120,135]: 6 merged. 4 + 5 + 6 = 15 merged, 15 duplicates.
    assert sum(p.snapshots for p in b.progress.values()) == 15
    assert sum(p.duplicates for p in b.progress.values()) == 15
    assert sum(p.trimmed for p in b.progress.values()) == 0
    assert {tp: p.next_offset for tp, p in b.progress.items()} == {("t", 0): 29, ("t", 1): 30}
    assert b.instance_samples == sum(p.snapshots for p in b.progress.values())


def test_finish_gives_the_one_minute_partials():
    f = _fold()
    for t in range(15, 7201, 15):  # covers (0, 7200]: the first snapshot covers (0, 15]
        _add(f, t, mig(at(t), [inst(0, "3g.40gb", 0.5, "a", "p")]))
    aggs = f.finish().aggregates  # 1h and 1d are the sink's rollups (tests/integration/test_processor_sink.py)
    # No shared instance: the tenant rows are the instance rows' (derived by the sink), and the
    # fold keeps no tenant corrections.
    assert (len(aggs.gpus), len(aggs.instances), len(aggs.tenants), len(tenant_rows(aggs))) == (120, 120, 0, 120)
    assert {k.bucket % 60 for k in aggs.gpus} == {0}
    assert sum(s.busy_gpu_seconds for s in aggs.gpus.values()) == pytest.approx(0.5 * 3 / 7 * 7200)


# -- v2 time model (DESIGN.md "Time model") --------------------------------------------------


def _seconds(batch):  # type: ignore[no-untyped-def]
    return sum(g.seconds for g in batch.aggregates.gpus.values())


def test_overlapping_second_stream_is_trimmed_and_reported_once():
    # Stream A (dcgm@node) at 15, 30; stream B (dcgm@svc) at 22 arrives after 30: its covered
    # interval (7, 22] lies inside the billed (0, 30]: a duplicate, 15 s trimmed. B at 37 covers
    # (30, 37] (newer than the last ts 30, within 3 x 15 s).
    f = _fold()
    a = [mig(at(t), [inst(0, "7g.80gb", 0.5)]) for t in (15, 30)]
    b = [mig(at(t), [inst(0, "7g.80gb", 0.5)], host="svc") for t in (22, 37)]
    assert [_add(f, i, s) for i, s in enumerate([a[0], a[1], b[0], b[1]])] == [MERGED, MERGED, DUPLICATE, MERGED]
    batch = f.finish()
    p = batch.progress[("t", 0)]
    assert (p.snapshots, p.trimmed, p.duplicates, p.trimmed_seconds) == (3, 0, 1, 15.0)
    assert _seconds(batch) == 37.0  # (0, 37]: 15 + 15 + 7
    assert batch.multi_fed == {"GPU-a": ("test@h1", "test@svc")}


def test_partly_billed_snapshot_counts_as_trimmed():
    # 15 s snapshots at 0, 15, 30 bill (-15, 30]. A second feed's snapshot at 30 with a 60 s
    # interval covers (-30, 30] (not newer than the last ts): only (-30, -15] is new, 45 s trimmed.
    f = _fold()
    for i, t in enumerate((0, 15, 30)):
        _add(f, i, mig(at(t), [inst(0, "1g.10gb", 0.5)]))
    assert _add(f, 3, mig(at(30), [inst(0, "1g.10gb", 0.5)], interval_s=60)) == MERGED
    batch = f.finish()
    p = batch.progress[("t", 0)]
    assert (p.snapshots, p.trimmed, p.duplicates, p.trimmed_seconds) == (3, 1, 0, 45.0)  # (-15, 30] was billed
    assert _seconds(batch) == 60.0 and batch.records == 4
    assert batch.states["GPU-a"].last_ts == at(30)


def test_gap_beyond_the_limit_is_unmetered_and_the_flag_sets_the_limit():
    # 15 s scrapes at 15 and 90: 75 s > 3 x 15 s, so 90 covers (75, 90]; (15, 75] is unmetered.
    f = _fold()
    _add(f, 0, mig(at(15), [inst(0, "1g.10gb", 0.5)]))
    _add(f, 1, mig(at(90), [inst(0, "1g.10gb", 0.5)]))
    b = f.finish()
    assert _seconds(b) == 30.0 and sum(g.unmetered_seconds for g in b.aggregates.gpus.values()) == 60.0
    # --max-gap 120: the same feed is one covered stretch (0, 90].
    f = _fold(max_gap_s=120)
    _add(f, 0, mig(at(15), [inst(0, "1g.10gb", 0.5)]))
    _add(f, 1, mig(at(90), [inst(0, "1g.10gb", 0.5)]))
    b = f.finish()
    assert _seconds(b) == 90.0 and sum(g.unmetered_seconds for g in b.aggregates.gpus.values()) == 0.0


def test_history_fills_holes_at_any_age_but_a_live_clock_jump_is_a_dead_letter():
    live = [mig(at(86000 + 15 * k), [inst(0, "1g.10gb", 0.5)]) for k in range(1, 5)]  # (86000, 86060]
    f = _fold()
    for i, s in enumerate(live):
        _add(f, i, s)
    old = mig(at(600), [inst(0, "1g.10gb", 0.5)], interval_s=60)
    history = Snapshot(old.ts, old.interval_s, "prometheus", old.cluster, old.host, old.gpu_uuid, old.gpu_index,
                       old.gpu_model, old.mig_enabled, old.total_slices, old.instances)
    assert _add(f, 4, history) == MERGED  # (540, 600], 85,400 s before the live edge
    assert _add(f, 5, history) == DUPLICATE  # the same backfill again
    assert _add(f, 6, old) == DEAD_LETTER  # the same time from a live source: a clock that jumped back
    b = f.finish()
    assert [d.kind for d in b.dead_letters] == ["clock_backward"]
    assert _seconds(b) == 120.0  # 60 live + 60 history
    # The life now starts at 540: unmetered (600, 86000] = 85,400 s.
    assert sum(g.unmetered_seconds for g in b.aggregates.gpus.values()) == 85400.0
    assert b.states["GPU-a"].last_ts == at(86060)  # history never moves the clock back


def test_record_keyed_by_something_else_is_a_key_mismatch_dead_letter():
    f = _fold()
    s = mig(at(15), [inst(0, "1g.10gb", 0.5)])
    assert f.add("t", 0, 0, b"GPU-other", s.to_json(), s) == DEAD_LETTER
    assert f.add("t", 0, 1, None, s.to_json(), s) == DEAD_LETTER
    b = f.finish()
    assert [d.kind for d in b.dead_letters] == ["key_mismatch", "key_mismatch"]
    assert "not the snapshot's gpu_uuid 'GPU-a'" in b.dead_letters[0].reason and b.progress[("t", 0)].records == 2


def test_state_from_before_migration_counts_everything_up_to_last_ts_as_billed():
    legacy = GpuState.from_row(at(30), True, {"0": {"profile": "1g.10gb", "slices": 1}})  # billed '[]', version 0
    f = _fold({"GPU-a": legacy})
    assert _add(f, 0, mig(at(20), [inst(0, "1g.10gb", 0.5)])) == DUPLICATE
    assert _add(f, 1, mig(at(45), [inst(0, "1g.10gb", 0.5)])) == MERGED
    b = f.finish()
    assert _seconds(b) == 15.0 and b.states["GPU-a"].version == 1


# -- splitting a batch over writer connections (FoldedBatch.split) ------------------------------


def test_split_gives_each_part_its_partitions_gpus_and_dead_letters():
    f = _fold()
    # Partition 0: GPU-a (2 snapshots) and a dead letter; partition 1: GPU-b (1); partition 2:
    # GPU-c (3, one of them a layout change).
    _add(f, 0, mig(at(15), [inst(0, "3g.40gb", 0.5)], gpu="GPU-a"), 0)
    _add(f, 1, mig(at(30), [inst(0, "3g.40gb", 0.5)], gpu="GPU-a"), 0)
    f.add("t", 0, 2, b"GPU-a", b"{}", BadSnapshot("not a snapshot"))
    _add(f, 0, mig(at(15), [inst(0, "1g.10gb", 1.0), inst(1, "1g.10gb", 1.0)], gpu="GPU-b"), 1)
    for i, t in enumerate((15, 30)):
        _add(f, i, mig(at(t), [inst(0, "2g.20gb", 0.2)], gpu="GPU-c"), 2)
    _add(f, 2, mig(at(45), [inst(0, "2g.20gb", 0.2, "ns", "pod")], gpu="GPU-c"), 2)
    batch = f.finish()
    parts = batch.split(2)
    # Records: p0 3, p1 1, p2 3; largest first into the emptier part: {p0} 3 then {p2} 3, then
    # p1 (1) joins the first part with 3 (the first of the equal ones).
    assert [sorted(p for _, p in part.progress) for part in parts] == [[0, 1], [2]]
    first, second = parts
    assert {k.gpu_uuid for k in first.aggregates.instances} == {"GPU-a", "GPU-b"}
    assert {k.gpu_uuid for k in second.aggregates.gpus} == {"GPU-c"}
    assert set(first.states) == {"GPU-a", "GPU-b"} and set(second.states) == {"GPU-c"}
    assert [d.offset for d in first.dead_letters] == [2] and second.dead_letters == []
    assert [e.event for e in second.events] == ["tenant_changed"] and first.events == []
    assert {iv.gpu_uuid for iv in first.intervals.opened} == {"GPU-a", "GPU-b"}
    assert (first.instance_samples, second.instance_samples) == (4, 3) and batch.instance_samples == 7
    assert (first.records, second.records) == (4, 3)
    # Nothing lost or doubled: the parts' rows are the batch's rows.
    for attr in ("instances", "tenants", "gpus"):
        assert sum(len(getattr(p.aggregates, attr)) for p in parts) == len(getattr(batch.aggregates, attr))


def test_partitions_that_share_a_gpu_stay_in_one_part():
    f = _fold()
    # GPU-a reaches partitions 0 and 1 (a producer not keyed by GPU): one transaction must hold
    # both, or two writers would race on its state; partition 2 is free to go alone.
    _add(f, 0, mig(at(15), [inst(0, "3g.40gb", 0.5)], gpu="GPU-a"), 0)
    _add(f, 0, mig(at(30), [inst(0, "3g.40gb", 0.5)], gpu="GPU-a"), 1)
    _add(f, 0, mig(at(15), [inst(0, "3g.40gb", 0.5)], gpu="GPU-b"), 2)
    batch = f.finish()
    assert [sorted(p for _, p in part.progress) for part in batch.split(4)] == [[0, 1], [2]]
    assert batch.split(1) == [batch]
