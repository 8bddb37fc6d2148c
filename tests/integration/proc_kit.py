"""Helpers for processor integration tests: produce snapshots, run processors, an independent oracle."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from collector.snapshot import Snapshot
from migmeter import settings
from processor.consumer import Processor, ProcessorConfig
from processor.metrics import ProcessorMetrics

__all__ = ["produce", "produce_raw", "config", "run_until_idle", "Oracle", "db_totals", "assert_matches_oracle",
           "spawn_processor",
           "end_offsets", "stored_offsets_total", "read_topic"]


def produce(bootstrap: str, topic: str, snaps: Iterable[Snapshot]) -> int:
    return produce_raw(bootstrap, topic, ((s.key, s.to_json()) for s in snaps))


def produce_raw(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]],
                partition: int | None = None) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    n = 0
    for key, value in records:
        producer.send(topic, key=key, value=value, partition=partition)
        n += 1
    producer.flush(30)
    producer.close()
    return n


def config(bootstrap: str, db: str, topic: str, group: str = "g", **kw) -> ProcessorConfig:  # type: ignore[no-untyped-def]
    kw.setdefault("batch_records", 2000)
    kw.setdefault("batch_ms", 300)
    kw.setdefault("stop_when_idle_s", 1.5)
    kw.setdefault("retry_max_s", 2.0)
    return ProcessorConfig(bootstrap=bootstrap, database_url=db, topic=topic, dead_letter_topic=topic + ".dlq",
                           group=group, **kw)


def start_in_thread(
    cfg: ProcessorConfig,
) -> tuple[Processor, ProcessorMetrics, threading.Thread, list[BaseException]]:
    """Start one processor in a daemon thread; whatever ``run()`` raises lands in the list."""
    metrics = ProcessorMetrics()
    proc = Processor(cfg, metrics)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            proc.run()
        except BaseException as exc:  # surfaced by the caller
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return proc, metrics, t, errors


def run_until_idle(cfg: ProcessorConfig, timeout_s: float = 120.0) -> ProcessorMetrics:
    """Run one processor in a thread until it is caught up and idle; fail if it never gets there."""
    proc, metrics, t, errors = start_in_thread(cfg)
    t.join(timeout_s)
    if t.is_alive():
        proc.stop()
        t.join(30)
        raise AssertionError(f"processor did not catch up within {timeout_s} s")
    if errors:
        raise errors[0]
    return metrics


def spawn_processor(bootstrap: str, db: str, topic: str, log_path: Path, group: str = "g",
                    *extra: str) -> subprocess.Popen[bytes]:
    """``migmeter process`` as a real subprocess (crash tests kill it with SIGKILL); stderr appends
    to ``log_path`` (a file, not a pipe nobody drains, which would block the process)."""
    env = dict(os.environ, **{settings.ENV_KAFKA_BOOTSTRAP: bootstrap, settings.ENV_DATABASE_URL: db})
    cmd = [sys.executable, "-m", "migmeter.cli", "--log-level", "INFO", "process", "--topic", topic,
           "--dead-letter-topic", topic + ".dlq", "--group", group, "--metrics-port", "0", "--batch-ms", "200",
           "--batch-records", "500", "--retry-max", "2", "--session-timeout-ms", "6000", *extra]
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    c = KafkaConsumer(bootstrap_servers=bootstrap)
    parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
    ends = c.end_offsets(parts)
    c.close()
    return {tp.partition: off for tp, off in ends.items()}


def stored_offsets_total(db: str, group: str = "g") -> tuple[int, int, int, int]:
    """(Σ next_offset, Σ snapshots, Σ duplicates, Σ dead_letters) over the group's partitions."""
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT coalesce(sum(next_offset), 0), coalesce(sum(snapshots), 0), "
                           "coalesce(sum(duplicates), 0), coalesce(sum(dead_letters), 0) FROM sink_offsets "
                           "WHERE consumer_group = %s", (group,)).fetchone()
    assert row is not None
    return tuple(int(x) for x in row)  # type: ignore[return-value]


def read_topic(bootstrap: str, topic: str, expect: int, timeout_s: float = 20.0) -> list[bytes]:
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                      consumer_timeout_ms=int(timeout_s * 1000), group_id=None)
    out = []
    for rec in c:
        out.append(rec.value)
        if len(out) >= expect:
            break
    c.close()
    return out


@dataclass
class Oracle:
    """Totals computed straight from the produced snapshots, independently of processor code.

    Per GPU, snapshots are taken in production order; one not newer than the GPU's newest so
    far is a duplicate and does not count. A newer one covers (previous ts, ts], or its own
    interval_s after a gap longer than 3 x interval_s (DESIGN.md "Time model"). That is the
    whole rule for feeds produced in ts order per GPU, which is what the tests using this
    oracle produce (re-sent rounds come after the originals); the property test in
    tests/property/test_billing_property.py covers reordered feeds.
    """

    gpu_seconds: float = 0.0
    alloc_gpu_seconds: float = 0.0
    busy_gpu_seconds: float = 0.0
    snapshots: int = 0
    instance_samples: int = 0
    duplicates: int = 0
    tenant_alloc: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    tenant_busy: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    _last: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, snaps: Sequence[Snapshot]) -> Oracle:
        o = cls()
        for s in snaps:
            o.add(s)
        return o

    def add(self, s: Snapshot) -> None:
        ts = s.ts.timestamp()
        last = self._last.get(s.gpu_uuid)
        if last is not None and ts <= last:
            self.duplicates += 1
            return
        self._last[s.gpu_uuid] = ts
        dt = ts - last if last is not None and ts - last <= 3 * s.interval_s else s.interval_s
        self.snapshots += 1
        self.gpu_seconds += dt
        for i in s.instances:
            w = i.slices / s.total_slices
            u = i.metrics.gr_engine_active or 0.0
            self.instance_samples += 1
            self.alloc_gpu_seconds += w * dt
            self.busy_gpu_seconds += w * u * dt
            tenant = (i.tenant.namespace, i.tenant.pod)
            self.tenant_alloc[tenant] += w * dt
            self.tenant_busy[tenant] += w * u * dt


def db_totals(db: str, grain: str = "1m") -> dict[str, float]:
    """Fleet totals from one grain of the warehouse (names as in Oracle)."""
    assert grain in ("1m", "1h", "1d")
    with psycopg.connect(db) as conn:
        g = conn.execute(f"SELECT coalesce(sum(seconds), 0), coalesce(sum(alloc_gpu_seconds), 0), "
                         f"coalesce(sum(busy_gpu_seconds), 0), coalesce(sum(snapshots), 0), "
                         f"coalesce(sum(instance_samples), 0) FROM gpu_usage_{grain}").fetchone()
        t = conn.execute(f"SELECT namespace, pod, sum(alloc_gpu_seconds), sum(busy_gpu_seconds) "
                         f"FROM tenant_usage_{grain} GROUP BY namespace, pod").fetchall()
        i = conn.execute(f"SELECT coalesce(sum(alloc_gpu_seconds), 0), coalesce(sum(samples), 0) "
                         f"FROM instance_usage_{grain}").fetchone()
    assert g is not None and i is not None
    return {
        "gpu_seconds": g[0], "alloc_gpu_seconds": g[1], "busy_gpu_seconds": g[2], "snapshots": g[3],
        "instance_samples": g[4], "tenant_alloc": {(r[0], r[1]): r[2] for r in t},  # type: ignore[dict-item]
        "tenant_busy": {(r[0], r[1]): r[3] for r in t},  # type: ignore[dict-item]
        "instance_alloc_gpu_seconds": i[0], "instance_rows_samples": i[1],
    }


def assert_matches_oracle(db: str, oracle: Oracle, rel: float) -> None:
    """Every grain of the warehouse holds the oracle's totals: counts exactly, GPU-seconds, allocated
    and busy GPU-seconds (fleet, instance rows and per tenant) within ``rel``."""
    for grain in ("1m", "1h", "1d"):
        got = db_totals(db, grain)
        assert got["snapshots"] == oracle.snapshots, grain
        assert got["instance_samples"] == oracle.instance_samples == got["instance_rows_samples"], grain
        assert got["gpu_seconds"] == pytest.approx(oracle.gpu_seconds, rel=rel)
        assert got["alloc_gpu_seconds"] == pytest.approx(oracle.alloc_gpu_seconds, rel=rel)
        assert got["busy_gpu_seconds"] == pytest.approx(oracle.busy_gpu_seconds, rel=rel)
        assert got["instance_alloc_gpu_seconds"] == pytest.approx(oracle.alloc_gpu_seconds, rel=rel)
        assert got["tenant_alloc"].keys() == oracle.tenant_alloc.keys()
        for tenant, alloc in oracle.tenant_alloc.items():
            assert got["tenant_alloc"][tenant] == pytest.approx(alloc, rel=rel), tenant
            assert got["tenant_busy"][tenant] == pytest.approx(oracle.tenant_busy[tenant], rel=rel, abs=1e-9), tenant
