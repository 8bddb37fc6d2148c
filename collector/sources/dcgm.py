"""dcgm-exporter source: scrape ``/metrics`` (or a saved scrape) into per-GPU snapshots.

What real exporters emit is messier than the text format suggests (see DESIGN.md "The
metric"), so this module is mostly about deciding, row by row, what a labelled sample means:

- label names changed across exporter versions (``Hostname``/``hostname``, ``UUID``/``uuid``,
  ``pod``/``pod_name``, ``namespace``/``pod_namespace``, ``container``/``container_name``),
  and some pipelines lower-case metric and label names: both are matched case-insensitively;
- behind a Prometheus the scrape target's own labels (the exporter pod's ``namespace``/``pod``/
  ``container``) sit beside the workload's, which become ``exported_*`` without
  ``honor_labels``: :mod:`collector.sources.labels` tells the exporter's pod from a workload's;
- a MIG GPU reports one row per GPU instance (``GPU_I_ID``, ``GPU_I_PROFILE``); old exporters
  add a GPU-level row beside them, which must not be counted a second time;
- several pods on one instance or GPU (time-slicing, ``--kubernetes-virtual-gpus``) each get a
  copy of its series: the instance is shared, each pod billed an equal share, or a share in
  proportion to its own ``DCGM_FI_DEV_GPU_UTIL`` where the exporter reports that per pod
  (per-process utilization, dcgm-exporter 4.x on GPUs without MIG);
- one round can garble a profile (``<<<NULL>>>``) or drop a MIG GPU's instance rows: with the
  source's :class:`LayoutMemory` the instance keeps its last known profile and the GPU stays
  in MIG mode, so a glitch is not a layout change;
- values can be garbage (``ERROR - FAILED TO CONVERT TO STRING``, NaN, sentinels), and one
  garbage line makes ``prometheus_client``'s parser give up on the rest of the scrape.

Every skipped or repaired value, line, instance, snapshot or endpoint is counted in
:class:`ReadStats` by reason; nothing here raises on bad input. :func:`snapshots_from_samples`
is the one place that turns labelled samples into snapshots; the Prometheus backfill reuses it.
"""

from __future__ import annotations

import logging
import math
import re
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from prometheus_client.parser import text_string_to_metric_families

from collector.slices import profile_slices, total_slices_for_model
from collector.snapshot import FULL_GPU_GI_ID, Instance, Metrics, Snapshot, Tenant, TenantShare
from collector.sources.base import ReadStats
from collector.sources.labels import LabelCase, TargetFilter, tenant_of
from collector.sources.fetch import BodyTooLarge, fetch_bounded  # one deadline per endpoint (fetch.py)
from migmeter.errors import BadSnapshot, ConfigError, SourceUnavailable
from migmeter.settings import redact_url

__all__ = [
    "METRIC_FIELDS",
    "MIG_MODE_METRIC",
    "POD_UTIL_METRIC",
    "LabelledSample",
    "HttpGet",
    "LayoutMemory",
    "BodyTooLarge",
    "snapshots_from_samples",
    "parse_scrape",
    "fetch_bounded",
    "DcgmSource",
    "MAX_PARALLEL_FETCHES",
]

log = logging.getLogger(__name__)

# DCGM field -> Metrics attribute. Everything else (clocks, temperature, power, energy) is
# device-wide, copied onto every instance row by the exporter, and must never be summed, so
# it is not read at all.
METRIC_FIELDS: Mapping[str, str] = {
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "gr_engine_active",
    "DCGM_FI_PROF_SM_ACTIVE": "sm_active",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": "tensor_active",
    "DCGM_FI_PROF_DRAM_ACTIVE": "dram_active",
    "DCGM_FI_DEV_FB_USED": "fb_used_mib",
    "DCGM_FI_DEV_FB_FREE": "fb_free_mib",
}
# 1 on a GPU in MIG mode: tells "MIG on, no instances yet" apart from "MIG off" when a GPU
# has no GPU_I_ID rows at all. Optional: most exporter configs do not export it.
MIG_MODE_METRIC = "DCGM_FI_DEV_MIG_MODE"
# Percent 0..100. Read only to split a shared instance between its pods: with per-process
# metrics (--kubernetes-virtual-gpus, GPUs without MIG) each pod's series holds its own
# processes' SM utilization; older exporters copy the device's value to every pod, which
# splits evenly, as it should.
POD_UTIL_METRIC = "DCGM_FI_DEV_GPU_UTIL"
_RATIO_FIELDS = frozenset({"gr_engine_active", "sm_active", "tensor_active", "dram_active"})

# DCGM's profiling ratios overshoot 1.0 (or dip under 0) by rounding noise; within this band
# they are clamped, beyond it the value is a sentinel or garbage and is skipped.
RATIO_TOLERANCE = 0.01
# No GPU has 10 TiB of framebuffer; larger FB values are DCGM's blank/error sentinels.
MAX_FB_MIB = 10 * 1024 * 1024
# A body whose first lines are all unparseable is not an exposition (an HTML error page, a
# login form); stop parsing it line by line instead of counting a million bad lines.
_MAX_LEADING_BAD_LINES = 50
# Endpoints are fetched in parallel so a fleet of slow or hanging exporters costs about one
# timeout per round, not one per endpoint; bounded so a huge URL list does not spawn
# hundreds of threads.
MAX_PARALLEL_FETCHES = 16
# The wire contract refuses strings over 256 characters (host, UUID, model, profile, tenant);
# a label that long is garbage, and a snapshot carrying it would only be dead-lettered later.
_MAX_LABEL_CHARS = 256

# (metric name, labels, value) of one sample; all samples of one call share one timestamp.
LabelledSample = tuple[str, Mapping[str, str], float]
# (url, timeout_s, max_bytes) -> body; raises BodyTooLarge, TimeoutError or OSError.
HttpGet = Callable[[str, float, int], bytes]

# Label names as matched: lower-cased, so ``UUID``/``uuid``, ``Hostname``/``hostname``,
# ``GPU_I_ID``/``gpu_i_id`` and ``modelName``/``modelname`` are one name each.
_UUID_LABEL = "uuid"
_HOST_LABEL = "hostname"
_GI_LABEL = "gpu_i_id"
_PROFILE_LABEL = "gpu_i_profile"
_MODEL_LABEL = "modelname"
_INDEX_LABEL = "gpu"


@dataclass
class LayoutMemory:
    """What one source saw in earlier rounds, so a one-round glitch is not a layout change.

    ``profiles``: the last readable profile (and its slices) of each (GPU UUID, GI id), used when
    a round reports the GI with an unreadable one (``<<<NULL>>>``). ``mig``: whether each GPU was in
    MIG mode, so a MIG GPU whose instance rows are missing for a round stays in MIG mode
    unless the source says MIG is off. Bounded by the fleet: at most 7 GIs per GPU.
    """

    profiles: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    mig: dict[str, bool] = field(default_factory=dict)
    # What was already logged, so a GPU that stays broken logs once per episode, not every round.
    told: set[tuple[str, ...]] = field(default_factory=set)

    def tell_once(self, key: tuple[str, ...], message: str, *args: object) -> None:
        if key not in self.told:
            self.told.add(key)
            log.warning(message, *args)

    def healed(self, key: tuple[str, ...]) -> None:
        """The condition logged under ``key`` is over: log it again if it comes back."""
        self.told.discard(key)


@dataclass
class _Row:
    """What one (GPU, GI) - or the GPU-level row when ``gi_id`` is None - has shown so far."""

    profile: str = ""
    # Workload pods seen on the row, in order of appearance, keyed by (namespace, pod).
    tenants: dict[tuple[str, str], Tenant] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    # (field, namespace, pod) already read: the same series twice is a duplicate; the same
    # field from another pod is that pod's copy of the instance's value.
    fed: set[tuple[str, str, str]] = field(default_factory=set)
    # POD_UTIL_METRIC per (namespace, pod), summed over the pod's series.
    pod_util: dict[tuple[str, str], float] = field(default_factory=dict)


@dataclass
class _Gpu:
    host: str = ""
    index: int = -1
    model: str = ""
    mig_mode: bool | None = None  # DCGM_FI_DEV_MIG_MODE if exported: 1 on, 0 off
    gpu_row: _Row = field(default_factory=_Row)
    instances: dict[int, _Row] = field(default_factory=dict)


def _clean_value(field_name: str, value: float) -> float | None:
    """The value to keep, or None when it is garbage (non-finite, negative, a sentinel)."""
    if not math.isfinite(value):
        return None
    if field_name in _RATIO_FIELDS:
        if -RATIO_TOLERANCE <= value <= 1.0 + RATIO_TOLERANCE:
            return min(1.0, max(0.0, value))
        return None
    if 0.0 <= value <= MAX_FB_MIB:
        return value
    return None


def _gi_id(labels: Mapping[str, str]) -> int | None:
    """The GI id, or None for a GPU-level row; ValueError for a label that is not an id."""
    raw = labels.get(_GI_LABEL, "").strip()
    if not raw:
        return None
    gi = int(raw)
    if gi < 0:
        raise ValueError(f"negative GPU_I_ID {gi}")
    return gi


def _labels_too_long(labels: Mapping[str, str]) -> bool:
    return any(len(v) > _MAX_LABEL_CHARS for v in labels.values())


def _feed(row: _Row, labels: Mapping[str, str], targets: TargetFilter | None, field_name: str | None,
          value: float, stats: ReadStats, *, pod_util: bool = False) -> None:
    """One sample into its row: the pod it names, and its value unless already known."""
    tenant = tenant_of(labels, targets)
    if tenant.assigned:
        row.tenants.setdefault((tenant.namespace, tenant.pod), tenant)
    if pod_util:
        if not (math.isfinite(value) and 0.0 <= value <= 100.0):
            stats.skip("bad_value")
        elif tenant.assigned:
            pod_key = (tenant.namespace, tenant.pod)
            row.pod_util[pod_key] = row.pod_util.get(pod_key, 0.0) + value
        return
    if field_name is None:
        return
    clean = _clean_value(field_name, value)
    if clean is None:
        stats.skip("bad_value")
        return
    key = (field_name, tenant.namespace, tenant.pod)
    if key in row.fed:
        # Same series twice (an exporter restart seen by Prometheus): the first value stands.
        stats.skip("duplicate_sample")
        return
    row.fed.add(key)
    # Another pod's copy of a shared instance's value: the instance has one value (the first).
    row.values.setdefault(field_name, clean)


def _collect(samples: Iterable[LabelledSample], stats: ReadStats, targets: TargetFilter | None) -> dict[str, _Gpu]:
    """Group samples by GPU UUID and GI id, keeping the first good value of each field."""
    gpus: dict[str, _Gpu] = {}
    case = LabelCase()
    for name, raw_labels, value in samples:
        upper = name.upper()
        field_name = METRIC_FIELDS.get(upper)
        labels = case.lowered(raw_labels)
        uuid = labels.get(_UUID_LABEL, "")
        if not uuid:
            if field_name is not None:
                stats.skip("missing_uuid")
            continue
        try:
            gi = _gi_id(labels)
        except ValueError:
            stats.skip("bad_label")
            continue
        if _labels_too_long(labels):
            stats.skip("bad_label")
            continue
        gpu = gpus.get(uuid)
        if gpu is None:
            gpu = gpus[uuid] = _Gpu()
        # GPU identity comes from whichever row names it first; every row repeats it.
        if not gpu.host:
            gpu.host = labels.get(_HOST_LABEL, "")
        if not gpu.model:
            gpu.model = labels.get(_MODEL_LABEL, "").strip()
        if gpu.index < 0:
            try:
                gpu.index = int(labels.get(_INDEX_LABEL, ""))
            except ValueError:
                pass
        if upper == MIG_MODE_METRIC:
            if value in (0.0, 1.0):
                gpu.mig_mode = value == 1.0
            else:
                stats.skip("bad_value")
        if gi is None:
            row = gpu.gpu_row
        else:
            profile = labels.get(_PROFILE_LABEL, "").strip()
            have = gpu.instances.get(gi)
            if have is None:
                row = gpu.instances[gi] = _Row(profile=profile)
            else:
                row = have
                if profile != row.profile and profile_slices(row.profile) is None:
                    row.profile = profile  # a later row of the GI may carry the readable name
        # The row exists (layout is known) even when it carries no metric we read.
        _feed(row, labels, targets, field_name, value, stats, pod_util=upper == POD_UTIL_METRIC)
    return gpus


def _metrics(row: _Row) -> Metrics:
    return Metrics(**row.values)


def _shares(row: _Row, pods: Sequence[Tenant]) -> list[float]:
    """Each pod's share: its part of the per-pod utilization when every pod reports one and
    they are not all 0, else equal."""
    utils = [row.pod_util.get((t.namespace, t.pod)) for t in pods]
    known = [u for u in utils if u is not None]
    total = sum(known)
    if len(known) == len(pods) and total > 0:
        return [u / total for u in known]
    return [1.0 / len(pods)] * len(pods)


def _instance(gi_id: int, profile: str, slices: int, row: _Row) -> Instance:
    """The instance of a row; several pods on it share it (sorted, so the primary ``tenant``
    does not flip with the order an exporter happens to list them in)."""
    pods = sorted(row.tenants.values(), key=lambda t: (t.namespace, t.pod, t.container))
    if len(pods) < 2:
        return Instance(gi_id=gi_id, profile=profile, slices=slices, metrics=_metrics(row),
                        tenant=pods[0] if pods else Tenant())
    return Instance(gi_id=gi_id, profile=profile, slices=slices, metrics=_metrics(row), tenant=pods[0],
                    tenants=tuple(TenantShare(t, share) for t, share in zip(pods, _shares(row, pods))))


def _is_mig(uuid: str, gpu: _Gpu, memory: LayoutMemory, stats: ReadStats) -> bool:
    """MIG mode: instance rows or DCGM_FI_DEV_MIG_MODE say so; without either, what the GPU was."""
    if gpu.instances or gpu.mig_mode is not None:
        mig = bool(gpu.instances) or bool(gpu.mig_mode)
        memory.healed(("mig_rows_missing", uuid))
    else:
        mig = memory.mig.get(uuid, False)
        if mig:
            stats.skip("mig_rows_missing")
            memory.tell_once(("mig_rows_missing", uuid),
                             "GPU %s: no instance rows this round; it stays in MIG mode with no instances "
                             "(export DCGM_FI_DEV_MIG_MODE to report MIG turned off)", uuid)
    memory.mig[uuid] = mig
    return mig


def _mig_instances(uuid: str, gpu: _Gpu, memory: LayoutMemory, stats: ReadStats) -> list[Instance]:
    """The instances whose slices are known: from the profile, else from the GI's last readable one."""
    instances = []
    for gi_id in sorted(gpu.instances):
        row = gpu.instances[gi_id]
        profile = row.profile
        slices = profile_slices(profile)
        key = (uuid, gi_id)
        told = ("unknown_profile", uuid, str(gi_id))
        if slices is not None:
            memory.profiles[key] = (profile, slices)
            memory.healed(told)
        else:
            known = memory.profiles.get(key)
            if known is None:
                stats.skip("unknown_profile")
                memory.tell_once(told,
                                 "GPU %s GI %d: profile %r has no readable Ng size and none was seen before: "
                                 "instance not metered this round (counted as unknown_profile)",
                                 uuid, gi_id, profile[:64])
                continue
            stats.skip("garbled_profile")  # the GI keeps its last known profile and slices
            profile, slices = known
        instances.append(_instance(gi_id, profile, slices, row))
    return instances


def _snapshot(
    uuid: str,
    gpu: _Gpu,
    *,
    ts: datetime,
    interval_s: float,
    source: str,
    cluster: str,
    overrides: Mapping[str, int] | None,
    stats: ReadStats,
    memory: LayoutMemory,
) -> Snapshot | None:
    model = gpu.model or "unknown"
    total = total_slices_for_model(model, overrides)
    mig = _is_mig(uuid, gpu, memory, stats)
    if mig:
        # A MIG GPU's GPU-level row (old exporters) duplicates its instances: it adds nothing.
        instances = _mig_instances(uuid, gpu, memory, stats)
        if sum(i.slices for i in instances) > total:
            stats.skip("slices_exceed_total")
            log.warning("GPU %s (%s) reports instances using more than its %d slices: snapshot dropped",
                        uuid, model, total)
            return None
    else:
        instances = [_instance(FULL_GPU_GI_ID, "", total, gpu.gpu_row)]
    snap = Snapshot(
        ts=ts, interval_s=interval_s, source=source, cluster=cluster, host=gpu.host,
        gpu_uuid=uuid, gpu_index=gpu.index, gpu_model=model, mig_enabled=mig,
        total_slices=total, instances=tuple(instances),
    )
    try:
        return snap.validate()
    except BadSnapshot as exc:
        stats.skip("bad_snapshot")
        log.warning("GPU %s: snapshot dropped: %s", uuid, exc.reason)
        return None


def _scrape_ts(ts: datetime) -> datetime:
    """Aware UTC, truncated to the millisecond the wire carries (so a round trip is exact)."""
    if ts.tzinfo is None:
        raise ValueError("snapshot ts must be timezone-aware")
    ts = ts.astimezone(timezone.utc)
    return ts.replace(microsecond=ts.microsecond // 1000 * 1000)


def snapshots_from_samples(
    samples: Iterable[LabelledSample],
    *,
    ts: datetime,
    interval_s: float,
    source: str,
    cluster: str,
    total_slices_overrides: Mapping[str, int] | None = None,
    stats: ReadStats | None = None,
    memory: LayoutMemory | None = None,
    targets: TargetFilter | None = None,
) -> list[Snapshot]:
    """Turn the labelled samples of one instant into one snapshot per GPU UUID (sorted by UUID).

    A GPU with any ``GPU_I_ID`` row is in MIG mode and is its instances; a GPU without is one
    pseudo-instance covering all its slices, unless ``memory`` knows it in MIG mode and the
    samples do not say MIG is off. Bad values, unweighable instances and impossible layouts
    are skipped and counted in ``stats``, never raised. Pass the same ``memory`` every round
    (a source owns one); ``targets`` tells the scrape target's pod labels from a workload's.
    """
    stats = stats if stats is not None else ReadStats()
    memory = memory if memory is not None else LayoutMemory()
    at = _scrape_ts(ts)
    gpus = _collect(samples, stats, targets)
    out = []
    for uuid in sorted(gpus):
        snap = _snapshot(uuid, gpus[uuid], ts=at, interval_s=interval_s, source=source, cluster=cluster,
                         overrides=total_slices_overrides, stats=stats, memory=memory)
        if snap is not None:
            out.append(snap)
    return out


def _is_bad_line_ours(line: str) -> bool:
    """Whether an unparseable line is one of the fields we read (then its value is what's bad)."""
    # A line may start with "{" or spaces before it ("{", " {x}"): no name at all.
    head = line.split("{", 1)[0].split(None, 1)
    name = head[0].upper() if head else ""
    return name in METRIC_FIELDS or name in (MIG_MODE_METRIC, POD_UTIL_METRIC)


def _samples_by_line(text: str, stats: ReadStats) -> Iterator[LabelledSample]:
    """Slow path: parse each line alone so one garbage line costs only itself."""
    good = bad = 0
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            parsed = [(s.name, s.labels, s.value) for f in text_string_to_metric_families(stripped + "\n")
                      for s in f.samples]
        except Exception:  # the parser raises ValueError, but also IndexError/KeyError on odd input
            bad += 1
            stats.skip("bad_value" if _is_bad_line_ours(stripped) else "bad_line")
            if good == 0 and bad >= _MAX_LEADING_BAD_LINES:
                stats.skip("not_exposition")
                return
            continue
        good += 1
        yield from parsed


def _samples(text: str, stats: ReadStats) -> list[LabelledSample]:
    try:
        return [(s.name, s.labels, float(s.value))
                for family in text_string_to_metric_families(text) for s in family.samples]
    except Exception:
        # The streaming parser stops at the first bad line; redo the scrape line by line.
        return list(_samples_by_line(text, stats))


def parse_scrape(
    text: str,
    *,
    cluster: str,
    ts: datetime,
    interval_s: float,
    total_slices_overrides: Mapping[str, int] | None = None,
    stats: ReadStats | None = None,
    memory: LayoutMemory | None = None,
    targets: TargetFilter | None = None,
) -> list[Snapshot]:
    """Parse one dcgm-exporter scrape (Prometheus text format) into one snapshot per GPU."""
    stats = stats if stats is not None else ReadStats()
    return snapshots_from_samples(
        _samples(text, stats), ts=ts, interval_s=interval_s, source="dcgm", cluster=cluster,
        total_slices_overrides=total_slices_overrides, stats=stats, memory=memory, targets=targets,
    )


def _check_url(url: str) -> None:
    if not (url.startswith(("http://", "https://", "file:"))):
        raise ConfigError(f"dcgm endpoint {redact_url(url)!r} must be http(s)://... or file:PATH")


class DcgmSource:
    """Reads every dcgm-exporter endpoint once per :meth:`read`; a failing one is counted and skipped.

    A GPU seen behind two endpoints in one round (a node URL and a service URL for the same
    exporter) is published once, from the freshest reading; the others are counted as
    ``duplicate_gpu`` and the URLs logged once.
    """

    name = "dcgm"
    exhausted = False  # a live source never runs out (Source protocol)

    def __init__(
        self,
        urls: Sequence[str],
        *,
        cluster: str,
        interval_s: float,
        total_slices_overrides: Mapping[str, int] | None = None,
        timeout_s: float = 5.0,
        max_bytes: int = 16 * 1024 * 1024,
        http_get: HttpGet | None = None,
        clock: Callable[[], datetime] | None = None,
        exporter_pod: re.Pattern[str] | None = None,
    ) -> None:
        if not urls:
            raise ConfigError("the dcgm source needs at least one endpoint URL")
        for url in urls:
            _check_url(url)
        self.urls = list(urls)
        self.cluster = cluster
        self.interval_s = interval_s
        self.total_slices_overrides = total_slices_overrides
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._get: HttpGet = http_get or fetch_bounded
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self.stats = ReadStats()
        self.memory = LayoutMemory()
        self._targets = TargetFilter(exporter_pod=exporter_pod) if exporter_pod is not None else None
        self._pool: ThreadPoolExecutor | None = None

    def _fetch(self, url: str) -> tuple[datetime, bytes | Exception]:
        """Runs in a pool thread: the scrape time and the body, or what went wrong (counted later)."""
        ts = self._clock()
        try:
            return ts, self._get(url, self.timeout_s, self.max_bytes)
        except Exception as exc:  # reported by _parse_one in the caller's thread, never lost
            return ts, exc

    def _count_failure(self, shown: str, exc: Exception) -> None:
        if isinstance(exc, BodyTooLarge):
            reason = "body_too_large"
        elif isinstance(exc, TimeoutError) or (
            isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, TimeoutError)
        ):
            reason = "endpoint_timeout"  # socket.timeout is TimeoutError since 3.10
        else:
            reason = "endpoint_error"  # refused, HTTP 5xx, broken status line, unreadable file...
        self.stats.skip(reason)
        log.warning("dcgm endpoint %s: %s: %s", shown, reason, exc)

    def _parse_one(self, url: str, ts: datetime, body: bytes | Exception) -> list[Snapshot] | None:
        """Snapshots of one endpoint, or None when the endpoint gave nothing usable."""
        shown = redact_url(url)
        if isinstance(body, Exception):
            self._count_failure(shown, body)
            return None
        if body.lstrip()[:1] in (b"<", b"{", b"["):
            self.stats.skip("not_exposition")
            log.warning("dcgm endpoint %s did not return the Prometheus text format (HTML or JSON)", shown)
            return None
        before = self.stats.skipped.get("not_exposition", 0)
        snaps = parse_scrape(body.decode("utf-8", errors="replace"), cluster=self.cluster, ts=ts,
                             interval_s=self.interval_s, total_slices_overrides=self.total_slices_overrides,
                             stats=self.stats, memory=self.memory, targets=self._targets)
        if self.stats.skipped.get("not_exposition", 0) > before:
            log.warning("dcgm endpoint %s did not return the Prometheus text format", shown)
            return None
        return snaps

    def read(self) -> list[Snapshot]:
        """One round over every endpoint, fetched in parallel, parsed in URL order.

        Raises SourceUnavailable only when every endpoint failed; each failure is counted.
        """
        if len(self.urls) == 1:
            fetched = [self._fetch(self.urls[0])]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_FETCHES, len(self.urls)),
                                                thread_name_prefix="dcgm-fetch")
            fetched = list(self._pool.map(self._fetch, self.urls))
        readings: list[tuple[str, Snapshot]] = []
        failed = 0
        for url, (ts, body) in zip(self.urls, fetched):
            snaps = self._parse_one(url, ts, body)
            if snaps is None:
                failed += 1
            else:
                readings.extend((url, snap) for snap in snaps)
        if failed == len(self.urls):
            raise SourceUnavailable(f"none of the {len(self.urls)} dcgm endpoints could be read")
        return self._once_per_gpu(readings)

    def _once_per_gpu(self, readings: list[tuple[str, Snapshot]]) -> list[Snapshot]:
        """One snapshot per GPU UUID: the freshest (the first endpoint's on a tie), in URL order."""
        best: dict[str, tuple[str, Snapshot]] = {}
        urls: dict[str, list[str]] = {}
        for url, snap in readings:
            urls.setdefault(snap.gpu_uuid, []).append(url)
            have = best.get(snap.gpu_uuid)
            if have is None or snap.ts > have[1].ts:
                best[snap.gpu_uuid] = (url, snap)
        for uuid, seen in urls.items():
            if len(seen) > 1:
                self.stats.skip("duplicate_gpu", len(seen) - 1)
                shown = tuple(redact_url(u) for u in seen)
                self.memory.tell_once(("duplicate_gpu", *shown),
                                      "endpoints %s serve the same GPU (%s, and maybe more): each GPU is published "
                                      "once per round, from the freshest reading; list each exporter once",
                                      ", ".join(shown), uuid)
        kept = {id(snap) for _, snap in best.values()}
        return [snap for _, snap in readings if id(snap) in kept]

    def close(self) -> None:
        """Stop the fetch threads; connections are per request and already closed."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
