"""Layout diff: events and intervals from consecutive snapshots of one GPU."""

from __future__ import annotations

from msgspec.structs import replace

from processor.layout import GpuState, IntervalBook, diff_layout
from tests.processor.build import at, inst, mig, whole


def _run(*snaps):  # type: ignore[no-untyped-def]
    """Diff a sequence; returns ([(event, gi_id, before.profile/ns, after...)], book, final state)."""
    book = IntervalBook()
    state = None
    events = []
    for s in snaps:
        evs, state = diff_layout(state, s, book)
        events.extend(evs)
    return events, book, state


def _short(events):  # type: ignore[no-untyped-def]
    return [(e.event, e.gi_id) for e in events]


def test_first_snapshot_establishes_layout_without_events():
    events, book, state = _run(mig(at(0), [inst(0, "3g.40gb", 0.1, "a", "p"), inst(1, "4g.40gb", 0.2)]))
    assert events == []
    assert [(iv.gi_id, iv.profile, iv.namespace, iv.valid_from, iv.valid_to) for iv in book.opened] == [
        (0, "3g.40gb", "a", at(0), None), (1, "4g.40gb", "", at(0), None)]
    assert set(state.layout) == {0, 1} and state.last_ts == at(0)


def test_unchanged_layout_produces_nothing():
    snaps = [mig(at(t), [inst(0, "3g.40gb", t / 100, "a", "p")]) for t in (0, 15, 30)]
    events, book, state = _run(*snaps)
    assert events == [] and len(book.opened) == 1 and state.last_ts == at(30)


def test_reconfiguration_sequence():
    a = inst(0, "3g.40gb", 0.5, "ns1", "p1")
    b = inst(1, "2g.20gb", 0.5)
    events, book, _ = _run(
        mig(at(0), [a, b]),
        mig(at(15), [a, inst(1, "2g.20gb", 0.5, "ns2", "p2")]),  # tenant_changed gi 1
        mig(at(30), [a]),  # destroyed gi 1
        mig(at(45), [a, inst(2, "1g.10gb", 0.1), inst(3, "1g.10gb", 0.1)]),  # created 2, 3
        mig(at(60), [inst(0, "4g.40gb", 0.5, "ns1", "p1"), inst(2, "1g.10gb", 0.1), inst(3, "1g.10gb", 0.1)]),
        mig(at(75), [inst(0, "4g.40gb", 0.5, "ns1", "p1", container="c2"), inst(2, "1g.10gb", 0.1),
                     inst(3, "1g.10gb", 0.1)]),  # container only: no event
    )
    assert _short(events) == [("tenant_changed", 1), ("destroyed", 1), ("created", 2), ("created", 3),
                              ("profile_changed", 0)]
    tc = events[0]
    assert (tc.before["namespace"], tc.after["namespace"], tc.after["pod"]) == ("", "ns2", "p2")
    assert events[1].before["namespace"] == "ns2" and events[1].after is None
    assert events[2].before is None and events[2].after["profile"] == "1g.10gb"
    assert (events[4].before["slices"], events[4].after["slices"]) == (3, 4)
    # Intervals: DB-side closes none (all opened in this book); opened, in order:
    assert [(iv.gi_id, iv.profile, iv.namespace, iv.valid_from, iv.valid_to) for iv in book.opened] == [
        (0, "3g.40gb", "ns1", at(0), at(60)),
        (1, "2g.20gb", "", at(0), at(15)),
        (1, "2g.20gb", "ns2", at(15), at(30)),
        (2, "1g.10gb", "", at(45), None),
        (3, "1g.10gb", "", at(45), None),
        (0, "4g.40gb", "ns1", at(60), None),
    ]
    assert book.closes == {}


def test_changes_against_a_stored_state_close_database_intervals():
    prev = GpuState.from_row(at(0), True, {"0": {"profile": "3g.40gb", "slices": 3, "namespace": "a", "pod": "p"}})
    book = IntervalBook()
    events, state = diff_layout(prev, mig(at(15), [inst(0, "3g.40gb", 0.1, "b", "q")]), book, 2, 99)
    assert _short(events) == [("tenant_changed", 0)]
    assert (events[0].source_partition, events[0].source_offset) == (2, 99)
    assert book.closes == {("GPU-a", 0): at(15)}
    assert [(iv.namespace, iv.valid_from) for iv in book.opened] == [("b", at(15))]


def test_stored_state_with_same_layout_takes_the_hot_path():
    prev = GpuState.from_row(at(0), True, {"0": {"profile": "3g.40gb", "slices": 3, "namespace": "a", "pod": "p",
                                                 "container": ""}})
    book = IntervalBook()
    events, state = diff_layout(prev, mig(at(15), [inst(0, "3g.40gb", 0.1, "a", "p")]), book)
    assert events == [] and len(book) == 0 and state.layout is prev.layout


def test_mig_off_to_on():
    events, book, state = _run(
        whole(at(0), 0.3, ns="t", pod="w"),
        mig(at(15), []),  # MIG on, no instances yet: allocation 0
        mig(at(30), [inst(1, "3g.40gb", 0.2)]),
    )
    assert _short(events) == [("mig_enabled", None), ("destroyed", -1), ("created", 1)]
    on = events[0]
    assert on.before == {"mig_enabled": False, "instances": [
        {"gi_id": -1, "profile": "full", "slices": 7, "namespace": "t", "pod": "w", "container": ""}]}
    assert on.after == {"mig_enabled": True, "instances": []}
    assert [(iv.gi_id, iv.valid_from, iv.valid_to) for iv in book.opened] == [(-1, at(0), at(15)), (1, at(30), None)]
    assert state.mig_enabled


def test_mig_on_to_off():
    events, _, _ = _run(mig(at(0), [inst(0, "7g.40gb", 0.1)]), whole(at(15), 0.1))
    assert _short(events) == [("mig_disabled", None), ("destroyed", 0), ("created", -1)]


def test_profile_and_tenant_change_together_give_both_events_and_one_new_interval():
    events, book, _ = _run(mig(at(0), [inst(0, "1g.10gb", 0.1, "a", "p")]), mig(at(15), [inst(0, "2g.20gb", 0.1, "b", "q")]))
    assert _short(events) == [("profile_changed", 0), ("tenant_changed", 0)]
    assert len(book.opened) == 2 and book.opened[1].profile == "2g.20gb"


def test_state_round_trips_through_json():
    _, _, state = _run(mig(at(0), [inst(0, "3g.40gb", 0.1, "a", "p", "c"), inst(4, "1g.10gb", None)]))
    again = GpuState.from_row(state.last_ts, state.mig_enabled, state.layout_json())
    assert again.layout == state.layout and again.signature == state.signature


def test_an_interval_records_the_reported_placement_and_refuses_garbage():
    # GI 0 sits at memory slice 4 (as NVML's placement.start says), GI 1 reports none, GI 2 reports
    # 12, which no GPU has (8 memory slices at most): recorded as unknown, never stored as a place.
    snap = mig(at(0), [replace(inst(0, "3g.40gb", 0.1), placement_start=4), inst(1, "1g.10gb", 0.2),
                       replace(inst(2, "1g.10gb", 0.2), placement_start=12)])
    _, book, _ = _run(snap)
    assert [(iv.gi_id, iv.placement_start) for iv in book.opened] == [(0, 4), (1, None), (2, None)]
