"""The fault kit: one oracle, Kafka and processor helpers, private services to break, real processes to kill.

Outage tests stop and restart a PRIVATE broker or database (``migmeter.stack`` nodes on free
ports), never the shared stack. Collector and processor run as real ``migmeter`` subprocesses
(what SIGKILL, memory sampling and /metrics need; :func:`start_processor`), their logs in
files; a processor can also run in a thread of the test (:func:`start_in_thread`).

The oracle is deliberately naive and separate from ``processor/``: it walks the produced
snapshot objects, drops a snapshot whose ts is not newer than its GPU's newest (the duplicate
rule of DESIGN.md), and sums per GPU seconds, Σw·dt and Σw·u·dt, and per (GPU, tenant) Σw·dt
and Σw·u·dt. ``warehouse()`` reads the same sums back from one grain of the database.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from collector.snapshot import Snapshot
from collector.sources.simulate import SimulatedFleet
from migmeter import stack
from migmeter.stack import free_port
from processor.consumer import Processor, ProcessorConfig
from processor.metrics import ProcessorMetrics

__all__ = [
    "REL",
    "DEADLINE_S",
    "Totals",
    "oracle",
    "warehouse",
    "assert_same_totals",
    "stored_offsets",
    "stored_offsets_total",
    "produce",
    "produce_raw",
    "end_offsets",
    "end_offsets_total",
    "read_topic",
    "caught_up",
    "Feeder",
    "free_port",
    "wait_until",
    "Proc",
    "spawn",
    "processor_args",
    "start_processor",
    "scrape_metrics",
    "config",
    "start_in_thread",
    "run_until_idle",
    "private_home",
    "private_kafka",
    "private_pg",
]

# Sums of a few thousand float products: equal to 1e-9 relative, whatever the order of addition.
REL = 1e-9
# Bounds that only keep a broken test from hanging; nothing asserts on time.
DEADLINE_S = 120.0


# --------------------------------------------------------------------------- the oracle


@dataclass
class Totals:
    """Per-GPU and per-(GPU, tenant) sums; the shape both the oracle and the warehouse give."""

    gpu: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0.0, 0.0]))
    tenant: dict[tuple[str, str, str], list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0.0]))
    snapshots: int = 0
    duplicates: int = 0
    instance_samples: int = 0

    def fleet(self) -> tuple[float, float, float]:
        """(seconds, Σw·dt, Σw·u·dt) over every GPU."""
        return (sum(v[0] for v in self.gpu.values()), sum(v[1] for v in self.gpu.values()),
                sum(v[2] for v in self.gpu.values()))

    def by_tenant(self) -> dict[tuple[str, str], list[float]]:
        """(namespace, pod) -> [Σw·dt, Σw·u·dt] over every GPU."""
        out: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for (_, ns, pod), (alloc, busy) in self.tenant.items():
            out[(ns, pod)][0] += alloc
            out[(ns, pod)][1] += busy
        return dict(out)


def oracle(snaps: Iterable[Snapshot]) -> Totals:
    """What the warehouse must hold after these snapshots, in production order, are processed.

    v2 time model (DESIGN.md): a snapshot newer than its GPU's last ts covers (last ts, ts]
    when that is at most 3 x interval_s, else its own interval_s; one not newer is a duplicate
    (exact for feeds produced in ts order per GPU, as these tests produce them).
    """
    out = Totals()
    last: dict[str, float] = {}
    for s in snaps:
        ts = s.ts.timestamp()
        prev = last.get(s.gpu_uuid)
        if prev is not None and ts <= prev:
            out.duplicates += 1
            continue
        last[s.gpu_uuid] = ts
        out.snapshots += 1
        dt = ts - prev if prev is not None and ts - prev <= 3 * s.interval_s else s.interval_s
        g = out.gpu[s.gpu_uuid]
        g[0] += dt
        out.instance_samples += len(s.instances)
        for i in s.instances:
            w = i.slices / s.total_slices
            u = i.metrics.gr_engine_active
            alloc = w * dt
            busy = 0.0 if u is None else w * u * dt
            g[1] += alloc
            g[2] += busy
            t = out.tenant[(s.gpu_uuid, i.tenant.namespace, i.tenant.pod)]
            t[0] += alloc
            t[1] += busy
    return out


def warehouse(url: str, grain: str = "1h") -> Totals:
    """The same sums read back from ``gpu_usage_<grain>`` and ``tenant_usage_<grain>``."""
    if grain not in ("1m", "1h", "1d"):
        raise ValueError(grain)
    out = Totals()
    with psycopg.connect(url) as conn:
        for uuid, seconds, alloc, busy, n, samples in conn.execute(sql.SQL(
                "SELECT gpu_uuid, sum(seconds), sum(alloc_gpu_seconds), sum(busy_gpu_seconds), sum(snapshots), "
                "sum(instance_samples) FROM {} GROUP BY gpu_uuid").format(sql.Identifier(f"gpu_usage_{grain}"))):
            out.gpu[uuid] = [seconds, alloc, busy]
            out.snapshots += int(n)
            out.instance_samples += int(samples)
        for uuid, ns, pod, alloc, busy in conn.execute(sql.SQL(
                "SELECT gpu_uuid, namespace, pod, sum(alloc_gpu_seconds), sum(busy_gpu_seconds) "
                "FROM {} GROUP BY 1, 2, 3").format(sql.Identifier(f"tenant_usage_{grain}"))):
            out.tenant[(uuid, ns, pod)] = [alloc, busy]
    return out


def assert_same_totals(expected: Totals, url: str, grains: Sequence[str] = ("1m", "1h", "1d"), *,
                       instance_rows: bool = False) -> None:
    """Every GPU and every (GPU, tenant) of the oracle, and nothing else, at every grain; with
    ``instance_rows`` also the instance samples (GPU rows and instance rows) and the instance rows' Σw·dt."""
    for grain in grains:
        got = warehouse(url, grain)
        assert got.snapshots == expected.snapshots, f"{grain}: {got.snapshots} snapshots merged, oracle {expected.snapshots}"
        if instance_rows:
            samples, alloc = _instance_rows(url, grain)
            assert got.instance_samples == expected.instance_samples == samples, f"{grain}: instance samples"
            assert alloc == pytest.approx(expected.fleet()[1], rel=REL), f"{grain}: instance rows' allocation"
        assert set(got.gpu) == set(expected.gpu), f"{grain}: GPUs differ"
        for uuid, want in expected.gpu.items():
            assert got.gpu[uuid] == pytest.approx(want, rel=REL), f"{grain}: GPU {uuid}"
        assert set(got.tenant) == set(expected.tenant), f"{grain}: (GPU, tenant) rows differ"
        for key, want in expected.tenant.items():
            assert got.tenant[key] == pytest.approx(want, rel=REL), f"{grain}: tenant {key}"


def _instance_rows(url: str, grain: str) -> tuple[int, float]:
    """(Σ samples, Σ alloc_gpu_seconds) of ``instance_usage_<grain>``."""
    with psycopg.connect(url) as conn:
        row = conn.execute(sql.SQL("SELECT coalesce(sum(samples), 0), coalesce(sum(alloc_gpu_seconds), 0) FROM {}")
                           .format(sql.Identifier(f"instance_usage_{grain}"))).fetchone()
    assert row is not None
    return int(row[0]), float(row[1])


def stored_offsets(url: str, group: str) -> dict[int, tuple[int, int, int, int]]:
    """partition -> (next_offset, snapshots, duplicates, dead_letters) stored for ``group``."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT partition, next_offset, snapshots, duplicates, dead_letters FROM sink_offsets "
                            "WHERE consumer_group = %s", (group,)).fetchall()
    return {int(r[0]): (int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}


def stored_offsets_total(db: str, group: str | None = None) -> tuple[int, int, int, int]:
    """(Σ next_offset, Σ snapshots, Σ duplicates, Σ dead_letters) over the group's partitions
    (every group's when ``group`` is None: each test has a database of its own)."""
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT coalesce(sum(next_offset), 0), coalesce(sum(snapshots), 0), "
                           "coalesce(sum(duplicates), 0), coalesce(sum(dead_letters), 0) FROM sink_offsets "
                           "WHERE %(group)s::text IS NULL OR consumer_group = %(group)s", {"group": group}).fetchone()
    assert row is not None
    return tuple(int(x) for x in row)  # type: ignore[return-value]


def assert_billed_once(db: str, snaps: Sequence[Snapshot]) -> None:
    """Every record of ``snaps`` (produced once, in order) accounted for in the stored offsets, none
    dead-lettered, and the warehouse equal to the oracle."""
    expected = oracle(snaps)
    assert stored_offsets_total(db) == (len(snaps), expected.snapshots, expected.duplicates, 0)
    assert_same_totals(expected, db)


# --------------------------------------------------------------------------- processes


def wait_until(check: Callable[[], object], what: str, *, timeout_s: float = DEADLINE_S,
               alive: Sequence[Proc] = (), every_s: float = 0.2) -> object:
    """Poll ``check`` until truthy; fail (with the logs of ``alive``) if one of them exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        for p in alive:
            if not p.running():
                raise AssertionError(f"{p.name} exited (rc {p.popen.returncode}) while waiting for {what}:\n{p.tail()}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in alive)
            raise AssertionError(f"gave up waiting for {what}\n{logs}")
        time.sleep(every_s)


@dataclass
class Proc:
    """One ``migmeter`` subprocess with its log file and (optionally) its /metrics port."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    metrics_port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def metrics(self) -> dict[str, float]:
        """Its /metrics now; empty while the server is not up yet (the process is starting)."""
        try:
            return scrape_metrics(self.metrics_port)
        except OSError:
            return {}

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit (then the test fails on the rc)."""
        if self.running():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(30)
            raise AssertionError(f"{self.name} ignored SIGTERM for {timeout_s:.0f} s:\n{self.tail()}") from None

    def kill(self) -> None:
        if self.running():
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(30)


def spawn(name: str, args: Sequence[str], log_dir: Path, env: dict[str, str] | None = None,
          metrics_port: int = 0) -> Proc:
    """``python -m migmeter.cli ARGS`` with MIGMETER_* from ``env`` only; stderr+stdout to a file."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MIGMETER_")}
    full_env.update(env or {})
    log = log_dir / f"{name}.log"
    with open(log, "ab") as fh:
        popen = subprocess.Popen([sys.executable, "-m", "migmeter.cli", *args], env=full_env,
                                 stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
    return Proc(name, popen, log, metrics_port)


def processor_args(bootstrap: str, db: str, topic: str, group: str, metrics_port: int = 0, *extra: str,
                   log_level: str = "INFO") -> list[str]:
    """``migmeter process`` arguments with small batches (many commits: many chances to break one);
    ``extra`` flags come last, so they override these (argparse keeps the last value)."""
    return ["--log-level", log_level, "process", "--bootstrap", bootstrap, "--database-url", db, "--topic", topic,
            "--dead-letter-topic", topic + ".dlq", "--group", group, "--metrics-port", str(metrics_port),
            "--batch-ms", "200", "--batch-records", "500", "--retry-max", "2", "--summary-every", "5", *extra]


def start_processor(bootstrap: str, db: str, topic: str, group: str, log_dir: Path, *extra: str,
                    name: str = "process", metrics: bool = False, env: dict[str, str] | None = None,
                    log_level: str = "INFO") -> Proc:
    """``migmeter process`` as a real subprocess (:func:`processor_args`, then ``extra``), logging
    to ``log_dir/<name>.log``; with ``metrics`` its /metrics (and health) on a port of its own."""
    port = free_port() if metrics else 0
    return spawn(name, processor_args(bootstrap, db, topic, group, port, *extra, log_level=log_level), log_dir, env,
                 metrics_port=port)


def scrape_metrics(port: int) -> dict[str, float]:
    """Every unlabelled sample of a /metrics page, plus labelled ones as ``name{k=v,...}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else "")
            out[key] = s.value
    return out


# --------------------------------------------------------------------------- private services


@pytest.fixture
def private_home() -> Iterator[Path]:
    """A folder the unprivileged PostgreSQL server user can enter (tmp_path is 0700 root)."""
    home = Path(tempfile.mkdtemp(prefix="migmeter-faults-"))
    home.chmod(0o755)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def private_kafka(kafka_bootstrap: str, private_home: Path) -> Iterator[stack.KafkaNode]:
    """A broker of this test's own, to stop and restart (the shared stack lends it its jars)."""
    node = stack.KafkaNode(stack.default_kafka().jars_dir, private_home / "kafka", port=free_port(),
                           controller_port=free_port(), partitions=4)
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture
def private_pg(admin_url: str, private_home: Path) -> Iterator[tuple[stack.PostgresCluster, str]]:
    """A PostgreSQL + TimescaleDB cluster of this test's own, migrated; yields (cluster, owner URL)."""
    from warehouse.migrate import migrate

    cluster = stack.PostgresCluster(private_home / "pg", port=free_port())
    try:
        cluster.start()
        url = cluster.url()
        migrate(url)
        yield cluster, url
    finally:
        cluster.stop()



# --------------------------------------------------------------------------- Kafka


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


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    c = KafkaConsumer(bootstrap_servers=bootstrap)
    parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
    ends = c.end_offsets(parts)
    c.close()
    return {tp.partition: off for tp, off in ends.items()}


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


# An open-ended Feeder stops here even if nobody calls finish() (a failed test): 2,000 rounds.
OPEN_ROUNDS_MAX = 2000


class Feeder(threading.Thread):
    """Produces a simulated fleet round by round from a thread; ``sent`` is the production order.

    ``mutate(round_no, snapshots)`` may return a different list for a round (clock trouble,
    poison values, re-sent rounds); ``pause_s`` spaces the rounds so faults land while data still
    flows. With ``pause_after`` it sets ``paused`` before that round and waits for ``go_on``.
    ``rounds=None`` feeds until :meth:`finish` (at most OPEN_ROUNDS_MAX rounds): data still flows
    at whatever moment a slow machine brings the fault, however long the processors took to start.
    """

    def __init__(self, bootstrap: str, topic: str, rounds: int | None, *, pause_s: float = 0.05, seed: int = 8,
                 hosts: int = 2, gpus_per_host: int = 4, reconfigure_every_s: float = 1800.0,
                 mutate: Callable[[int, list[Snapshot]], list[Snapshot]] | None = None,
                 producer_options: dict[str, Any] | None = None, pause_after: int | None = None) -> None:
        super().__init__(daemon=True, name="feeder")
        self.bootstrap, self.topic, self.rounds, self.pause_s = bootstrap, topic, rounds, pause_s
        self.fleet = SimulatedFleet(seed=seed, hosts=hosts, gpus_per_host=gpus_per_host,
                                    reconfigure_every_s=reconfigure_every_s)
        self.mutate = mutate
        self.producer_options = producer_options or {}
        self.producer: KafkaProducer | None = None  # set while running (mutate may ask it for metadata)
        self.sent: list[Snapshot] = []
        self.error: BaseException | None = None
        self.pause_after = pause_after
        self.paused = threading.Event()
        self.go_on = threading.Event()
        self._enough = threading.Event()

    def run(self) -> None:
        producer = self.producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5,
                                                 **self.producer_options)
        try:
            for n in range(OPEN_ROUNDS_MAX if self.rounds is None else self.rounds):
                if self.rounds is None and self._enough.is_set():
                    break
                if n == self.pause_after:
                    self.paused.set()
                    self.go_on.wait(DEADLINE_S)
                snaps = self.fleet.read()
                if self.mutate is not None:
                    snaps = self.mutate(n, snaps)
                for s in snaps:
                    producer.send(self.topic, key=s.key, value=s.to_json())
                producer.flush(30)
                self.sent.extend(snaps)
                time.sleep(self.pause_s)
        except BaseException as exc:  # surfaced by finish()
            self.error = exc
        finally:
            producer.close(5)

    def finish(self, timeout_s: float = DEADLINE_S) -> list[Snapshot]:
        """Wait for the last round (an open-ended feeder stops after the round in progress)."""
        self._enough.set()
        self.join(timeout_s)
        assert not self.is_alive(), "the feeder did not finish"
        if self.error is not None:
            raise self.error
        return self.sent


def end_offsets_total(bootstrap: str, topic: str) -> int:
    """Σ of the topic's end offsets: how many records a caught-up processor has accounted for."""
    return sum(end_offsets(bootstrap, topic).values())


def caught_up(bootstrap: str, topic: str, url: str, group: str) -> Callable[[], bool]:
    """A check for wait_until: the stored offsets cover every record in the topic."""
    def check() -> bool:
        try:
            stored = sum(v[0] for v in stored_offsets(url, group).values())
        except psycopg.OperationalError:
            return False
        return stored > 0 and stored >= end_offsets_total(bootstrap, topic)
    return check


# --------------------------------------------------------------------------- a processor in this process


def config(bootstrap: str, db: str, topic: str, group: str | None = None, **kw) -> ProcessorConfig:  # type: ignore[no-untyped-def]
    """A processor for one test. Its Kafka group is the test's own (``g.<topic>``) unless named: on the
    shared broker a group is shared by every test that names it, and a member another test left
    behind (killed, or still closing) would hold up this test's rebalances."""
    group = group or f"g.{topic}"
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
