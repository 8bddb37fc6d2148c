"""Shared plumbing of the benchmarks: fresh databases and topics, the dense fleet, timing.

Every benchmark runs against the real local stack but in its own database (``bench_<hex>``,
created from the owner URL, migrated, dropped at the end) and its own topics, so benchmarks
never disturb tests or the demo that share the stack. Figures are medians of several runs;
each result carries the load average at the time it was taken, because the machine is shared
and a figure taken under someone else's test run is not comparable to one taken idle.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError

from collector.publish import KafkaPublisher
from collector.snapshot import Snapshot
from collector.sources import simulate
from collector.sources.simulate import SimulatedFleet
from migmeter import settings
from processor.aggregate import Aggregates
from warehouse.migrate import migrate

__all__ = [
    "DENSE_MODEL",
    "DenseFleet",
    "coarsen",
    "merged",
    "Measure",
    "load_average",
    "median",
    "percentile",
    "fresh_database",
    "fresh_topic",
    "db_url_for",
    "preload",
    "end_offsets",
    "ChildStats",
    "run_child",
    "python_cmd",
    "stop_process",
]

# An H100 partitioned 7 x 1g: exactly 7 instances per GPU, the densest (and for the
# processor the most demanding) MIG layout, which the issue asks the throughput figure for.
DENSE_MODEL = "H100-80GB-HBM3"
_LAYOUT_7X1G = tuple((1, p) for p in range(7))


class DenseFleet(SimulatedFleet):
    """A simulated fleet whose 7-slice GPUs are always MIG-on with seven 1g instances.

    Everything else (tenants arriving and leaving, diurnal load, noise, reconfigurations that
    evict tenants) is the regular simulator. The layout is forced by overriding the
    simulator's layout step, so only the benchmark depends on that private hook.
    """

    def _build_layout(self, g: Any) -> None:  # noqa: D401 - overrides a private hook
        if g.total != 7:
            super()._build_layout(g)
            return
        g.mig = True
        fam = g.family
        g.layout = _LAYOUT_7X1G
        p = fam.profiles[1]
        g.slots = [simulate._Slot(simulate._gi_id(7, 1, start), p.name, 1, p.sm_count, p.mem_mib, start)
                   for _, start in _LAYOUT_7X1G]


@dataclass
class Measure:
    """A figure with its unit; ``runs`` are the raw values the median was taken of."""

    value: float
    unit: str
    runs: list[float] = field(default_factory=list)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.unit, "runs": self.runs, "note": self.note}


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages (the machine is shared: record them with every figure)."""
    return [round(x, 2) for x in os.getloadavg()]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was actually observed."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return float(s[k])


def db_url_for(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


@contextlib.contextmanager
def fresh_database(admin_url: str | None = None, *, migrated: bool = True,
                   sql_dir: Path | None = None) -> Iterator[str]:
    """A new database ``bench_<hex>`` (migrated unless told otherwise, with ``sql_dir``'s
    migrations: default this tree's); dropped on exit."""
    admin_url = admin_url or settings.database_url()
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    url = db_url_for(admin_url, name)
    try:
        if migrated:
            migrate(url, sql_dir or settings.SQL_DIR)
        else:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg.sql.Identifier(name)))


@contextlib.contextmanager
def fresh_topic(partitions: int = 4, bootstrap: str | None = None) -> Iterator[str]:
    """A new topic ``bench.<hex>``; deleted on exit."""
    bootstrap = bootstrap or settings.kafka_bootstrap()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="migmeter-bench")
    name = f"bench.{uuid.uuid4().hex[:12]}"
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    try:
        yield name
    finally:
        try:
            admin.delete_topics([name])
        except KafkaError:
            pass
        admin.close()


def preload(topic: str, snapshots: Iterator[Snapshot], bootstrap: str | None = None,
            compression: str | None = None) -> tuple[int, int, float]:
    """Publish snapshots with the collector's own publisher (its default compression unless
    ``compression`` names one); returns (snapshots, instances, seconds)."""
    pub = KafkaPublisher(bootstrap or settings.kafka_bootstrap(), topic, linger_ms=50,
                         client_id="migmeter-bench-preload", compression=compression)
    n = inst = 0
    t0 = time.perf_counter()
    try:
        for snap in snapshots:
            pub.send(snap)
            n += 1
            inst += len(snap.instances)
            if n % 20_000 == 0:
                pub.flush(60.0)
        pub.flush(60.0)
    finally:
        pub.close()
    if pub.stats.delivered != n:
        raise RuntimeError(f"preload: only {pub.stats.delivered} of {n} snapshots acknowledged")
    return n, inst, time.perf_counter() - t0


def end_offsets(topic: str, bootstrap: str | None = None) -> dict[int, int]:
    """Log-end offset per partition (what "fully caught up" means)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap or settings.kafka_bootstrap(),
                             client_id="migmeter-bench-offsets")
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


@dataclass
class ChildStats:
    """What one child process cost: wall time to the goal, CPU seconds, peak RSS."""

    wall_s: float
    cpu_s: float
    peak_rss_kib: int
    returncode: int | None
    output: str = ""


def _proc_cpu_and_hwm(pid: int) -> tuple[float, int]:
    """CPU seconds (utime+stime) and VmHWM (KiB) of a live process, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
        hwm = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
        return cpu, hwm
    except (OSError, IndexError, ValueError):
        return 0.0, 0


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


def run_child(
    cmd: Sequence[str],
    done: Callable[[], bool],
    *,
    env: dict[str, str] | None = None,
    timeout_s: float = 300.0,
    poll_s: float = 0.05,
    started: Callable[[], None] | None = None,
) -> ChildStats:
    """Start ``cmd``, poll ``done()`` until true, then stop the child with SIGTERM.

    Wall time runs from the start of the process (imports included, as an operator would see
    it) to the first poll that finds ``done()`` true. CPU and peak memory are read from
    /proc just before the child is stopped, so shutdown is not counted.
    """
    out_path = Path(f"/tmp/migmeter-bench-{uuid.uuid4().hex[:8]}.log")
    with out_path.open("w+b") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env)
        if started is not None:
            started()
        cpu = 0.0
        hwm = 0
        wall = float("nan")
        try:
            deadline = t0 + timeout_s
            while True:
                if proc.poll() is not None:
                    break
                cpu, hwm = _proc_cpu_and_hwm(proc.pid)
                if done():
                    wall = time.perf_counter() - t0
                    cpu, hwm = _proc_cpu_and_hwm(proc.pid)
                    break
                if time.perf_counter() > deadline:
                    break
                time.sleep(poll_s)
        finally:
            stop_process(proc)
        log.seek(0)
        output = log.read().decode(errors="replace")
    out_path.unlink(missing_ok=True)
    return ChildStats(wall, cpu, hwm, proc.returncode, output[-4000:])


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM (the processor commits its in-flight batch and exits), SIGKILL after 20 s."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ts_now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def own_cpu_s() -> float:
    """CPU seconds of this process so far (user + system)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def merged(a: Any, b: Any) -> Any:
    """``a`` then ``b`` (two sums of one class of ``processor.aggregate``) merged by their role
    lists, as the database merges rows (``processor.sink``): attributes from ``b``, sums added,
    min/max of the values that are not None. Neither is changed."""
    out = replace(a)
    for n in a.ATTRS:
        setattr(out, n, getattr(b, n))
    for n in a.SUMS:
        setattr(out, n, getattr(a, n) + getattr(b, n))
    for names, pick in ((a.MINS, min), (a.MAXS, max)):
        for n in names:
            x, y = getattr(a, n), getattr(b, n)
            setattr(out, n, y if x is None else x if y is None else pick(x, y))
    return out


def coarsen(partials: Aggregates, width_s: int) -> Aggregates:
    """Partials merged into buckets of ``width_s`` by their role lists, as the sink's rollups merge
    them in SQL (attributes: the latest bucket's; sums add; min/max). For benchmarks that need
    a batch's 1h/1d rows in Python, or fewer partials to stage than one per minute."""
    out = Aggregates.empty()
    for attr in ("instances", "tenants", "gpus"):
        dst = getattr(out, attr)
        for key, sums in sorted(getattr(partials, attr).items(), key=lambda kv: kv[0][0]):
            coarse = key._replace(bucket=key.bucket // width_s * width_s)
            have = dst.get(coarse)
            dst[coarse] = sums if have is None else merged(have, sums)
    return out
