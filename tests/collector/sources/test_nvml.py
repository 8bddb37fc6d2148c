"""The NVML source against a fake pynvml made of the real module's constants, errors and structs."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

import pynvml
import pytest

from collector.snapshot import FULL_GPU_GI_ID, Snapshot, from_json
from collector.sources.nvml import NvmlSource
from migmeter.errors import SourceUnavailable
from tests.collector.sources.fake_pynvml import (
    FakeGpu,
    FakeMig,
    FakeState,
    a30_profiles,
    a100_profiles,
    build,
    h100_profiles,
)

GR = pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL
SM = pynvml.NVML_GPM_METRIC_SM_UTIL
TENSOR = pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL
DRAM = pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL
T0 = datetime(2025, 3, 1, 12, tzinfo=timezone.utc)


def h100_mig(uuid: str = "GPU-h100", **kw: Any) -> FakeGpu:
    """H100 with 3g + 2g + 1g (one slice unallocated) and an empty MIG device slot in between.
    Placements (start, size) in its 8 memory slices: 2g at 0-1, 1g at 2, slot 3 free, 3g at 4-7."""
    return FakeGpu(
        uuid=uuid, name="NVIDIA H100 80GB HBM3", mig_enabled=True, profiles=h100_profiles(), gpm_supported=True,
        migs=[
            FakeMig(gi_id=2, slices=3, sm_count=60, mem_mb=40_320, used_mb=30_000,
                    gpm={GR: 95.0, SM: 80.0, TENSOR: 40.0, DRAM: 30.0}, placement=(4, 4)),
            None,
            FakeMig(gi_id=3, slices=2, sm_count=32, mem_mb=19_968, used_mb=1_024, gpm={GR: 70.0, SM: 60.0},
                    placement=(0, 2)),
            FakeMig(gi_id=9, slices=1, sm_count=16, mem_mb=9_856, decoders=1, gpm={GR: 100.4, SM: 99.0},
                    placement=(2, 1)),
        ],
        **kw,
    )


def a100_whole(uuid: str = "GPU-a100", **kw: Any) -> FakeGpu:
    return FakeGpu(uuid=uuid, name="NVIDIA A100-SXM4-80GB", mig_enabled=False, profiles=a100_profiles(),
                   profiles_need_mig=True, util_gpu=55, mem_total_mb=81_920, mem_used_mb=20_480, sm_count=108, **kw)


def a30_mig(uuid: str = "GPU-a30", **kw: Any) -> FakeGpu:
    return FakeGpu(
        uuid=uuid, name="NVIDIA A30", mig_enabled=True, max_mig=4, profiles=a30_profiles(),
        # 4 memory slices: 2g.12gb at 0-1, 1g.6gb at 2, 1g.6gb+me at 3.
        migs=[FakeMig(gi_id=1, slices=2, sm_count=28, mem_mb=11_928, decoders=2, placement=(0, 2)),
              FakeMig(gi_id=5, slices=1, sm_count=14, mem_mb=5_836, used_mb=100, placement=(2, 1)),
              FakeMig(gi_id=6, slices=1, sm_count=14, mem_mb=5_836, decoders=1, placement=(3, 1))],
        **kw,
    )


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        self.t += timedelta(seconds=15)
        return self.t


def source(*gpus: FakeGpu, **kw: Any) -> tuple[NvmlSource, FakeState]:
    state = FakeState(gpus=list(gpus))
    src = NvmlSource(cluster="c1", interval_s=15.0, nvml=build(state), host="node-7", clock=Clock(), **kw)
    return src, state


def by_uuid(snaps: list[Snapshot]) -> dict[str, Snapshot]:
    return {s.gpu_uuid: s for s in snaps}


def test_h100_mig_layout_slices_and_profiles() -> None:
    src, _ = source(h100_mig())
    (s,) = src.read()
    assert (s.source, s.cluster, s.host, s.gpu_index, s.gpu_model) == ("nvml", "c1", "node-7", 0,
                                                                      "NVIDIA H100 80GB HBM3")
    assert s.mig_enabled and s.total_slices == 7
    assert [(i.gi_id, i.slices, i.profile, i.sm_count) for i in s.instances] == [
        (2, 3, "3g.40gb", 60), (3, 2, "2g.20gb", 32), (9, 1, "1g.10gb", 16)]
    assert sum(i.slices for i in s.instances) / s.total_slices == pytest.approx(6 / 7)
    assert all(not i.tenant.assigned for i in s.instances)
    first = s.instances[0]
    assert first.mem_total_mib == 40_320
    assert first.metrics.fb_used_mib == 30_000 and first.metrics.fb_free_mib == 10_320
    assert from_json(s.to_json()) == s


def test_gpm_utilization_appears_on_the_second_round() -> None:
    src, state = source(h100_mig())
    (r1,) = src.read()
    assert all(i.metrics.gr_engine_active is None for i in r1.instances)  # a rate needs two samples
    (r2,) = src.read()
    got = {i.gi_id: i.metrics for i in r2.instances}
    assert (got[2].gr_engine_active, got[2].sm_active, got[2].tensor_active, got[2].dram_active) == (
        0.95, 0.80, 0.40, 0.30)
    assert got[3].gr_engine_active == pytest.approx(0.70) and got[3].tensor_active is None
    assert got[9].gr_engine_active == 1.0  # 100.4 % is GPM rounding: clamped, not rejected
    assert src.stats.skipped["gpm:tensor_active:NotSupported"] == 2
    # The fake refuses GPM pairs that are freed, out of order or from another instance: none were.
    state.gpus[0].migs[0].gpm[GR] = 10.0  # type: ignore[union-attr]
    (r3,) = src.read()
    assert r3.instances[0].metrics.gr_engine_active == pytest.approx(0.10)
    assert state.live_samples() == 3  # exactly one kept per instance


def test_gpm_sample_of_a_destroyed_instance_is_freed_and_not_reused() -> None:
    src, state = source(h100_mig())
    src.read()
    src.read()
    # Re-partition: the 3g (GI 2) becomes a 4g with the same GI id.
    state.gpus[0].migs[0] = FakeMig(gi_id=2, slices=4, sm_count=64, mem_mb=40_320, gpm={GR: 50.0})
    (s,) = src.read()
    inst = {i.gi_id: i for i in s.instances}
    assert inst[2].slices == 4 and inst[2].profile == "4g.40gb"
    assert inst[2].metrics.gr_engine_active is None  # never a rate across two different instances
    assert state.live_samples() == 3
    src.close()
    assert state.live_samples() == 0 and state.shutdowns == 1


def test_a100_without_mig_is_one_full_weight_pseudo_instance() -> None:
    src, _ = source(a100_whole())
    (s,) = src.read()
    assert not s.mig_enabled and s.total_slices == 7  # from the model rule: profiles need MIG on
    (only,) = s.instances
    assert (only.gi_id, only.profile, only.slices, only.sm_count) == (FULL_GPU_GI_ID, "", 7, 108)
    assert only.metrics.gr_engine_active == pytest.approx(0.55)
    assert only.metrics.fb_used_mib == 20_480 and only.mem_total_mib == 81_920
    assert src.stats.skipped == {}


def test_whole_hopper_gpu_uses_gpm_when_it_has_it() -> None:
    gpu = FakeGpu(uuid="GPU-h", name="NVIDIA H100 PCIe", mig_enabled=False, util_gpu=40, gpm_supported=True,
                  gpm={GR: 42.0, SM: 30.0, TENSOR: 5.0, DRAM: 20.0})
    src, _ = source(gpu)
    (first,) = src.read()
    assert first.instances[0].metrics.gr_engine_active == pytest.approx(0.40)  # utilization rates meanwhile
    (second,) = src.read()
    m = second.instances[0].metrics
    assert (m.gr_engine_active, m.sm_active, m.tensor_active, m.dram_active) == (0.42, 0.30, 0.05, 0.20)


def test_a30_mig_has_four_slices_and_no_utilization() -> None:
    src, _ = source(a30_mig())
    src.read()
    (s,) = src.read()
    assert s.total_slices == 4
    assert [(i.gi_id, i.slices, i.profile) for i in s.instances] == [
        (1, 2, "2g.12gb"), (5, 1, "1g.6gb"), (6, 1, "1g.6gb+me")]
    assert all(i.metrics.gr_engine_active is None for i in s.instances)
    assert s.instances[1].metrics.fb_used_mib == 100
    # Every instance of every round whose utilization could not be measured is counted.
    assert src.stats.skipped["utilization:gpm_unsupported"] == 6


def test_gpu_without_mig_support() -> None:
    gpu = FakeGpu(uuid="GPU-v100", name="Tesla V100-SXM2-32GB", mig_enabled=None, util_gpu=12,
                  mem_total_mb=32_768, sm_count=80)
    src, _ = source(gpu)
    (s,) = src.read()
    assert not s.mig_enabled and s.total_slices == 7 and s.instances[0].slices == 7
    assert s.instances[0].metrics.gr_engine_active == pytest.approx(0.12)


def test_no_permission_on_memory_degrades_and_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    gpu = h100_mig("GPU-locked", fail={"nvmlDeviceGetMemoryInfo": pynvml.NVMLError_NoPermission})
    src, _ = source(gpu, a100_whole())
    with caplog.at_level(logging.WARNING):
        snaps = by_uuid(src.read())
        src.read()
    locked = snaps["GPU-locked"]
    assert [i.slices for i in locked.instances] == [3, 2, 1]  # layout intact
    assert all(i.metrics.fb_used_mib is None and i.metrics.fb_free_mib is None for i in locked.instances)
    assert snaps["GPU-a100"].instances[0].metrics.fb_used_mib == 20_480  # other GPUs unaffected
    assert src.stats.skipped["memory_info:NoPermission"] == 6  # 3 instances x 2 rounds
    warnings = [r for r in caplog.records if "memory" in r.getMessage()]
    assert len(warnings) == 1  # logged once, counted every time


def test_gpm_not_supported_degrades_and_is_counted() -> None:
    gpu = h100_mig("GPU-nogpm", fail={"nvmlGpmMigSampleGet": pynvml.NVMLError_NotSupported})
    src, state = source(gpu)
    src.read()
    (s,) = src.read()
    assert all(i.metrics.gr_engine_active is None for i in s.instances)
    assert all(i.metrics.fb_used_mib is not None for i in s.instances)
    assert src.stats.skipped["gpm_sample:NotSupported"] == 6
    assert state.live_samples() == 0  # failed samples are freed, not leaked


def test_gpm_support_query_not_supported_is_counted() -> None:
    src, _ = source(h100_mig(fail={"nvmlGpmQueryDeviceSupport": pynvml.NVMLError_NotSupported}))
    (s,) = src.read()
    assert len(s.instances) == 3
    assert src.stats.skipped["gpm_query:NotSupported"] == 1
    assert src.stats.skipped["utilization:gpm_unsupported"] == 3


def test_unreadable_layout_skips_the_gpu_not_the_round() -> None:
    broken = h100_mig("GPU-broken", fail={"nvmlDeviceGetAttributes": pynvml.NVMLError_NoPermission})
    lost = a30_mig("GPU-lost", fail={"nvmlDeviceGetUUID": pynvml.NVMLError_GpuIsLost})
    src, _ = source(broken, lost, a100_whole())
    snaps = src.read()
    assert [s.gpu_uuid for s in snaps] == ["GPU-a100"]
    assert src.stats.skipped["attributes:NoPermission"] == 1
    assert src.stats.skipped["gpu_skipped:GpuIsLost"] == 1


def test_compute_instances_of_one_gi_are_metered_once() -> None:
    gpu = FakeGpu(uuid="GPU-ci", name="NVIDIA H100 80GB HBM3", mig_enabled=True, profiles=h100_profiles(),
                  migs=[FakeMig(gi_id=1, slices=3, sm_count=60, mem_mb=40_320),
                        FakeMig(gi_id=1, slices=3, sm_count=60, mem_mb=40_320)])
    src, _ = source(gpu)
    (s,) = src.read()
    assert [(i.gi_id, i.slices) for i in s.instances] == [(1, 3)]
    assert src.stats.skipped["extra_compute_instance"] == 1


def test_total_slices_override_and_invalid_layout_is_skipped() -> None:
    src, _ = source(a30_mig(), total_slices_overrides={"A30": 7})
    (s,) = src.read()
    assert s.total_slices == 7
    # A wrong override that makes a layout impossible is caught before publishing.
    src2, _ = source(h100_mig(), total_slices_overrides={"H100": 4})
    assert src2.read() == []
    assert src2.stats.skipped["invalid_snapshot"] == 1


def test_profile_name_is_derived_without_a_profile_table() -> None:
    gpu = FakeGpu(uuid="GPU-x", name="NVIDIA H200", mig_enabled=True,
                  migs=[FakeMig(gi_id=7, slices=1, sm_count=16, mem_mb=16_384)])
    src, _ = source(gpu)
    (s,) = src.read()
    assert s.total_slices == 7 and s.instances[0].profile == "1g.16gb"


def test_placements_reach_the_snapshot() -> None:
    src, _ = source(h100_mig(), a30_mig())
    snaps = by_uuid(src.read())
    # The 3g.40gb has size 4 (40,320 / 80,896 MiB x 8 = 3.99 -> 4 memory slices), not its 3 compute slices.
    assert [(i.gi_id, i.slices, i.placement_start) for i in snaps["GPU-h100"].instances] == [
        (2, 3, 4), (3, 2, 0), (9, 1, 2)]
    # A30: 11,928 / 24,062 MiB x 4 = 1.98 -> size 2; 5,836 / 24,062 x 4 = 0.97 -> size 1.
    assert [(i.gi_id, i.placement_start) for i in snaps["GPU-a30"].instances] == [(1, 0), (5, 2), (6, 3)]
    assert from_json(snaps["GPU-h100"].to_json()) == snaps["GPU-h100"]  # on the wire too
    assert not [k for k in src.stats.skipped if k.startswith("placement")]


def test_full_gpu_and_double_memory_profiles_have_their_memory_size() -> None:
    full = FakeGpu(uuid="GPU-7g", name="NVIDIA H100 80GB HBM3", mig_enabled=True, profiles=h100_profiles(),
                   migs=[FakeMig(gi_id=0, slices=7, sm_count=132, mem_mb=80_896, placement=(0, 8))])
    # 4g.40gb at 0-3 and 1g.20gb at 4-5: 19,968 / 80,896 x 8 = 1.97 -> size 2 for one compute slice.
    mixed = FakeGpu(uuid="GPU-mixed", name="NVIDIA H100 80GB HBM3", mig_enabled=True, profiles=h100_profiles(),
                    migs=[FakeMig(gi_id=1, slices=4, sm_count=64, mem_mb=40_320, placement=(0, 4)),
                          FakeMig(gi_id=11, slices=1, sm_count=16, mem_mb=19_968, placement=(4, 2))])
    src, _ = source(full, mixed)
    snaps = by_uuid(src.read())
    assert [(i.profile, i.placement_start) for i in snaps["GPU-7g"].instances] == [("7g.80gb", 0)]
    assert [(i.profile, i.placement_start) for i in snaps["GPU-mixed"].instances] == [("4g.40gb", 0), ("1g.20gb", 4)]
    assert not [k for k in src.stats.skipped if k.startswith("placement")]


@pytest.mark.parametrize("call, error", [
    ("nvmlDeviceGetGpuInstanceById", pynvml.NVMLError_NoPermission),  # NVML: "Requires privileged user"
    ("nvmlDeviceGetGpuInstanceById", pynvml.NVMLError_NotSupported),
    ("nvmlGpuInstanceGetInfo", pynvml.NVMLError_Unknown),
])
def test_placement_errors_leave_it_unknown_and_are_said_once(
        call: str, error: type[pynvml.NVMLError], caplog: pytest.LogCaptureFixture) -> None:
    src, _ = source(h100_mig("GPU-locked", fail={call: error}), a30_mig())
    with caplog.at_level(logging.WARNING):
        rounds = [by_uuid(src.read()), by_uuid(src.read())]
    for snaps in rounds:
        locked = snaps["GPU-locked"]
        assert [(i.gi_id, i.slices, i.placement_start) for i in locked.instances] == [
            (2, 3, None), (3, 2, None), (9, 1, None)]  # layout intact, placement unknown
        assert [i.placement_start for i in snaps["GPU-a30"].instances] == [0, 2, 3]  # other GPUs unaffected
    # The scrape is otherwise whole: memory every round, GPM utilization from the second round.
    assert rounds[1]["GPU-locked"].instances[0].metrics.fb_used_mib == 30_000
    assert rounds[1]["GPU-locked"].instances[0].metrics.gr_engine_active == pytest.approx(0.95)
    name = error.__name__.removeprefix("NVMLError_")
    assert src.stats.skipped[f"placement:{name}"] == 6  # 3 instances x 2 rounds, all counted
    warnings = [r.getMessage() for r in caplog.records if "placement" in r.getMessage()]
    assert len(warnings) == 1 and "GPU-locked" in warnings[0]  # logged once per GPU, not per scrape
    assert ("privileged" in warnings[0]) == (error is pynvml.NVMLError_NoPermission)


def test_a_placement_the_instance_cannot_hold_is_left_unknown(caplog: pytest.LogCaptureFixture) -> None:
    gpu = h100_mig("GPU-odd")
    gpu.migs[0].placement = (6, 4)  # type: ignore[union-attr]  # 3g of size 4 at 6: 6 + 4 > 8 memory slices
    gpu.migs[3].placement = (2, 2)  # type: ignore[union-attr]  # 1g.10gb: 9,856 / 80,896 x 8 = 0.97 -> size 1, not 2
    src, _ = source(gpu)
    with caplog.at_level(logging.WARNING):
        src.read()
        (s,) = src.read()
    assert [(i.gi_id, i.placement_start) for i in s.instances] == [(2, None), (3, 0), (9, None)]
    assert src.stats.skipped["placement:size_mismatch"] == 4  # 2 instances x 2 rounds
    (warning,) = [r.getMessage() for r in caplog.records if "placement" in r.getMessage()]
    assert "GPU-odd" in warning and "GI 2" in warning and "6:4" in warning and "4 of 8 memory slices" in warning


def test_placement_without_a_profile_table_is_left_unknown() -> None:
    gpu = FakeGpu(uuid="GPU-x", name="NVIDIA H200", mig_enabled=True,
                  migs=[FakeMig(gi_id=7, slices=1, sm_count=16, mem_mb=16_384, placement=(0, 1))])
    src, _ = source(gpu)
    (s,) = src.read()
    assert s.instances[0].placement_start is None  # nothing to check its size against
    assert src.stats.skipped["placement:unchecked"] == 1


def test_timestamps_come_from_the_clock() -> None:
    src, _ = source(a100_whole())
    assert src.read()[0].ts == T0 + timedelta(seconds=15)
    assert src.read()[0].ts == T0 + timedelta(seconds=30)


def test_init_failure_is_source_unavailable() -> None:
    state = FakeState(gpus=[], init_error=pynvml.NVMLError_DriverNotLoaded)
    with pytest.raises(SourceUnavailable, match="DriverNotLoaded"):
        NvmlSource(cluster="c", interval_s=15, nvml=build(state))


def test_real_pynvml_without_a_driver_is_source_unavailable() -> None:
    """This machine has no NVIDIA driver: the real nvidia-ml-py must fail cleanly, not crash."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:  # pragma: no cover - only on a GPU host
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver is present")
    with pytest.raises(SourceUnavailable, match="LibraryNotFound|DriverNotLoaded"):
        NvmlSource(cluster="c", interval_s=15)


def test_close_is_idempotent_and_read_after_close_fails() -> None:
    src, state = source(a100_whole())
    src.close()
    src.close()
    assert state.shutdowns == 1
    with pytest.raises(SourceUnavailable):
        src.read()


def test_device_listing_failure_is_source_unavailable() -> None:
    src, state = source(a100_whole())
    state.initialized = False  # the driver went away under a running collector
    with pytest.raises(SourceUnavailable, match="cannot list GPUs"):
        src.read()
