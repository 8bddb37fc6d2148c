"""The processor's own /metrics: how far behind it is, how big and slow its batches are, what it
merged, dropped and retried. The same server answers /healthz and /readyz (``processor.health``).

Everything lives in a :class:`prometheus_client.CollectorRegistry` made here (never the global
``REGISTRY``), so several processors in one test process stay independent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from migmeter.cli_support import DEFAULT_METRICS_ADDR, serve_metrics

__all__ = ["DEFAULT_METRICS_ADDR", "DEFAULT_METRICS_PORT", "DatabaseUp", "HealthView", "ProcessorMetrics", "serve"]

# The collector serves on 9401 (next to dcgm-exporter's 9400); the processor takes the next one.
DEFAULT_METRICS_PORT = 9402

# Records per batch: from a trickle to the largest --batch-records anyone should use.
_BATCH_RECORD_BUCKETS = (1, 10, 100, 500, 1000, 2500, 5000, 10000, 20000, 50000, 100000)
# Seconds from the first record of a batch to its commit (includes the collect window).
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ProcessorMetrics:
    """The processor's counters and gauges, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.consumer_lag = Gauge(
            "migmeter_processor_consumer_lag", "Records in the partition not yet committed to the warehouse",
            ["topic", "partition"], registry=r)
        self.batch_records = Histogram(
            "migmeter_processor_batch_records", "Records per committed batch part (one transaction; --writers)",
            buckets=_BATCH_RECORD_BUCKETS, registry=r)
        self.batch_seconds = Histogram(
            "migmeter_processor_batch_seconds", "Seconds from a batch's first record to its commit",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.write_seconds = Histogram(
            "migmeter_processor_write_seconds", "Seconds spent in a batch part's database transaction",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.batches = Counter("migmeter_processor_batches",
                               "Batch parts committed (one transaction each; a batch is split by partition over "
                               "--writers connections)", registry=r)
        self.records = Counter("migmeter_processor_records", "Kafka records committed (any outcome)", registry=r)
        self.snapshots = Counter("migmeter_processor_snapshots", "Snapshots merged", registry=r)
        self.instance_samples = Counter(
            "migmeter_processor_instance_samples", "Instance samples merged", registry=r)
        self.rows_merged = Counter(
            "migmeter_processor_rows_merged", "Rows written per table", ["table"], registry=r)
        self.duplicates = Counter(
            "migmeter_processor_duplicates", "Snapshots that billed nothing: all of their time was billed already", registry=r)
        self.trimmed = Counter(
            "migmeter_processor_trimmed_snapshots",
            "Snapshots billed in part: some of their time was billed already (another feed, a replay)", registry=r)
        self.trimmed_seconds = Counter(
            "migmeter_processor_trimmed_seconds",
            "GPU-seconds not billed again because they were billed already (trimmed snapshots and duplicates)",
            registry=r)
        self.dead_letters = Counter(
            "migmeter_processor_dead_letters", "Records rejected to the dead-letter topic and table", ["kind"],
            registry=r)
        self.dead_letter_publish_failures = Counter(
            "migmeter_processor_dead_letter_publish_failures",
            "Dead letters recorded in the table but not published to the dead-letter topic", registry=r)
        self.db_retries = Counter(
            "migmeter_processor_db_retries", "Batches or reads retried after a database failure", registry=r)
        self.db_refusals = Counter(
            "migmeter_processor_db_refusals",
            "Batch writes the database refused, by SQLSTATE and cause (data: bisected and dead-lettered; "
            "system: retried, nothing dead-lettered)", ["sqlstate", "cause"], registry=r)
        self.offset_conflicts = Counter(
            "migmeter_processor_offset_conflicts",
            "Batches rolled back because another processor had advanced the stored offset", registry=r)
        self.group_rejoins = Counter(
            "migmeter_processor_group_rejoins",
            "Group joins started over after JOIN_STALL_SESSIONS session timeouts without an assignment",
            registry=r)
        self.orphaned_joins = Counter(
            "migmeter_processor_orphaned_joins",
            "Rejoins the Kafka client left unfinished (a kafka-python 3.0 bug) and was asked to start again",
            registry=r)
        self.database_up = DatabaseUp(Gauge(
            "migmeter_processor_database_up",
            "1 while both the processing loop's and the health probe's last database operation succeeded",
            registry=r))


class DatabaseUp:
    """``migmeter_processor_database_up`` from two sources that each keep their last outcome.

    The processing loop learns of an outage only when it writes or seeks; an idle processor
    would report a dead database as up. The health probe connects every round whether or not
    data flows. The gauge is 1 only while both last succeeded: a source whose last attempt
    failed tries again (the loop retries with backoff, the probe every round), so neither can
    hold the gauge at 0 after the database is back. A write refused while the probe's read
    works keeps it at 0 (no flapping between the two).
    """

    LOOP = "loop"
    PROBE = "probe"

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._ok = {self.LOOP: True, self.PROBE: True}

    def mark(self, source: str, ok: bool) -> None:
        self._ok[source] = ok
        self.gauge.set(1 if all(self._ok.values()) else 0)


class HealthView(Protocol):
    """What /healthz and /readyz answer: (healthy, text). See :mod:`processor.health`."""

    def live(self) -> tuple[bool, str]: ...

    def ready(self) -> tuple[bool, str]: ...


def serve(registry: CollectorRegistry, port: int, addr: str = DEFAULT_METRICS_ADDR,
          health: HealthView | None = None) -> Callable[[], None] | None:
    """Serve /metrics (and, with ``health``, /healthz and /readyz) on ``addr:port``; port 0
    disables. Returns a stop function (:func:`migmeter.cli_support.serve_metrics`)."""
    routes = {} if health is None else {"/healthz": health.live, "/readyz": health.ready}
    return serve_metrics(registry, port, addr, routes)
