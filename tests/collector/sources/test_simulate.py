"""The simulated fleet: deterministic, always valid, and it exercises every case the processor must handle."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone

import pytest

from collector.slices import profile_slices
from collector.snapshot import FULL_GPU_GI_ID, Snapshot, from_json
from collector.sources.simulate import DEFAULT_START, LAYOUTS_4, LAYOUTS_7, SimulatedFleet
from migmeter.errors import ConfigError

DAY = 86_400


def _days(fleet: SimulatedFleet, days: float) -> list[list[Snapshot]]:
    return list(fleet.rounds(int(days * DAY / fleet.interval_s)))


def _layout(s: Snapshot) -> tuple[object, ...]:
    return (s.mig_enabled, tuple((i.gi_id, i.profile, i.slices) for i in s.instances))


def test_same_seed_gives_identical_json() -> None:
    a, b = SimulatedFleet(seed=7), SimulatedFleet(seed=7)
    for ra, rb in zip(a.rounds(300), b.rounds(300)):
        assert [s.to_json() for s in ra] == [s.to_json() for s in rb]


def test_different_seed_gives_different_fleet() -> None:
    a, b = SimulatedFleet(seed=1).read(), SimulatedFleet(seed=2).read()
    assert {s.gpu_uuid for s in a}.isdisjoint({s.gpu_uuid for s in b})
    strip = [s.to_dict() | {"gpu_uuid": ""} for s in a]
    assert strip != [s.to_dict() | {"gpu_uuid": ""} for s in b]


def test_gpu_uuids_are_unique_and_stable_across_rounds() -> None:
    fleet = SimulatedFleet(hosts=3, gpus_per_host=8)
    first = [s.gpu_uuid for s in fleet.read()]
    assert len(set(first)) == 24
    assert all(u.startswith("GPU-") and len(u) == 40 for u in first)
    assert [s.gpu_uuid for s in fleet.read()] == first


def test_every_snapshot_validates_and_round_trips_over_three_days() -> None:
    fleet = SimulatedFleet(seed=3, interval_s=60.0)
    rounds = _days(fleet, 3)
    for r in rounds:
        for s in r:
            s.validate()
    # The wire codec must read back exactly what the simulator produced.
    for r in rounds[::97]:
        for s in r:
            assert from_json(s.to_json()) == s


def test_time_advances_by_interval() -> None:
    fleet = SimulatedFleet(interval_s=30.0)
    assert fleet.now == DEFAULT_START
    r1 = fleet.read()
    assert {s.ts for s in r1} == {DEFAULT_START}
    assert fleet.now == DEFAULT_START + timedelta(seconds=30)
    r2 = fleet.read()
    assert {s.ts for s in r2} == {DEFAULT_START + timedelta(seconds=30)}
    assert all(s.interval_s == 30.0 for s in r1 + r2)


def test_start_is_honoured_and_must_be_aware() -> None:
    start = datetime(2024, 3, 1, 12, tzinfo=timezone.utc)
    assert SimulatedFleet(start=start).read()[0].ts == start
    with pytest.raises(ConfigError, match="timezone"):
        SimulatedFleet(start=datetime(2024, 3, 1))


def test_bad_parameters_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        SimulatedFleet(models=("GeForce GTX 1080",))
    with pytest.raises(ConfigError, match="interval_s"):
        SimulatedFleet(interval_s=0)
    with pytest.raises(ConfigError, match="mig_toggle_prob"):
        SimulatedFleet(mig_toggle_prob=1.5)


def test_defaults_reconfigure_and_change_tenants_within_two_days() -> None:
    fleet = SimulatedFleet()
    layouts: dict[str, set[object]] = defaultdict(set)
    tenants_seen: dict[tuple[str, int], set[str]] = defaultdict(set)
    for r in _days(fleet, 2):
        for s in r:
            layouts[s.gpu_uuid].add(_layout(s))
            for i in s.instances:
                tenants_seen[(s.gpu_uuid, i.gi_id)].add(i.tenant.pod)
    assert any(len(v) > 1 for v in layouts.values()), "no GPU was re-partitioned in two days"
    # A tenant change: some instance saw at least two different pods (or a pod and "unassigned").
    assert any(len(v) > 1 for v in tenants_seen.values())
    assert any("" in v and len(v) > 1 for v in tenants_seen.values()), "no instance was ever unassigned"


def test_a30_layouts_stay_within_four_slices() -> None:
    fleet = SimulatedFleet(models=("A30",), hosts=1, gpus_per_host=6, reconfigure_every_s=1800, interval_s=60)
    seen = set()
    for r in _days(fleet, 2):
        for s in r:
            assert s.total_slices == 4
            assert sum(i.slices for i in s.instances) <= 4
            for i in s.instances:
                if s.mig_enabled:
                    assert i.profile in {"1g.6gb", "2g.12gb", "4g.24gb"}
                    assert profile_slices(i.profile) == i.slices
            seen.add(_layout(s))
    assert len(seen) >= 4


def test_layouts_with_unallocated_slices_occur() -> None:
    fleet = SimulatedFleet(seed=5, reconfigure_every_s=3600, interval_s=60)
    unallocated = [
        s for r in _days(fleet, 2) for s in r if s.mig_enabled and sum(i.slices for i in s.instances) < s.total_slices
    ]
    assert unallocated


def _mig_modes(fleet: SimulatedFleet, days: float) -> dict[str, set[bool]]:
    modes: dict[str, set[bool]] = defaultdict(set)
    for r in _days(fleet, days):
        for s in r:
            modes[s.gpu_uuid].add(s.mig_enabled)
            if not s.mig_enabled:
                (only,) = s.instances
                assert (only.gi_id, only.profile, only.slices) == (FULL_GPU_GI_ID, "", s.total_slices)
    return modes


def test_mig_toggles_when_probability_is_high() -> None:
    fleet = SimulatedFleet(hosts=1, gpus_per_host=2, mig_toggle_prob=1.0, reconfigure_every_s=1800, interval_s=60)
    assert all(m == {True, False} for m in _mig_modes(fleet, 1).values())


def test_mig_never_toggles_when_probability_is_zero() -> None:
    fleet = SimulatedFleet(hosts=2, gpus_per_host=4, mig_toggle_prob=0.0, reconfigure_every_s=1800, interval_s=60)
    modes = _mig_modes(fleet, 1)
    assert all(len(m) == 1 for m in modes.values())
    assert {True, False} <= set().union(*modes.values()), "fleet should mix MIG and whole GPUs"


def test_utilization_follows_the_daily_curve() -> None:
    """Mean activity of assigned instances is higher mid-afternoon than at 3 a.m. (weekdays)."""
    fleet = SimulatedFleet(seed=11, hosts=4, interval_s=300)
    by_hour: dict[int, list[float]] = defaultdict(list)
    for r in _days(fleet, 5):  # Monday..Friday
        for s in r:
            for i in s.instances:
                if i.tenant.assigned and i.metrics.gr_engine_active is not None:
                    by_hour[s.ts.hour].append(i.metrics.gr_engine_active)
    mean = {h: sum(v) / len(v) for h, v in by_hour.items()}
    assert mean[15] > mean[3] + 0.1


def test_metrics_are_plausible() -> None:
    for r in SimulatedFleet(seed=4).rounds(50):
        for s in r:
            for i in s.instances:
                m = i.metrics
                assert m.fb_used_mib is not None and m.fb_free_mib is not None and i.mem_total_mib is not None
                assert m.fb_used_mib + m.fb_free_mib == pytest.approx(i.mem_total_mib)
                assert m.sm_active is not None and m.gr_engine_active is not None
                assert m.sm_active <= m.gr_engine_active
                if not i.tenant.assigned:
                    assert m.gr_engine_active == 0.0


@pytest.mark.parametrize(("menu", "total", "slots", "allowed"), [
    (LAYOUTS_7, 7, 8, {1: set(range(7)), 2: {0, 2, 4}, 3: {0, 4}, 4: {0}, 7: {0}}),
    (LAYOUTS_4, 4, 4, {1: {0, 1, 2, 3}, 2: {0, 2}, 4: {0}}),
])
def test_layout_menus_respect_nvidia_placements(menu, total, slots, allowed) -> None:  # type: ignore[no-untyped-def]
    """Each layout could be created on a real GPU: allowed starts, no overlapping memory slots."""
    size = {1: 1, 2: 2, 3: 4, 4: 4, 7: 8} if total == 7 else {1: 1, 2: 2, 4: 4}
    for layout in menu:
        assert sum(n for n, _ in layout) <= total
        used: set[int] = set()
        for n, start in layout:
            assert start in allowed[n], (layout, n, start)
            cells = set(range(start, start + size[n]))
            assert cells <= set(range(slots)) and not (cells & used), layout
            used |= cells


def test_a_tenant_never_survives_a_reconfiguration() -> None:
    """Layouts change at tenant boundaries: each pod lives on one GPU instance of one layout."""
    fleet = SimulatedFleet(seed=9, reconfigure_every_s=2 * 3600, interval_s=60)
    homes: dict[str, set[object]] = defaultdict(set)
    for r in _days(fleet, 2):
        for s in r:
            for i in s.instances:
                if i.tenant.assigned:
                    homes[i.tenant.pod].add((s.gpu_uuid, i.gi_id, i.profile, _layout(s)))
    assert len(homes) > 50
    assert all(len(h) == 1 for h in homes.values())
