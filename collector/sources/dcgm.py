"""dcgm-exporter source: scrape ``/metrics`` (or a saved scrape) into per-GPU snapshots.

What real exporters emit is messier than the text format suggests (see DESIGN.md "The
metric"), so this module is mostly about deciding, row by row, what a labelled sample means:

- label names changed across exporter versions (``Hostname``/``hostname``, ``UUID``/``uuid``,
  ``pod``/``pod_name``, ``namespace``/``pod_namespace``, ``container``/``container_name``);
  behind a Prometheus that did not honour the exporter's labels they become ``exported_*``;
- a MIG GPU reports one row per GPU instance (``GPU_I_ID``, ``GPU_I_PROFILE``); old exporters
  add a GPU-level row beside them, which must not be counted a second time;
- values can be garbage (``ERROR - FAILED TO CONVERT TO STRING``, NaN, sentinels), and one
  garbage line makes ``prometheus_client``'s parser give up on the rest of the scrape.

Every skipped value, line, instance, snapshot or endpoint is counted in :class:`ReadStats`
by reason; nothing here raises on bad input. :func:`snapshots_from_samples` is the one place
that turns labelled samples into snapshots; the Prometheus backfill source reuses it.
"""

from __future__ import annotations

import logging
import math
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from prometheus_client.parser import text_string_to_metric_families

from collector.slices import profile_slices, total_slices_for_model
from collector.snapshot import FULL_GPU_GI_ID, Instance, Metrics, Snapshot, Tenant
from collector.sources.base import ReadStats
from collector.sources.fetch import BodyTooLarge, fetch_bounded  # one deadline per endpoint (fetch.py)
from migmeter.errors import BadSnapshot, ConfigError, SourceUnavailable
from migmeter.settings import redact_url

__all__ = [
    "METRIC_FIELDS",
    "MIG_MODE_METRIC",
    "LabelledSample",
    "HttpGet",
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

# Label names, first match wins. exported_* first: when Prometheus scraped the exporter
# without honor_labels, plain ``pod``/``namespace`` name the exporter's own pod.
_UUID_LABELS = ("UUID", "uuid")
_HOST_LABELS = ("Hostname", "hostname")
_POD_LABELS = ("exported_pod", "pod", "pod_name")
_NAMESPACE_LABELS = ("exported_namespace", "namespace", "pod_namespace")
_CONTAINER_LABELS = ("exported_container", "container", "container_name")


def _label(labels: Mapping[str, str], names: Sequence[str]) -> str:
    for name in names:
        value = labels.get(name)
        if value:
            return value
    return ""


@dataclass
class _Row:
    """What one (GPU, GI) - or the GPU-level row when ``gi_id`` is None - has shown so far."""

    profile: str = ""
    tenant: Tenant = field(default_factory=Tenant)
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class _Gpu:
    host: str = ""
    index: int = -1
    model: str = ""
    mig_mode: bool = False
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


def _tenant(labels: Mapping[str, str]) -> Tenant:
    return Tenant(
        namespace=_label(labels, _NAMESPACE_LABELS),
        pod=_label(labels, _POD_LABELS),
        container=_label(labels, _CONTAINER_LABELS),
    )


def _gi_id(labels: Mapping[str, str]) -> int | None:
    """The GI id, or None for a GPU-level row; ValueError for a label that is not an id."""
    raw = labels.get("GPU_I_ID", "").strip()
    if not raw:
        return None
    gi = int(raw)
    if gi < 0:
        raise ValueError(f"negative GPU_I_ID {gi}")
    return gi


def _labels_too_long(labels: Mapping[str, str]) -> bool:
    return any(len(v) > _MAX_LABEL_CHARS for v in labels.values())


def _collect(samples: Iterable[LabelledSample], stats: ReadStats) -> dict[str, _Gpu]:
    """Group samples by GPU UUID and GI id, keeping the first good value of each field."""
    gpus: dict[str, _Gpu] = {}
    for name, labels, value in samples:
        field_name = METRIC_FIELDS.get(name)
        uuid = _label(labels, _UUID_LABELS)
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
            gpu.host = _label(labels, _HOST_LABELS)
        if not gpu.model:
            gpu.model = labels.get("modelName", "").strip()
        if gpu.index < 0:
            try:
                gpu.index = int(labels.get("gpu", ""))
            except ValueError:
                pass
        if gi is None:
            row = gpu.gpu_row
            if name == MIG_MODE_METRIC and value == 1.0:
                gpu.mig_mode = True
        elif gi in gpu.instances:
            row = gpu.instances[gi]
        else:
            row = gpu.instances[gi] = _Row(profile=labels.get("GPU_I_PROFILE", "").strip())
        # The row exists (layout is known) even when it carries no metric we read.
        if not row.tenant.assigned:
            row.tenant = _tenant(labels)
        if field_name is None:
            continue
        clean = _clean_value(field_name, value)
        if clean is None:
            stats.skip("bad_value")
            continue
        if field_name in row.values:
            # Same series twice (time-sliced pods, an exporter restart seen by Prometheus):
            # the first value stands.
            stats.skip("duplicate_sample")
            continue
        row.values[field_name] = clean
    return gpus


def _metrics(row: _Row) -> Metrics:
    return Metrics(**row.values)


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
) -> Snapshot | None:
    model = gpu.model or "unknown"
    total = total_slices_for_model(model, overrides)
    mig = bool(gpu.instances) or gpu.mig_mode
    if mig:
        # A MIG GPU's GPU-level row (old exporters) duplicates its instances: it adds nothing.
        instances = []
        for gi_id in sorted(gpu.instances):
            row = gpu.instances[gi_id]
            slices = profile_slices(row.profile)
            if slices is None:
                stats.skip("unknown_profile")
                continue
            instances.append(Instance(gi_id=gi_id, profile=row.profile, slices=slices,
                                      metrics=_metrics(row), tenant=row.tenant))
        if sum(i.slices for i in instances) > total:
            stats.skip("slices_exceed_total")
            log.warning("GPU %s (%s) reports instances using more than its %d slices: snapshot dropped",
                        uuid, model, total)
            return None
    else:
        instances = [Instance(gi_id=FULL_GPU_GI_ID, profile="", slices=total,
                              metrics=_metrics(gpu.gpu_row), tenant=gpu.gpu_row.tenant)]
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
) -> list[Snapshot]:
    """Turn the labelled samples of one instant into one snapshot per GPU UUID (sorted by UUID).

    A GPU with any ``GPU_I_ID`` row is in MIG mode and is its instances; a GPU without is one
    pseudo-instance covering all its slices. Bad values, unweighable instances and impossible
    layouts are skipped and counted in ``stats``, never raised.
    """
    stats = stats if stats is not None else ReadStats()
    at = _scrape_ts(ts)
    gpus = _collect(samples, stats)
    out = []
    for uuid in sorted(gpus):
        snap = _snapshot(uuid, gpus[uuid], ts=at, interval_s=interval_s, source=source, cluster=cluster,
                         overrides=total_slices_overrides, stats=stats)
        if snap is not None:
            out.append(snap)
    return out


def _is_bad_line_ours(line: str) -> bool:
    """Whether an unparseable line is one of the fields we read (then its value is what's bad)."""
    # A line may start with "{" or spaces before it ("{", " {x}"): no name at all.
    head = line.split("{", 1)[0].split(None, 1)
    name = head[0] if head else ""
    return name in METRIC_FIELDS or name == MIG_MODE_METRIC


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
) -> list[Snapshot]:
    """Parse one dcgm-exporter scrape (Prometheus text format) into one snapshot per GPU."""
    stats = stats if stats is not None else ReadStats()
    return snapshots_from_samples(
        _samples(text, stats), ts=ts, interval_s=interval_s, source="dcgm", cluster=cluster,
        total_slices_overrides=total_slices_overrides, stats=stats,
    )


def _check_url(url: str) -> None:
    if not (url.startswith(("http://", "https://", "file:"))):
        raise ConfigError(f"dcgm endpoint {redact_url(url)!r} must be http(s)://... or file:PATH")


class DcgmSource:
    """Reads every dcgm-exporter endpoint once per :meth:`read`; a failing one is counted and skipped."""

    name = "dcgm"

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
                             stats=self.stats)
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
        out: list[Snapshot] = []
        failed = 0
        for url, (ts, body) in zip(self.urls, fetched):
            snaps = self._parse_one(url, ts, body)
            if snaps is None:
                failed += 1
            else:
                out.extend(snaps)
        if failed == len(self.urls):
            raise SourceUnavailable(f"none of the {len(self.urls)} dcgm endpoints could be read")
        return out

    def close(self) -> None:
        """Stop the fetch threads; connections are per request and already closed."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
