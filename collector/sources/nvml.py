"""Read GPUs directly through NVML (the ``nvidia-ml-py`` package, imported as ``pynvml``).

For sites without dcgm-exporter: the collector runs on the GPU host itself. Per physical GPU
it reads the MIG mode and, for each MIG device, the GPU-instance id and
``nvmlDeviceGetAttributes`` (slice, SM and memory counts: no root needed), memory used/free,
and utilization.

Utilization is the hard part. The classic ``nvmlDeviceGetUtilizationRates`` does not work on
MIG devices, so per-instance activity comes from GPM (``nvmlGpmMigSampleGet``, Hopper and
newer): a GPM metric is the difference of two samples, so the source keeps each instance's
previous sample between rounds, and an instance's first round has no utilization (None, not
0: "not measured" must not read as "idle"). On Ampere MIG GPUs (A100, A30) NVML has no
per-instance utilization at all; the dcgm source is the answer there, and this source says
so once in the log and counts every round it could not measure. A GPU without MIG is one
whole-GPU pseudo-instance with ``nvmlDeviceGetUtilizationRates`` (``gpu`` % / 100), refined
by GPM (SM, tensor, DRAM activity) when the GPU has it.

Profile names: NVML gives a MIG device's slice and memory counts, not its profile name, and
the name of the GPU-instance profile it was made from needs privileged calls. So the source
reads the GPU's profile table once (``nvmlDeviceGetGpuInstanceProfileInfo``, the same table
``nvidia-smi mig -lgip`` prints) and picks the profile with the same slice count, nearest
memory size and the same media engines (``+me``); when no table is readable the name is
derived as ``<slices>g.<GiB>gb``. Weights never depend on the name: ``slices`` comes from
``gpuInstanceSliceCount`` and ``total_slices`` from the profile table's largest profile (or
the model rule in :mod:`collector.slices`; ``total_slices_overrides`` beats both).

Placement: where a GPU instance sits (``placement_start``, its first memory slice: what lets
``report stranded`` split free slices exactly) comes from ``nvmlDeviceGetGpuInstanceById`` on the
parent device with the MIG device's GI id, then ``nvmlGpuInstanceGetInfo(gi).placement``. NVML
documents the first call as needing a privileged user, so an unprivileged collector gets
NoPermission: the placement stays unknown (None), which the stranded report labels an estimate.
The placement is kept only when its ``size`` is the memory slices the instance holds (its memory
over the GPU's largest profile's, in the 8 or 4 memory slices of :mod:`collector.profiles`:
3g.40gb on an H100 is size 4, 7g.80gb size 8, 1g.20gb size 2) and ``start + size`` fits the
GPU; otherwise, or with no profile table to check it against, it is left unknown. Every
instance left unknown is counted (``placement:<reason>``) and each reason is logged once per GPU.

Degradation: NoPermission and NotSupported on a metric leave that metric None, log the reason
once and count it in ``stats``; an error in what defines the layout (UUID, MIG devices,
slice counts) skips that GPU for the round (counted) rather than publish a partial layout,
which the processor would read as instances destroyed. Failing to load or start NVML raises
:class:`migmeter.errors.SourceUnavailable`.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from functools import partial
from types import ModuleType
from typing import Any

from collector.profiles import memory_slices_total
from collector.slices import total_slices_for_model
from collector.snapshot import FULL_GPU_GI_ID, Instance, Metrics, Snapshot, Tenant
from collector.sources.base import ReadStats
from migmeter.errors import BadSnapshot, SourceUnavailable

__all__ = ["NvmlSource", "GPM_METRICS"]

log = logging.getLogger(__name__)

_MIB = 1024 * 1024
# Snapshot field <- GPM metric (percent 0..100). GRAPHICS_UTIL is the GPM counterpart of
# DCGM's GR_ENGINE_ACTIVE; on a MIG instance it is relative to that instance.
GPM_METRICS: tuple[tuple[str, str], ...] = (
    ("gr_engine_active", "NVML_GPM_METRIC_GRAPHICS_UTIL"),
    ("sm_active", "NVML_GPM_METRIC_SM_UTIL"),
    ("tensor_active", "NVML_GPM_METRIC_ANY_TENSOR_UTIL"),
    ("dram_active", "NVML_GPM_METRIC_DRAM_BW_UTIL"),
)
# GPM rounds to a little over 100% now and then; beyond this it is garbage, not rounding.
_GPM_PERCENT_SLACK = 5.0


def _text(value: object) -> str:
    """nvidia-ml-py returns str; older releases returned bytes."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _err_name(exc: BaseException) -> str:
    return type(exc).__name__.removeprefix("NVMLError_")


class _Profile:
    __slots__ = ("name", "slices", "mem_mb", "decoders", "jpegs", "ofas")

    def __init__(self, info: Any) -> None:
        raw = _text(getattr(info, "name", b""))
        # NVML names GPU-instance profiles "MIG 1g.10gb"; exporters report "1g.10gb".
        self.name = raw.removeprefix("MIG ").strip()
        self.slices = int(info.sliceCount)
        self.mem_mb = int(info.memorySizeMB)
        self.decoders = int(info.decoderCount)
        self.jpegs = int(info.jpegCount)
        self.ofas = int(info.ofaCount)


class _GpuInfo:
    """What does not change while a GPU keeps its MIG mode: read once, not every round."""

    __slots__ = ("profiles", "total_slices", "gpm")

    def __init__(self, profiles: list[_Profile], total_slices: int, gpm: bool) -> None:
        self.profiles = profiles
        self.total_slices = total_slices
        self.gpm = gpm

    def placement_size(self, mem_mb: int) -> int | None:
        """Memory slices an instance of ``mem_mb`` holds (NVML's placement size), or None
        without a profile table: its share of the largest profile's memory, rounded."""
        full_mb = max((p.mem_mb for p in self.profiles), default=0)
        if full_mb <= 0:
            return None
        slots = memory_slices_total(self.total_slices)
        return max(1, min(slots, round(mem_mb / full_mb * slots)))


class NvmlSource:
    """Every GPU of this host through NVML; implements ``collector.sources.base.Source``.

    ``nvml`` is the ``pynvml`` module (injected by tests with a fake built from the real
    module's constants and error classes); ``clock`` returns the aware UTC time stamped on a
    round; ``total_slices_overrides`` maps a model substring to its total compute slices.
    NVML is started here, so a host without a driver fails at start-up, not at the first poll.
    """

    name = "nvml"
    exhausted = False  # a live source never runs out (Source protocol)

    def __init__(
        self,
        *,
        cluster: str,
        interval_s: float,
        nvml: ModuleType | None = None,
        host: str | None = None,
        clock: Callable[[], datetime] | None = None,
        total_slices_overrides: Mapping[str, int] | None = None,
    ) -> None:
        if nvml is None:
            try:
                import pynvml
            except ImportError as exc:
                raise SourceUnavailable("the nvml source needs nvidia-ml-py: pip install nvidia-ml-py") from exc
            nvml = pynvml
        self._nvml: Any = nvml
        self.cluster = cluster
        self.interval_s = float(interval_s)
        self.host = host or socket.gethostname()
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._overrides = dict(total_slices_overrides or {})
        self.stats = ReadStats()
        self._info: dict[tuple[str, bool], _GpuInfo] = {}
        # (gpu uuid, gi id, slices, memory MB) -> previous GPM sample; the slice/memory part
        # keeps a sample of a destroyed instance from pairing with a new one of the same id.
        self._gpm_prev: dict[tuple[str, int, int, int], Any] = {}
        self._warned: set[tuple[str, str]] = set()
        self._closed = False
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as exc:
            raise SourceUnavailable(
                f"NVML did not start ({_err_name(exc)}: {exc}); is the NVIDIA driver installed and "
                "libnvidia-ml.so.1 visible to this process (in a container: the NVIDIA runtime)?"
            ) from exc
        except OSError as exc:
            raise SourceUnavailable(f"NVML library could not be loaded: {exc}") from exc

    # -- Source protocol ---------------------------------------------------------------

    def read(self) -> list[Snapshot]:
        """One snapshot per GPU NVML lists; a GPU that fails is skipped and counted."""
        if self._closed:
            raise SourceUnavailable("nvml source is closed")
        nvml = self._nvml
        ts = self._clock()
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            raise SourceUnavailable(f"NVML cannot list GPUs ({_err_name(exc)}: {exc})") from exc
        live: set[tuple[str, int, int, int]] = set()
        out = []
        for index in range(count):
            try:
                snap = self._read_gpu(index, ts, live)
            except nvml.NVMLError as exc:
                self._degrade(f"gpu{index}", "gpu_skipped", exc, f"GPU {index} skipped this round")
                continue
            except _SkipGpu as skip:
                self.stats.skip(skip.reason)
                self._warn_once(f"gpu{index}", skip.reason, f"GPU {index} skipped: {skip}")
                continue
            try:
                out.append(snap.validate())
            except BadSnapshot as exc:
                self.stats.skip("invalid_snapshot")
                self._warn_once(snap.gpu_uuid, "invalid_snapshot", f"GPU {snap.gpu_uuid}: {exc.reason}")
        self._free_samples(lambda key: key not in live)
        return out

    def close(self) -> None:
        """Free GPM samples and shut NVML down; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._free_samples(lambda key: True)
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            log.debug("nvmlShutdown failed: %s", exc)

    # -- one GPU -----------------------------------------------------------------------

    def _read_gpu(self, index: int, ts: datetime, live: set[tuple[str, int, int, int]]) -> Snapshot:
        nvml = self._nvml
        dev = nvml.nvmlDeviceGetHandleByIndex(index)
        gpu_uuid = _text(nvml.nvmlDeviceGetUUID(dev))
        model = _text(nvml.nvmlDeviceGetName(dev))
        try:
            mig = nvml.nvmlDeviceGetMigMode(dev)[0] == nvml.NVML_DEVICE_MIG_ENABLE
        except nvml.NVMLError_NotSupported:
            mig = False  # a GPU without MIG support (V100, consumer boards): normal, not a loss
        info = self._gpu_info(dev, gpu_uuid, model, mig)
        if mig:
            instances = self._mig_instances(dev, gpu_uuid, info, live)
        else:
            instances = (self._whole_gpu(dev, gpu_uuid, info, live),)
        return Snapshot(ts, self.interval_s, self.name, self.cluster, self.host, gpu_uuid, index, model, mig,
                        info.total_slices, instances)

    def _gpu_info(self, dev: Any, gpu_uuid: str, model: str, mig: bool) -> _GpuInfo:
        cached = self._info.get((gpu_uuid, mig))
        if cached is not None:
            return cached
        nvml = self._nvml
        profiles = []
        for p in range(getattr(nvml, "NVML_GPU_INSTANCE_PROFILE_COUNT", 0)):
            try:
                profiles.append(_Profile(nvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, p)))
            except nvml.NVMLError:
                continue  # this profile does not exist on this GPU (or MIG is off): expected
        total = None
        for key, value in self._overrides.items():
            if key.upper() in model.upper():
                total = value
                break
        if total is None:
            total = max((p.slices for p in profiles), default=0) or total_slices_for_model(model)
        try:
            gpm = bool(nvml.nvmlGpmQueryDeviceSupport(dev).isSupportedDevice)
        except nvml.NVMLError as exc:
            gpm = False
            self._degrade(gpu_uuid, "gpm_query", exc, "GPM support could not be queried")
        if mig and not gpm:
            self._warn_once(gpu_uuid, "gpm_unsupported",
                            f"GPU {gpu_uuid} ({model}): no GPM, so NVML cannot measure MIG instance utilization "
                            "(needs Hopper or newer); use the dcgm source for it")
        info = _GpuInfo(profiles, total, gpm)
        self._info[(gpu_uuid, mig)] = info
        return info

    def _mig_instances(self, dev: Any, gpu_uuid: str, info: _GpuInfo,
                       live: set[tuple[str, int, int, int]]) -> tuple[Instance, ...]:
        nvml = self._nvml
        instances: dict[int, Instance] = {}
        for k in range(nvml.nvmlDeviceGetMaxMigDeviceCount(dev)):
            try:
                handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(dev, k)
            except (nvml.NVMLError_NotFound, nvml.NVMLError_InvalidArgument):
                continue  # an empty MIG device slot
            gi_id = int(nvml.nvmlDeviceGetGpuInstanceId(handle))
            if gi_id in instances:
                # A GPU instance split into several compute instances: one MIG device each,
                # same GI, same slices and memory; the GI is what is metered.
                self.stats.skip("extra_compute_instance")
                continue
            try:
                attrs = nvml.nvmlDeviceGetAttributes(handle)
            except nvml.NVMLError as exc:
                raise _SkipGpu(f"attributes:{_err_name(exc)}",
                               f"no slice count for GI {gi_id} ({exc}); a partial layout would look like "
                               "destroyed instances") from exc
            slices = int(attrs.gpuInstanceSliceCount)
            mem_mb = int(attrs.memorySizeMB)
            if not 1 <= slices <= info.total_slices:
                raise _SkipGpu("bad_slice_count", f"GI {gi_id} reports {slices} slices of {info.total_slices}")
            fb_used, fb_free = self._memory(handle, gpu_uuid)
            ratios: dict[str, float | None] = {}
            if info.gpm:
                key = (gpu_uuid, gi_id, slices, mem_mb)
                live.add(key)
                ratios = self._gpm(key, partial(nvml.nvmlGpmMigSampleGet, dev, gi_id))
            else:
                self.stats.skip("utilization:gpm_unsupported")
            instances[gi_id] = Instance(
                gi_id=gi_id,
                profile=self._profile_name(info, attrs, slices, mem_mb),
                slices=slices,
                metrics=Metrics(fb_used_mib=fb_used, fb_free_mib=fb_free, **ratios),
                tenant=Tenant(),
                sm_count=int(attrs.multiprocessorCount),
                mem_total_mib=float(mem_mb),
                placement_start=self._placement(dev, gpu_uuid, info, gi_id, slices, mem_mb),
            )
        return tuple(instances[g] for g in sorted(instances))

    def _whole_gpu(self, dev: Any, gpu_uuid: str, info: _GpuInfo,
                   live: set[tuple[str, int, int, int]]) -> Instance:
        nvml = self._nvml
        ratios: dict[str, float | None] = {}
        if info.gpm:
            key = (gpu_uuid, FULL_GPU_GI_ID, 0, 0)
            live.add(key)
            ratios = self._gpm(key, partial(nvml.nvmlGpmSampleGet, dev))
        if ratios.get("gr_engine_active") is None:
            try:
                ratios["gr_engine_active"] = min(1.0, max(0.0, nvml.nvmlDeviceGetUtilizationRates(dev).gpu / 100.0))
            except nvml.NVMLError as exc:
                self._degrade(gpu_uuid, "utilization", exc, "GPU utilization unavailable")
        fb_used, fb_free = self._memory(dev, gpu_uuid)
        sm_count = None
        try:
            sm_count = int(nvml.nvmlDeviceGetAttributes(dev).multiprocessorCount)
        except nvml.NVMLError:
            pass  # optional detail; not worth a counter
        mem_total = fb_used + fb_free if fb_used is not None and fb_free is not None else None
        return Instance(FULL_GPU_GI_ID, "", info.total_slices, Metrics(fb_used_mib=fb_used, fb_free_mib=fb_free,
                                                                       **ratios),
                        Tenant(), sm_count, mem_total)

    def _placement(self, dev: Any, gpu_uuid: str, info: _GpuInfo, gi_id: int, slices: int, mem_mb: int) -> int | None:
        """The GI's first memory slice as NVML reports it, or None (see "Placement" above)."""
        nvml = self._nvml
        try:
            placement = nvml.nvmlGpuInstanceGetInfo(nvml.nvmlDeviceGetGpuInstanceById(dev, gi_id)).placement
            start, size = int(placement.start), int(placement.size)
        except nvml.NVMLError as exc:
            hint = " (nvmlDeviceGetGpuInstanceById needs a privileged user)" \
                if isinstance(exc, nvml.NVMLError_NoPermission) else ""
            self._degrade(gpu_uuid, "placement", exc, f"GPU-instance placements unavailable{hint}; report stranded "
                                                        "estimates this GPU's split")
            return None
        expected = info.placement_size(mem_mb)
        if expected is None:
            self.stats.skip("placement:unchecked")
            self._warn_once(gpu_uuid, "placement:unchecked",
                            f"GPU {gpu_uuid}: no GPU-instance profile table to check placements against; "
                            "placements left unknown")
            return None
        if size != expected or start < 0 or start + size > memory_slices_total(info.total_slices):
            self.stats.skip("placement:size_mismatch")
            self._warn_once(gpu_uuid, "placement:size_mismatch",
                            f"GPU {gpu_uuid}: GI {gi_id} ({slices} compute slices, {mem_mb} MiB: {expected} of "
                            f"{memory_slices_total(info.total_slices)} memory slices) reports placement "
                            f"{start}:{size} (start:size), which it cannot hold; placement left unknown")
            return None
        return start

    # -- metrics -----------------------------------------------------------------------

    def _memory(self, handle: Any, gpu_uuid: str) -> tuple[float | None, float | None]:
        nvml = self._nvml
        try:
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        except nvml.NVMLError as exc:
            self._degrade(gpu_uuid, "memory_info", exc, "memory used/free unavailable")
            return None, None
        return mem.used / _MIB, mem.free / _MIB

    def _gpm(self, key: tuple[str, int, int, int], take: Callable[[Any], Any]) -> dict[str, float | None]:
        """Take a GPM sample; with the previous one of this instance, compute the ratios."""
        nvml = self._nvml
        gpu_uuid = key[0]
        try:
            sample = nvml.nvmlGpmSampleAlloc()
        except nvml.NVMLError as exc:
            self._degrade(gpu_uuid, "gpm_sample", exc, "GPM sample could not be allocated")
            return {}
        try:
            take(sample)
        except nvml.NVMLError as exc:
            nvml.nvmlGpmSampleFree(sample)
            self._degrade(gpu_uuid, "gpm_sample", exc, "GPM sample failed; utilization unavailable")
            return {}
        prev = self._gpm_prev.pop(key, None)
        self._gpm_prev[key] = sample
        if prev is None:
            return {}  # first sample of this instance: a rate needs two
        try:
            return self._gpm_ratios(prev, sample, gpu_uuid)
        finally:
            nvml.nvmlGpmSampleFree(prev)

    def _gpm_ratios(self, prev: Any, cur: Any, gpu_uuid: str) -> dict[str, float | None]:
        nvml = self._nvml
        mg = nvml.c_nvmlGpmMetricsGet_t()
        mg.version = nvml.NVML_GPM_METRICS_GET_VERSION
        mg.numMetrics = len(GPM_METRICS)
        mg.sample1 = prev
        mg.sample2 = cur
        for i, (_, metric) in enumerate(GPM_METRICS):
            mg.metrics[i].metricId = getattr(nvml, metric)
        try:
            nvml.nvmlGpmMetricsGet(mg)
        except nvml.NVMLError as exc:
            self._degrade(gpu_uuid, "gpm_metrics", exc, "GPM metrics could not be computed")
            return {}
        out: dict[str, float | None] = {}
        for i, (field, _) in enumerate(GPM_METRICS):
            m = mg.metrics[i]
            value = float(m.value)
            if m.nvmlReturn != nvml.NVML_SUCCESS:
                self.stats.skip(f"gpm:{field}:{_err_name(nvml.NVMLError(m.nvmlReturn))}")
                out[field] = None
            elif not math.isfinite(value) or not -_GPM_PERCENT_SLACK <= value <= 100.0 + _GPM_PERCENT_SLACK:
                self.stats.skip(f"gpm:{field}:out_of_range")
                out[field] = None
            else:
                out[field] = min(1.0, max(0.0, value / 100.0))
        return out

    def _profile_name(self, info: _GpuInfo, attrs: Any, slices: int, mem_mb: int) -> str:
        """The GPU's own profile with these slices, nearest memory, same media engines."""
        candidates = [p for p in info.profiles if p.slices == slices and p.name]
        if not candidates:
            return f"{slices}g.{round(mem_mb / 1024)}gb"

        def distance(p: _Profile) -> tuple[int, int, int]:
            engines = (int(attrs.sharedDecoderCount), int(attrs.sharedJpegCount), int(attrs.sharedOfaCount))
            return abs(p.mem_mb - mem_mb), int((p.decoders, p.jpegs, p.ofas) != engines), int("+" in p.name)

        return min(candidates, key=distance).name

    # -- bookkeeping -------------------------------------------------------------------

    def _free_samples(self, stale: Callable[[tuple[str, int, int, int]], bool]) -> None:
        nvml = self._nvml
        for key in [k for k in self._gpm_prev if stale(k)]:
            try:
                nvml.nvmlGpmSampleFree(self._gpm_prev.pop(key))
            except nvml.NVMLError as exc:
                log.debug("nvmlGpmSampleFree failed: %s", exc)

    def _degrade(self, gpu: str, what: str, exc: BaseException, message: str) -> None:
        reason = f"{what}:{_err_name(exc)}"
        self.stats.skip(reason)
        self._warn_once(gpu, reason, f"GPU {gpu}: {message} ({exc})")

    def _warn_once(self, gpu: str, reason: str, message: str) -> None:
        """First occurrence per GPU and reason at WARNING; repeats only at DEBUG (counted anyway)."""
        if (gpu, reason) in self._warned:
            log.debug("%s", message)
            return
        self._warned.add((gpu, reason))
        log.warning("%s", message)


class _SkipGpu(SourceUnavailable):
    """This GPU cannot be described whole this round; ``reason`` is the stats key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
