"""End-to-end latency (part 2): collector -> Kafka -> processor -> row visible in TimescaleDB.

Load: a fleet of ``gpus`` simulated GPUs on hosts of 8, each host scraped every
``interval_s`` with its own phase spread evenly over the interval (as independent collectors
are), so the rate is steady: 2,000 GPUs / 15 s = 133 snapshots/s; 10x = 20,000 GPUs. Each
snapshot is stamped with the wall clock at the moment it is handed to the collector's own
``KafkaPublisher`` (ms precision, as on the wire), then published; the publisher's linger,
the broker, the processor's micro-batch, fold and transaction are all inside the figure.
Snapshot contents are generated before the run so generation never delays the pacing.

Visibility: a set of marker GPUs (all GPUs of every k-th host, ~256 in all) is watched by a
thread polling ``gpu_state`` every ``poll_s`` (one indexed query for the markers' ``last_ts``).
``gpu_state`` is written in the same transaction as the usage rows, so the moment a marker's
``last_ts`` reaches a snapshot's ts, that snapshot's usage is committed and visible. The
latency of a snapshot = start of the first poll that sees it - its ts; it over-states the
truth by at most one poll interval plus the query time (resolution ~``poll_s``).

Before the measured phase every GPU sends one warm-up snapshot and the harness waits until
the markers' are visible, so the processor's start, group join and the first sighting of
every GPU (layout "created" events) are outside the figures.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from datetime import datetime, timezone
from typing import Any

import psycopg

from bench.common import (
    DENSE_MODEL,
    DenseFleet,
    _proc_cpu_and_hwm,
    fresh_database,
    fresh_topic,
    load_average,
    percentile,
    stop_process,
)
from bench.throughput import processor_cmd
from collector.publish import KafkaPublisher
from collector.snapshot import Snapshot
from migmeter import settings

__all__ = ["latency"]

_GPUS_PER_HOST = 8
# About this many marker GPUs: enough samples for a p99 over a minute, a cheap poll.
_MARKERS = 256


class _Visibility(threading.Thread):
    """Polls the markers' last_ts; turns each sent (marker, ts) into a latency once visible."""

    def __init__(self, url: str, markers: list[str], poll_s: float) -> None:
        super().__init__(daemon=True, name="bench-visibility")
        self.url, self.markers, self.poll_s = url, markers, poll_s
        self.pending: dict[str, deque[tuple[float, bool]]] = {m: deque() for m in markers}
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.warm_latencies: list[float] = []
        self.stop = threading.Event()
        self.polls = 0
        self.poll_time_s = 0.0

    def sent(self, gpu_uuid: str, ts: float, measured: bool) -> None:
        q = self.pending.get(gpu_uuid)
        if q is not None:
            with self.lock:
                q.append((ts, measured))

    def outstanding(self, measured_only: bool = True) -> int:
        with self.lock:
            return sum(1 for q in self.pending.values() for _, m in q if m or not measured_only)

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                start = time.time()
                rows = conn.execute("SELECT gpu_uuid, extract(epoch FROM last_ts)::float8 FROM gpu_state "
                                    "WHERE gpu_uuid = ANY(%s)", (self.markers,)).fetchall()
                self.polls += 1
                self.poll_time_s += time.time() - start
                with self.lock:
                    for gpu_uuid, last in rows:
                        q = self.pending[gpu_uuid]
                        while q and q[0][0] <= last + 5e-4:
                            ts, measured = q.popleft()
                            (self.latencies if measured else self.warm_latencies).append(start - ts)
                self.stop.wait(max(0.0, self.poll_s - (time.time() - start)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    """Batch count, mean batch age at commit and mean write time from the processor's /metrics."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    vals: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("migmeter_processor_") and (name.endswith("_sum") or name.endswith("_count")):
            vals[name.removeprefix("migmeter_processor_")] = float(value)
    out = {}
    for h in ("batch_seconds", "write_seconds", "batch_records"):
        n = vals.get(h + "_count", 0.0)
        if n:
            out["mean_" + h] = vals.get(h + "_sum", 0.0) / n
            out["batches"] = n
    return out


def _stamp(snap: Snapshot, now: float) -> tuple[Snapshot, float]:
    """The snapshot re-stamped with ``now`` truncated to ms (the wire's precision)."""
    ms = int(now * 1000) / 1000
    return dataclasses.replace(snap, ts=datetime.fromtimestamp(ms, tz=timezone.utc)), ms


def latency(gpus: int, seconds: float, *, interval_s: float = 15.0, batch_records: int = 10_000,
            batch_ms: int = 2_000, poll_s: float = 0.05, seed: int = 5) -> dict[str, Any]:
    """Run the fleet at its steady rate for ``seconds`` and return latency percentiles (s)."""
    hosts = max(1, gpus // _GPUS_PER_HOST)
    fleet = DenseFleet(seed=seed, hosts=hosts, gpus_per_host=_GPUS_PER_HOST, models=(DENSE_MODEL,),
                       cluster="bench-latency", interval_s=interval_s)
    rounds = 1 + int(seconds // interval_s) + 1
    generated = [fleet.read() for _ in range(rounds)]  # warm-up round + measured rounds
    by_host = [[r[h * _GPUS_PER_HOST:(h + 1) * _GPUS_PER_HOST] for h in range(hosts)] for r in generated]
    step = max(1, hosts // (_MARKERS // _GPUS_PER_HOST))
    markers = [s.gpu_uuid for h in range(0, hosts, step) for s in by_host[0][h]]
    group = f"bench-lat-{os.urandom(4).hex()}"
    with fresh_topic(4) as topic, fresh_database() as url:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        metrics_port = _free_port()
        proc = subprocess.Popen(processor_cmd(topic, group, url, batch_records, batch_ms, metrics_port),
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
        vis = _Visibility(url, markers, poll_s)
        vis.start()
        pub = KafkaPublisher(settings.kafka_bootstrap(), topic, client_id="migmeter-bench-latency")
        sent = late_sends = 0
        try:
            # Warm-up: one snapshot per GPU, not measured; wait until the markers' are visible.
            for host in by_host[0]:
                for snap in host:
                    snap2, ts = _stamp(snap, time.time())
                    vis.sent(snap2.gpu_uuid, ts, False)
                    pub.send(snap2)
            pub.flush(30.0)
            deadline = time.time() + 120
            while vis.outstanding(measured_only=False) and time.time() < deadline:
                time.sleep(0.1)
            cpu0 = _proc_cpu_and_hwm(proc.pid)[0]
            load0 = load_average()
            # Measured phase: host h of round k is due at t0 + k * interval + h * interval / hosts.
            t0 = time.time() + 0.5
            next_flush = t0 + 1.0
            end = t0 + seconds
            for k, rnd in enumerate(by_host[1:]):
                for h, host in enumerate(rnd):
                    due = t0 + k * interval_s + h * interval_s / hosts
                    if due >= end:
                        break
                    delay = due - time.time()
                    if delay > 0:
                        time.sleep(delay)
                    elif delay < -0.1:
                        late_sends += 1
                    now = time.time()
                    for snap in host:
                        snap2, ts = _stamp(snap, now)
                        vis.sent(snap2.gpu_uuid, ts, True)
                        pub.send(snap2)
                        sent += 1
                    if now >= next_flush:  # confirm deliveries about once a second, as a collector round would
                        pub.flush(10.0)
                        next_flush = now + 1.0
            pub.flush(30.0)
            send_s = time.time() - t0
            drain_deadline = time.time() + batch_ms / 1000 + 30
            while vis.outstanding() and time.time() < drain_deadline:
                time.sleep(0.1)
            cpu1, hwm = _proc_cpu_and_hwm(proc.pid)
            load1 = load_average()
            batches = _scrape(metrics_port)
        finally:
            vis.stop.set()
            vis.join(5)
            pub.close()
            stop_process(proc)
        lat = vis.latencies
        return {
            "gpus": hosts * _GPUS_PER_HOST,
            "interval_s": interval_s,
            "target_snapshots_per_s": hosts * _GPUS_PER_HOST / interval_s,
            "achieved_snapshots_per_s": sent / send_s if send_s > 0 else 0.0,
            "measured_s": seconds,
            "batch_records": batch_records,
            "batch_ms": batch_ms,
            "markers": len(markers),
            "samples": len(lat),
            "not_visible": vis.outstanding(),
            "p50_s": percentile(lat, 50),
            "p95_s": percentile(lat, 95),
            "p99_s": percentile(lat, 99),
            "max_s": max(lat) if lat else float("nan"),
            "poll_s": poll_s,
            "mean_poll_query_s": vis.poll_time_s / max(1, vis.polls),
            "late_sends": late_sends,
            "processor_batches": batches,
            "processor_cpu_share": (cpu1 - cpu0) / send_s if send_s > 0 else 0.0,
            "processor_peak_rss_mib": hwm / 1024,
            "load": [load0, load1],
            "python": sys.version.split()[0],
        }
