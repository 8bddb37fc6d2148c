"""The collector's own /metrics: its health, and MIG weights for PromQL users.

Two kinds of series, all in a :class:`prometheus_client.CollectorRegistry` this module
creates (never the global ``REGISTRY``, so tests and embedded loops stay independent):

- health: snapshots read/published/spooled/dropped, scrape errors, values the sources
  skipped (by reason), spool depth and bytes, send latency;
- weights: ``migmeter_instance_slices`` (compute slices of each MIG instance; a GPU without
  MIG is one series with empty ``GPU_I_ID``/``GPU_I_PROFILE`` whose value is the GPU's total)
  and ``migmeter_gpu_total_slices``. Their labels are dcgm-exporter's (``Hostname``, ``UUID``,
  ``gpu``, ``GPU_I_ID``, ``GPU_I_PROFILE``, ``modelName``), so a DCGM series joins its weight
  with ``* on(UUID, GPU_I_ID) group_left migmeter_instance_slices / on(UUID) group_left
  migmeter_gpu_total_slices``.

The weight series are rendered from the LAST layout seen for each GPU (a custom collector),
not from long-lived labelled gauges: an instance destroyed by a layout change disappears from
the next scrape by construction, and a GPU not seen for ``stale_after_s`` is removed entirely,
so PromQL never joins against a weight that no longer exists.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from collector.publish import PublishStats
from collector.snapshot import FULL_GPU_GI_ID, Snapshot
from migmeter.cli_support import DEFAULT_METRICS_ADDR, serve_metrics

__all__ = [
    "DEFAULT_METRICS_ADDR",
    "DEFAULT_METRICS_PORT",
    "INSTANCE_SLICES_METRIC",
    "GPU_TOTAL_SLICES_METRIC",
    "INSTANCE_LABELS",
    "GPU_LABELS",
    "CollectorMetrics",
    "serve",
]

# The MIG weights PromQL joins DCGM series with (collector.promql writes the rules using them).
INSTANCE_SLICES_METRIC = "migmeter_instance_slices"
GPU_TOTAL_SLICES_METRIC = "migmeter_gpu_total_slices"
# Next to dcgm-exporter's 9400, so the firewall rule a GPU node already has for DCGM is one
# port away; 9464 (the usual pick) is the OpenTelemetry SDK exporter's default.
DEFAULT_METRICS_PORT = 9401
# A GPU whose snapshots stop (host gone, GPU removed) keeps its weight series this many
# scrape intervals, then they are removed: long enough to ride out a few failed scrapes.
STALE_INTERVALS = 5

INSTANCE_LABELS = ("Hostname", "UUID", "gpu", "GPU_I_ID", "GPU_I_PROFILE", "modelName")
GPU_LABELS = ("Hostname", "UUID", "gpu", "modelName")

# Send latency buckets: a healthy local broker acks in milliseconds; seconds mean trouble.
_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class _Layout:
    """What the weight series of one GPU are rendered from."""

    instance_rows: tuple[tuple[tuple[str, ...], float], ...]
    gpu_labels: tuple[str, ...]
    total_slices: int
    seen_at: float
    stale_after_s: float


class _LayoutCollector:
    """Renders ``migmeter_instance_slices`` and ``migmeter_gpu_total_slices`` from the last layouts."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # the HTTP server thread reads while the loop writes
        self._gpus: dict[str, _Layout] = {}

    def update(self, snap: Snapshot) -> None:
        host, uuid, gpu, model = snap.host, snap.gpu_uuid, str(snap.gpu_index), snap.gpu_model
        rows: list[tuple[tuple[str, ...], float]] = []
        if not snap.mig_enabled:
            rows.append(((host, uuid, gpu, "", "", model), float(snap.total_slices)))
        else:
            for inst in snap.instances:
                if inst.gi_id == FULL_GPU_GI_ID:
                    continue
                rows.append(((host, uuid, gpu, str(inst.gi_id), inst.profile, model), float(inst.slices)))
        layout = _Layout(
            instance_rows=tuple(rows),
            gpu_labels=(host, uuid, gpu, model),
            total_slices=snap.total_slices,
            seen_at=self._clock(),
            stale_after_s=STALE_INTERVALS * snap.interval_s,
        )
        with self._lock:
            self._gpus[uuid] = layout

    def expire(self) -> int:
        """Forget GPUs not seen for their stale period; returns how many."""
        now = self._clock()
        with self._lock:
            gone = [u for u, g in self._gpus.items() if now - g.seen_at > g.stale_after_s]
            for uuid in gone:
                del self._gpus[uuid]
        return len(gone)

    def collect(self) -> Iterable[Metric]:
        self.expire()
        inst = GaugeMetricFamily(
            INSTANCE_SLICES_METRIC,
            "Compute slices of each MIG instance (GPU without MIG: one series, empty GPU_I_ID, value = total "
            f"slices). Weight = this / {GPU_TOTAL_SLICES_METRIC}; join DCGM series on(UUID, GPU_I_ID).",
            labels=INSTANCE_LABELS,
        )
        total = GaugeMetricFamily(
            GPU_TOTAL_SLICES_METRIC,
            "Compute slices of the whole GPU (7 on A100/H100/H200/B200, 4 on A30).",
            labels=GPU_LABELS,
        )
        with self._lock:
            layouts = list(self._gpus.values())
        for layout in layouts:
            for labels, value in layout.instance_rows:
                inst.add_metric(list(labels), value)
            total.add_metric(list(layout.gpu_labels), float(layout.total_slices))
        yield inst
        yield total

    def describe(self) -> Iterable[Metric]:
        # Returning no descriptions keeps the registry from calling collect() at register time.
        return []


class CollectorMetrics:
    """Every series the collector exports, in its own registry.

    The poll loop calls :meth:`observe_layout` per snapshot and :meth:`sync` once per round
    with the source's skip counts and the publisher's stats; counters advance by the change
    since the previous sync, so the stats objects stay the single source of truth.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.rounds = Counter("migmeter_collector_rounds", "Poll rounds run.", registry=r)
        self.snapshots_read = Counter("migmeter_collector_snapshots_read", "Snapshots the source returned.", registry=r)
        self.snapshots_invalid = Counter(
            "migmeter_collector_snapshots_invalid", "Snapshots that broke the wire contract: skipped.", registry=r
        )
        self.published = Counter(
            "migmeter_collector_snapshots_published",
            "Snapshots delivered (acknowledged by Kafka, or written with --stdout), including re-sent from the spool.",
            registry=r,
        )
        self.spooled = Counter("migmeter_collector_snapshots_spooled", "Snapshots written to the spool.", registry=r)
        self.dropped = Counter(
            "migmeter_collector_snapshots_dropped",
            "Snapshots lost: spool full with --spool-full=drop-oldest, or no spool.",
            registry=r,
        )
        self.send_failures = Counter(
            "migmeter_collector_send_failures", "Times Kafka did not take or acknowledge records in time.", registry=r
        )
        self.scrape_errors = Counter(
            "migmeter_collector_scrape_errors", "Rounds in which the source could read nothing.", ["source"], registry=r
        )
        self.skipped = Counter(
            "migmeter_collector_skipped_values",
            "Values, rows, instances or snapshots the source skipped or repaired, by reason (e.g. bad_value, "
            "unknown_profile, garbled_profile, mig_rows_missing, duplicate_gpu).", ["source", "reason"],
            registry=r,
        )
        self.spool_depth = Gauge("migmeter_collector_spool_depth", "Snapshots waiting in the spool.", registry=r)
        self.spool_bytes = Gauge("migmeter_collector_spool_bytes", "Bytes waiting in the spool.", registry=r)
        self.send_latency = Histogram(
            "migmeter_collector_send_latency_seconds",
            "Time from send to Kafka acknowledgement.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.last_round = Gauge(
            "migmeter_collector_last_round_timestamp_seconds", "Unix time the last round finished.", registry=r
        )
        self.layouts = _LayoutCollector(clock)
        r.register(self.layouts)
        self._seen_skips: dict[tuple[str, str], int] = {}
        self._seen_publish = PublishStats()

    def observe_layout(self, snap: Snapshot) -> None:
        """Record the GPU's current layout for the weight series."""
        self.layouts.update(snap)

    def observe_latency(self, seconds: float) -> None:
        """Publisher callback (runs on the Kafka sender thread; Histogram is thread-safe)."""
        self.send_latency.observe(seconds)

    def sync(self, source_name: str, skipped: Mapping[str, int], stats: PublishStats) -> None:
        """Advance counters to the sources' and publisher's running totals."""
        for reason, total in skipped.items():
            key = (source_name, reason)
            delta = total - self._seen_skips.get(key, 0)
            if delta > 0:
                self.skipped.labels(source_name, reason).inc(delta)
            self._seen_skips[key] = total
        seen = self._seen_publish
        for counter, now, before in (
            (self.published, stats.delivered, seen.delivered),
            (self.spooled, stats.spooled, seen.spooled),
            (self.dropped, stats.dropped, seen.dropped),
            (self.send_failures, stats.send_failures, seen.send_failures),
        ):
            if now > before:
                counter.inc(now - before)
        self._seen_publish = PublishStats(**{f: getattr(stats, f) for f in PublishStats.__dataclass_fields__})
        self.spool_depth.set(stats.spool_depth)
        self.spool_bytes.set(stats.spool_bytes)


def serve(metrics: CollectorMetrics, port: int, addr: str = DEFAULT_METRICS_ADDR) -> Callable[[], None] | None:
    """Serve /metrics on ``addr:port`` in a daemon thread; port 0 disables. Returns a stop function."""
    return serve_metrics(metrics.registry, port, addr)
