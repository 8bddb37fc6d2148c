"""A fake ``pynvml`` for machines without a GPU, built from the REAL module's names.

Only the GPU is faked: constants, error classes and ctypes structures are the real ones from
nvidia-ml-py, so a misspelt constant, a wrong struct field or an error class that does not
exist fails here as it would on a GPU host. The functions the NVML source calls are
re-implemented over configurable devices and behave like the driver where it matters:
calls before ``nvmlInit`` fail, empty MIG device slots raise NotFound, a GPU instance is looked
up on the parent device by GI id and reports its placement, utilization rates are
NotSupported on MIG handles, GPM samples must be allocated, filled, not yet freed, taken from
the same target and in order, and ``nvmlGpmMetricsGet`` needs the right version.

Use :func:`build` to get a module object; ``fake.state`` holds the devices so a test can
change utilization between rounds and check for leaked GPM samples.
"""

from __future__ import annotations

import ctypes
import itertools
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pynvml as real

from collector.profiles import find_profile

__all__ = ["FakeMig", "FakeGpu", "FakeState", "build", "h100_profiles", "a100_profiles", "a30_profiles"]

MIB = 1024 * 1024


@dataclass
class FakeMig:
    """One MIG device (GI with one compute instance). ``gpm`` maps a GPM metric id to percent."""

    gi_id: int
    slices: int
    sm_count: int
    mem_mb: int
    used_mb: int = 0
    decoders: int = 0
    gpm: dict[int, float] = field(default_factory=dict)
    # (start, size) in memory slices, as nvmlGpuInstanceGetInfo reports it (`nvidia-smi mig -lgi`
    # "Placement Start:Size"); None: this driver cannot say (NotSupported).
    placement: tuple[int, int] | None = None


@dataclass
class FakeGpu:
    uuid: str
    name: str
    # None: MIG not supported at all (nvmlDeviceGetMigMode raises NotSupported).
    mig_enabled: bool | None
    migs: list[FakeMig | None] = field(default_factory=list)  # index = MIG device slot; None = empty
    max_mig: int = 7
    # (sliceCount, memorySizeMB, name, multiprocessorCount, decoderCount) per profile constant.
    profiles: dict[int, tuple[int, int, str, int, int]] = field(default_factory=dict)
    profiles_need_mig: bool = False  # profile queries NotSupported while MIG is off
    util_gpu: int = 0
    mem_total_mb: int = 81_559
    mem_used_mb: int = 0
    sm_count: int = 132
    gpm_supported: bool = False
    gpm: dict[int, float] = field(default_factory=dict)  # whole-GPU GPM values
    # nvml function name -> error class raised by it for this GPU (and its MIG devices).
    fail: dict[str, type[real.NVMLError]] = field(default_factory=dict)


@dataclass
class _Sample:
    target: tuple[str, int] | None = None  # (gpu uuid, gi id or -1)
    seq: int = 0
    values: dict[int, float] = field(default_factory=dict)
    freed: bool = False


@dataclass
class FakeState:
    gpus: list[FakeGpu]
    init_error: type[real.NVMLError] | None = None
    initialized: bool = False
    shutdowns: int = 0
    samples: dict[int, _Sample] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def live_samples(self) -> int:
        return sum(not s.freed for s in self.samples.values())


class _Handle:
    def __init__(self, gpu: FakeGpu, mig: FakeMig | None = None) -> None:
        self.gpu = gpu
        self.mig = mig


class _GiHandle(_Handle):
    """A GPU-instance handle (``c_nvmlGpuInstance_t``): not a device, so device calls refuse it."""


def _from_table(model: str, nvml: dict[int, tuple[str, int, int]]) -> dict[int, tuple[int, int, str, int, int]]:
    """Slices and SM counts come from the one MIG profile table (``collector.profiles``); only
    what the table lacks is written here: NVML's memory figure (MiB) and decoders per profile."""
    out = {}
    for const, (name, mem_mib, decoders) in nvml.items():
        p = find_profile(model, name)
        assert p is not None and p.sm_count is not None, f"{name} of {model} is not in the profile table"
        out[const] = (p.compute_slices, mem_mib, f"MIG {name}", p.sm_count, decoders)
    return out


def h100_profiles() -> dict[int, tuple[int, int, str, int, int]]:
    """H100 80GB HBM3 as `nvidia-smi mig -lgip` lists it (memory in MiB as NVML reports it)."""
    return _from_table("H100-80GB-HBM3", {
        real.NVML_GPU_INSTANCE_PROFILE_1_SLICE: ("1g.10gb", 9_856, 1),
        real.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1: ("1g.10gb+me", 9_856, 7),
        real.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2: ("1g.20gb", 19_968, 1),
        real.NVML_GPU_INSTANCE_PROFILE_2_SLICE: ("2g.20gb", 19_968, 2),
        real.NVML_GPU_INSTANCE_PROFILE_3_SLICE: ("3g.40gb", 40_320, 3),
        real.NVML_GPU_INSTANCE_PROFILE_4_SLICE: ("4g.40gb", 40_320, 4),
        real.NVML_GPU_INSTANCE_PROFILE_7_SLICE: ("7g.80gb", 80_896, 7),
    })


def a100_profiles() -> dict[int, tuple[int, int, str, int, int]]:
    return _from_table("A100-SXM4-80GB", {
        real.NVML_GPU_INSTANCE_PROFILE_1_SLICE: ("1g.10gb", 9_728, 0),
        real.NVML_GPU_INSTANCE_PROFILE_2_SLICE: ("2g.20gb", 19_968, 1),
        real.NVML_GPU_INSTANCE_PROFILE_3_SLICE: ("3g.40gb", 40_192, 2),
        real.NVML_GPU_INSTANCE_PROFILE_4_SLICE: ("4g.40gb", 40_192, 2),
        real.NVML_GPU_INSTANCE_PROFILE_7_SLICE: ("7g.80gb", 81_152, 5),
    })


def a30_profiles() -> dict[int, tuple[int, int, str, int, int]]:
    return _from_table("A30", {
        real.NVML_GPU_INSTANCE_PROFILE_1_SLICE: ("1g.6gb", 5_836, 0),
        real.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1: ("1g.6gb+me", 5_836, 1),
        real.NVML_GPU_INSTANCE_PROFILE_2_SLICE: ("2g.12gb", 11_928, 2),
        real.NVML_GPU_INSTANCE_PROFILE_4_SLICE: ("4g.24gb", 24_062, 4),
    })


def build(state: FakeState) -> ModuleType:
    """A module object exposing the real constants/errors/structs and fake functions over ``state``."""
    mod = ModuleType("fake_pynvml")
    for name in dir(real):
        if name.startswith(("NVML_", "NVMLError", "c_nvml", "struct_c_nvml", "nvmlGpuInstanceProfileInfo")):
            setattr(mod, name, getattr(real, name))
    mod.state = state  # type: ignore[attr-defined]
    seq = itertools.count(1)
    next_addr = itertools.count(0x1000, 0x10)

    def api(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            state.calls[fn.__name__] = state.calls.get(fn.__name__, 0) + 1
            if fn.__name__ not in ("nvmlInit", "nvmlShutdown") and not state.initialized:
                raise real.NVMLError_Uninitialized()
            for a in args:
                if isinstance(a, _Handle) and fn.__name__ in a.gpu.fail:
                    raise a.gpu.fail[fn.__name__]()
            return fn(*args, **kwargs)

        wrapper.__name__ = fn.__name__
        setattr(mod, fn.__name__, wrapper)
        return wrapper

    def parent(h: _Handle) -> FakeGpu:
        if h.mig is not None:
            raise real.NVMLError_InvalidArgument()  # a MIG handle where a physical GPU is required
        return h.gpu

    def sample_of(ptr: Any) -> _Sample:
        addr = ctypes.cast(ptr, ctypes.c_void_p).value
        s = state.samples.get(addr or 0)
        if s is None or s.freed:
            raise real.NVMLError_InvalidArgument()
        return s

    @api
    def nvmlInit() -> None:
        if state.init_error is not None:
            raise state.init_error()
        state.initialized = True

    @api
    def nvmlShutdown() -> None:
        if not state.initialized:
            raise real.NVMLError_Uninitialized()
        state.initialized = False
        state.shutdowns += 1

    @api
    def nvmlDeviceGetCount() -> int:
        return len(state.gpus)

    @api
    def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:
        if not 0 <= index < len(state.gpus):
            raise real.NVMLError_InvalidArgument()
        return _Handle(state.gpus[index])

    @api
    def nvmlDeviceGetUUID(h: _Handle) -> str:
        return h.gpu.uuid

    @api
    def nvmlDeviceGetName(h: _Handle) -> str:
        return h.gpu.name

    @api
    def nvmlDeviceGetMigMode(h: _Handle) -> list[int]:
        g = parent(h)
        if g.mig_enabled is None:
            raise real.NVMLError_NotSupported()
        mode = real.NVML_DEVICE_MIG_ENABLE if g.mig_enabled else real.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    @api
    def nvmlDeviceGetMaxMigDeviceCount(h: _Handle) -> int:
        g = parent(h)
        return g.max_mig if g.mig_enabled is not None else 0

    @api
    def nvmlDeviceGetMigDeviceHandleByIndex(h: _Handle, index: int) -> _Handle:
        g = parent(h)
        if not 0 <= index < g.max_mig:
            raise real.NVMLError_InvalidArgument()
        if not g.mig_enabled or index >= len(g.migs) or g.migs[index] is None:
            raise real.NVMLError_NotFound()
        return _Handle(g, g.migs[index])

    @api
    def nvmlDeviceGetGpuInstanceId(h: _Handle) -> int:
        if h.mig is None:
            raise real.NVMLError_InvalidArgument()
        return h.mig.gi_id

    @api
    def nvmlDeviceGetGpuInstanceById(h: _Handle, gi_id: int) -> _GiHandle:
        g = parent(h)  # the PARENT device plus the GI id, like GPM
        mig = next((m for m in g.migs if m is not None and m.gi_id == gi_id), None)
        if not g.mig_enabled or mig is None:
            raise real.NVMLError_NotFound()
        return _GiHandle(g, mig)

    @api
    def nvmlGpuInstanceGetInfo(gi: _GiHandle) -> Any:
        if not isinstance(gi, _GiHandle) or gi.mig is None:
            raise real.NVMLError_InvalidArgument()
        if gi.mig.placement is None:
            raise real.NVMLError_NotSupported()
        info = real.c_nvmlGpuInstanceInfo_t()
        info.id = gi.mig.gi_id
        info.placement.start, info.placement.size = gi.mig.placement
        return info

    @api
    def nvmlDeviceGetAttributes(h: _Handle) -> Any:
        a = real.c_nvmlDeviceAttributes()
        if h.mig is None:
            a.multiprocessorCount = h.gpu.sm_count
            a.gpuInstanceSliceCount = 0
            a.memorySizeMB = h.gpu.mem_total_mb
        else:
            a.multiprocessorCount = h.mig.sm_count
            a.gpuInstanceSliceCount = h.mig.slices
            a.computeInstanceSliceCount = h.mig.slices
            a.memorySizeMB = h.mig.mem_mb
            a.sharedDecoderCount = h.mig.decoders
        return a

    @api
    def nvmlDeviceGetMemoryInfo(h: _Handle, version: int | None = None) -> Any:
        m = real.c_nvmlMemory_t()
        total, used = (h.mig.mem_mb, h.mig.used_mb) if h.mig else (h.gpu.mem_total_mb, h.gpu.mem_used_mb)
        m.total, m.used, m.free = total * MIB, used * MIB, (total - used) * MIB
        return m

    @api
    def nvmlDeviceGetUtilizationRates(h: _Handle) -> Any:
        if h.mig is not None or h.gpu.mig_enabled:
            raise real.NVMLError_NotSupported()  # the classic counter does not exist under MIG
        u = real.c_nvmlUtilization_t()
        u.gpu = h.gpu.util_gpu
        return u

    @api
    def nvmlDeviceGetGpuInstanceProfileInfo(h: _Handle, profile: int, version: int = 2) -> Any:
        g = parent(h)
        if profile not in g.profiles or (g.profiles_need_mig and not g.mig_enabled):
            raise real.NVMLError_NotSupported()
        slices, mem, name, sms, decoders = g.profiles[profile]
        info = real.c_nvmlGpuInstanceProfileInfo_v2_t()
        info.id, info.sliceCount, info.memorySizeMB, info.multiprocessorCount = profile, slices, mem, sms
        info.decoderCount, info.name = decoders, name.encode()
        return info

    @api
    def nvmlGpmQueryDeviceSupport(h: _Handle) -> Any:
        support = real.c_nvmlGpmSupport_t()
        support.version = real.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = int(parent(h).gpm_supported)
        return support

    @api
    def nvmlGpmSampleAlloc() -> Any:
        addr = next(next_addr)
        state.samples[addr] = _Sample()
        return ctypes.cast(ctypes.c_void_p(addr), real.c_nvmlGpmSample_t)

    @api
    def nvmlGpmSampleFree(ptr: Any) -> None:
        sample_of(ptr).freed = True

    def fill(g: FakeGpu, gi: int, values: dict[int, float], ptr: Any) -> Any:
        if not g.gpm_supported:
            raise real.NVMLError_NotSupported()
        s = sample_of(ptr)
        s.target, s.seq, s.values = (g.uuid, gi), next(seq), dict(values)
        return ptr

    @api
    def nvmlGpmSampleGet(h: _Handle, ptr: Any) -> Any:
        g = parent(h)
        return fill(g, -1, g.gpm, ptr)

    @api
    def nvmlGpmMigSampleGet(h: _Handle, gi_id: int, ptr: Any) -> Any:
        g = parent(h)  # GPM wants the PARENT device plus the GI id, not the MIG handle
        mig = next((m for m in g.migs if m is not None and m.gi_id == gi_id), None)
        if mig is None:
            raise real.NVMLError_NotFound()
        return fill(g, gi_id, mig.gpm, ptr)

    @api
    def nvmlGpmMetricsGet(mg: Any) -> Any:
        if mg.version != real.NVML_GPM_METRICS_GET_VERSION or not 0 < mg.numMetrics <= real.NVML_GPM_METRIC_MAX:
            raise real.NVMLError_InvalidArgument()
        s1, s2 = sample_of(mg.sample1), sample_of(mg.sample2)
        if s1.target is None or s1.target != s2.target or not s1.seq < s2.seq:
            raise real.NVMLError_InvalidArgument()
        for i in range(mg.numMetrics):
            m = mg.metrics[i]
            if m.metricId in s2.values:
                m.value, m.nvmlReturn = s2.values[m.metricId], real.NVML_SUCCESS
            else:
                m.value, m.nvmlReturn = 0.0, real.NVML_ERROR_NOT_SUPPORTED
        return mg

    return mod
