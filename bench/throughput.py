"""Processor throughput (part 1), the micro-batch curve, and scale-out (part 6).

Method: a topic is pre-loaded once with N snapshots of a dense simulated fleet (H100s with
seven 1g instances each, published by the collector's own ``KafkaPublisher``). Each run then
starts ``migmeter process`` as a child process with a fresh consumer group into a fresh,
migrated database, and polls the database's ``sink_offsets`` until the stored offsets reach
the topic's end offsets: that is "fully caught up", observed the way an operator would (the
data is committed, not merely consumed). The clock runs from process start (interpreter
start, imports, group join included), and a second, steady-state rate is taken from the
first committed batch to the end, so the fixed start-up cost can be told apart.

CPU seconds and peak memory (VmHWM) are read from /proc of the child just before it is
stopped. "Rows merged" are the database's own counters (``pg_stat_user_tables``: rows
inserted + updated in the bench database's non-temporary tables, chunks included): every
upserted row counts once per batch that touched it, which is the database work done.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    DENSE_MODEL,
    ChildStats,
    DenseFleet,
    _proc_cpu_and_hwm,
    end_offsets,
    fresh_database,
    fresh_topic,
    load_average,
    median,
    preload,
    run_child,
    stop_process,
)
from migmeter import settings

__all__ = ["Loaded", "load_topic", "ProcessRun", "process_once", "throughput", "scale_out", "processor_cmd",
           "compare_trees", "export_revision"]


@dataclass
class Loaded:
    """A pre-loaded topic: what is in it."""

    topic: str
    snapshots: int
    instance_samples: int
    end: dict[int, int]
    preload_s: float
    gpus: int

    @property
    def avg_instances(self) -> float:
        return self.instance_samples / self.snapshots if self.snapshots else 0.0


def load_topic(topic: str, snapshots: int, gpus: int = 1000, seed: int = 7) -> Loaded:
    """Fill ``topic`` with ``snapshots`` snapshots of a ``gpus``-GPU dense fleet (whole rounds)."""
    hosts = max(1, gpus // 8)
    fleet = DenseFleet(seed=seed, hosts=hosts, gpus_per_host=8, models=(DENSE_MODEL,), cluster="bench")
    n_gpus = hosts * 8
    rounds = max(1, -(-snapshots // n_gpus))
    gen = (s for r in fleet.rounds(rounds) for s in r)
    n, inst, secs = preload(topic, gen)
    return Loaded(topic, n, inst, end_offsets(topic), secs, n_gpus)


def processor_cmd(topic: str, group: str, url: str, batch_records: int, batch_ms: int,
                  metrics_port: int = 0, root: Path | None = None) -> list[str]:
    """The command line of ``migmeter process`` for one run (kept in one place).

    ``root``: run the processor from another source tree (an older revision, for before/after
    figures) instead of the installed package: its ``migmeter.cli`` is imported first.
    """
    head = ["migmeter"] if root is None else [
        sys.executable, "-c", f"import sys; sys.path.insert(0, {str(root)!r}); from migmeter.cli import main; "
                              "sys.exit(main())"]
    return head + ["process", "--topic", topic, "--group", group, "--database-url", url,
            "--batch-records", str(batch_records), "--batch-ms", str(batch_ms),
            "--dead-letter-topic", topic + ".dlq", "--metrics-port", str(metrics_port), "--summary-every", "0"]


class _Progress:
    """Polls ``sink_offsets`` of one group; remembers when the first batch committed."""

    def __init__(self, url: str, group: str, topic: str, target: int) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.group, self.topic, self.target = group, topic, target
        self.first_at: float | None = None
        self.first_records = 0
        self.t0 = time.perf_counter()
        self.db_cpu: dict[int, float] = {}  # the processors' PostgreSQL backends: pid -> CPU s

    def committed(self) -> int:
        row = self.conn.execute(
            "SELECT coalesce(sum(next_offset), 0) FROM sink_offsets WHERE consumer_group = %s AND topic = %s",
            (self.group, self.topic)).fetchone()
        return int(row[0]) if row else 0

    def done(self) -> bool:
        for (pid,) in self.conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                        "AND application_name = 'migmeter-process'").fetchall():
            cpu = _proc_cpu_and_hwm(int(pid))[0]  # server and bench share the machine
            if cpu:
                self.db_cpu[int(pid)] = max(self.db_cpu.get(int(pid), 0.0), cpu)
        c = self.committed()
        if c > 0 and self.first_at is None:
            self.first_at, self.first_records = time.perf_counter() - self.t0, c
        return c >= self.target

    def close(self) -> None:
        self.conn.close()


def _rows_written(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables "
            "WHERE schemaname NOT LIKE 'pg_temp%%'").fetchone()
    return int(row[0]) if row else 0


@dataclass
class ProcessRun:
    """One run of one or more processor processes until caught up."""

    processes: int
    batch_records: int
    wall_s: float
    steady_s: float
    steady_records: int
    cpu_s: float
    peak_rss_kib: int
    rows_written: int
    db_cpu_s: float
    ok: bool
    load: list[float]
    note: str = ""


def process_once(loaded: Loaded, batch_records: int, batch_ms: int = 2000, processes: int = 1,
                 timeout_s: float = 300.0, root: Path | None = None) -> ProcessRun:
    """Run ``processes`` processors in one fresh group into a fresh database until caught up."""
    target = sum(loaded.end.values())
    group = f"bench-{os.urandom(4).hex()}"
    # An older revision runs on its own schema (its sql/), so a before/after compares both halves.
    with fresh_database(sql_dir=root / "sql" if root is not None else None) as url:
        prog = _Progress(url, group, loaded.topic, target)
        env = dict(os.environ, MIGMETER_KAFKA_BOOTSTRAP=settings.kafka_bootstrap(), PYTHONUNBUFFERED="1")
        rows_before = _rows_written(url)
        cmd = processor_cmd(loaded.topic, group, url, batch_records, batch_ms, root=root)
        try:
            if processes == 1:
                stats = [run_child(cmd, prog.done, env=env, timeout_s=timeout_s)]
            else:
                stats = _run_many(cmd, prog, env, processes, timeout_s)
        finally:
            prog.close()
        wall = max(s.wall_s for s in stats)
        ok = all(s.wall_s == s.wall_s for s in stats)  # NaN = did not catch up
        first = prog.first_at or 0.0
        time.sleep(0.5)  # the stopped processor's backend flushes its table counters on exit
        rows = _rows_written(url) - rows_before
    note = "" if ok else "did not catch up: " + stats[0].output[-600:]
    return ProcessRun(processes, batch_records, wall, wall - first, target - prog.first_records,
                      sum(s.cpu_s for s in stats), max(s.peak_rss_kib for s in stats), rows, sum(prog.db_cpu.values()),
                      ok, load_average(), note)


def _run_many(cmd: Sequence[str], prog: _Progress, env: dict[str, str], n: int, timeout_s: float) -> list[ChildStats]:
    """n processors in one group: the first is driven by run_child, the others run alongside."""
    import subprocess

    others = [subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
              for _ in range(n - 1)]
    last: dict[int, tuple[float, int]] = {}

    def done() -> bool:
        for p in others:
            if p.poll() is None:
                last[p.pid] = _proc_cpu_and_hwm(p.pid)
        return prog.done()

    try:
        main = run_child(cmd, done, env=env, timeout_s=timeout_s)
    finally:
        for p in others:
            if p.poll() is None:
                p.terminate()
        for p in others:
            stop_process(p)
    return [main] + [ChildStats(main.wall_s, *last.get(p.pid, (0.0, 0)), p.returncode) for p in others]


def _summarize(loaded: Loaded, runs: list[ProcessRun]) -> dict[str, Any]:
    good = [r for r in runs if r.ok]
    if not good:
        return {"ok": False, "runs": [r.__dict__ for r in runs]}
    inst = loaded.instance_samples
    wall = median([r.wall_s for r in good])
    per_run_rate = [inst / r.wall_s for r in good]
    steady_rate = [r.steady_records * loaded.avg_instances / r.steady_s for r in good if r.steady_s > 0]
    return {
        "ok": len(good) == len(runs),
        "batch_records": runs[0].batch_records,
        "processes": runs[0].processes,
        "wall_s": wall,
        "instance_samples_per_s": median(per_run_rate),
        "instance_samples_per_s_runs": per_run_rate,
        "snapshots_per_s": median([loaded.snapshots / r.wall_s for r in good]),
        "steady_instance_samples_per_s": median(steady_rate),
        "rows_merged_per_s": median([r.rows_written / r.wall_s for r in good]),
        "rows_merged": median([r.rows_written for r in good]),
        "cpu_s_per_1m_instance_samples": median([r.cpu_s / inst * 1e6 for r in good]),
        "db_backend_cpu_s_per_1m_instance_samples": median([r.db_cpu_s / inst * 1e6 for r in good]),
        "cpu_share_of_wall": median([(r.cpu_s + r.db_cpu_s) / r.wall_s for r in good]),
        "peak_rss_mib": median([r.peak_rss_kib / 1024 for r in good]),
        "load": [r.load for r in runs],
        "runs": [r.__dict__ for r in runs],
    }


def throughput(loaded: Loaded, batch_sizes: Sequence[int], repeats: int, batch_ms: int = 2000) -> dict[str, Any]:
    """The batch-size curve: ``repeats`` runs per size, interleaved so load drift hits all sizes alike."""
    runs: dict[int, list[ProcessRun]] = {b: [] for b in batch_sizes}
    for _ in range(repeats):
        for b in batch_sizes:
            runs[b].append(process_once(loaded, b, batch_ms))
    return {str(b): _summarize(loaded, rs) for b, rs in runs.items()}


def scale_out(loaded: Loaded, batch_records: int, repeats: int, batch_ms: int = 2000,
              processes: Sequence[int] = (1, 2)) -> dict[str, Any]:
    """1, 2, ... processors in one group on the same topic, interleaved runs; keyed by process count."""
    runs: dict[int, list[ProcessRun]] = {n: [] for n in processes}
    for _ in range(repeats):
        for n in processes:
            runs[n].append(process_once(loaded, batch_records, batch_ms, processes=n))
    return {str(n): {"partitions": len(loaded.end), **_summarize(loaded, rs)} for n, rs in runs.items()}


def compare_trees(loaded: Loaded, batch_records: int, repeats: int, trees: dict[str, Path | None],
                  batch_ms: int = 2000) -> dict[str, Any]:
    """Before/after: the same runs for each source tree (None = the working tree), interleaved."""
    runs: dict[str, list[ProcessRun]] = {label: [] for label in trees}
    for _ in range(repeats):
        for label, root in trees.items():
            runs[label].append(process_once(loaded, batch_records, batch_ms, root=root))
    return {label: _summarize(loaded, rs) for label, rs in runs.items()}


def export_revision(rev: str, dest: Path) -> Path:
    """``git archive`` of ``rev`` into ``dest`` (a throw-away copy; the checkout is not touched)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(root), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def main() -> None:  # pragma: no cover - manual use: python -m bench.throughput
    import json

    with fresh_topic(4) as topic:
        loaded = load_topic(topic, 20_000)
        print(json.dumps(throughput(loaded, [2000], 1), indent=2, default=str))


if __name__ == "__main__":
    main()
