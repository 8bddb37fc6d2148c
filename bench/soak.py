"""Soak: a simulated fleet through ``migmeter collect`` -> Kafka -> ``migmeter process`` for a long
run, sampling the resident memory (VmRSS from /proc) of both processes; prints the curve.

    python bench/soak.py                          # 30 minutes, 32 GPUs at 10 rounds/s
    python bench/soak.py --seconds 7200 --csv soak.csv

A leak shows as memory that keeps rising after warm-up. The verdict compares the median RSS
of the last quarter of the run with that of the second quarter (the first quarter is
warm-up: imports, connection pools, Kafka buffers, the allocator settling), per process:
see :data:`MAX_GROWTH` and :data:`GROWTH_SLACK_KIB` for the bound and why.

The CI form is ``tests/reliability/test_soak.py`` (``MIGMETER_SOAK_SECONDS``, default 60 s);
it also checks the warehouse against an oracle at the end. This script runs against the local
stack in a fresh database and topic (dropped afterwards), like every benchmark here.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python bench/soak.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from migmeter import settings  # noqa: E402

__all__ = ["MAX_GROWTH", "GROWTH_SLACK_KIB", "Sample", "SoakRun", "growth", "spawn_migmeter", "stop_process", "run_soak", "main"]

# Verdict: last-quarter median RSS at most 10% above the second-quarter median, plus a fixed
# slack. Why medians of quarters: single samples jump with garbage collection and with the
# allocator returning or keeping arenas; a median over a quarter ignores those spikes but not
# a steady climb. Why 10% + 4 MiB: over a 60 s CI run the processes sit at ~60-120 MiB and
# move by a few MiB as buffers and caches fill (psycopg's prepared statements, kafka-python's
# fetch buffers, the sink's timestamp cache); a leak of even 1 KiB per snapshot at 320
# snapshots/s adds ~5 MiB per quarter-minute and crosses this bound within one CI run.
MAX_GROWTH = 0.10
GROWTH_SLACK_KIB = 4 * 1024
# The fleet: 4 hosts x 8 GPUs, a round every 0.1 s (interval 15 s at speed 150) = 320 snapshots/s,
# about what 4,800 GPUs scraped every 15 s would send.
HOSTS, GPUS_PER_HOST, INTERVAL_S, SPEED, SEED, CLUSTER = 4, 8, 15.0, 150.0, 17, "soak"
# Guard against a hang after the collector is done, not a timing assertion.
_CATCH_UP_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Sample:
    t_s: float
    collector_kib: int
    processor_kib: int


@dataclass
class SoakRun:
    """What a soak did: the memory curve, the fleet's size, and both processes' exit codes."""

    rounds: int
    group: str
    samples: list[Sample] = field(default_factory=list)
    collector_rc: int | None = None
    processor_rc: int | None = None
    logs: dict[str, Path] = field(default_factory=dict)

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["t_s", "collector_rss_kib", "processor_rss_kib"])
            for s in self.samples:
                w.writerow([f"{s.t_s:.1f}", s.collector_kib, s.processor_kib])

    def curve(self, points: int = 12) -> str:
        """A short table of the curve, ``points`` rows evenly spaced."""
        step = max(1, len(self.samples) // points)
        rows = [f"{'t (s)':>8} {'collector MiB':>14} {'processor MiB':>14}"]
        picks = list(range(0, len(self.samples), step))
        if picks and picks[-1] != len(self.samples) - 1:
            picks.append(len(self.samples) - 1)
        for s in (self.samples[i] for i in picks):
            rows.append(f"{s.t_s:8.0f} {s.collector_kib / 1024:14.1f} {s.processor_kib / 1024:14.1f}")
        return "\n".join(rows)


def growth(values: list[int]) -> tuple[float, float, bool]:
    """(second-quarter median, last-quarter median, within the bound) of an RSS series (KiB)."""
    if len(values) < 8:
        raise ValueError(f"{len(values)} samples are too few to judge growth (need 8)")
    q = len(values) // 4
    second = statistics.median(values[q:2 * q])
    last = statistics.median(values[len(values) - q:])
    return second, last, last <= second * (1 + MAX_GROWTH) + GROWTH_SLACK_KIB


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _stored_total(url: str, group: str) -> int:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute("SELECT coalesce(sum(next_offset), 0) FROM sink_offsets WHERE consumer_group = %s",
                               (group,)).fetchone()
    except psycopg.OperationalError:
        return -1
    return int(row[0]) if row else 0


def spawn_migmeter(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "migmeter.cli", *args], env=env, stdin=subprocess.DEVNULL,
                                stdout=fh, stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(30)


def run_soak(bootstrap: str, db_url: str, topic: str, seconds: float, log_dir: Path, *,
             sample_every_s: float = 1.0, end_offsets: Callable[[], int],
             on_sample: Callable[[Sample], None] | None = None) -> SoakRun:
    """Run collector and processor for about ``seconds``; sample RSS until the collector is done,
    then let the processor catch up (``end_offsets()`` = records in the topic) and stop it."""
    rounds = max(8, int(seconds * SPEED / INTERVAL_S))
    # A consumer group of its own: groups live on the broker, which other runs may share.
    run = SoakRun(rounds, f"soak-{uuid.uuid4().hex[:8]}", logs={"collect": log_dir / "collect.log", "process": log_dir / "process.log"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGMETER_")}
    collector = spawn_migmeter(["collect", "--source", "simulate", "--seed", str(SEED), "--hosts", str(HOSTS),
                        "--gpus-per-host", str(GPUS_PER_HOST), "--cluster", CLUSTER, "--interval", str(INTERVAL_S),
                        "--speed", str(SPEED), "--rounds", str(rounds), "--bootstrap", bootstrap, "--topic", topic,
                        "--spool-dir", str(log_dir / "spool"), "--metrics-port", "0", "--log-every", "30"],
                       run.logs["collect"], env)
    # The database URL (with its password) through the environment, not argv, which `ps` shows.
    processor = spawn_migmeter(["process", "--bootstrap", bootstrap, "--topic", topic,
                        "--dead-letter-topic", topic + ".dlq", "--group", run.group, "--metrics-port", "0",
                        "--summary-every", "30"], run.logs["process"], {**env, settings.ENV_DATABASE_URL: db_url})
    t0 = time.monotonic()
    try:
        while collector.poll() is None:
            if processor.poll() is not None:
                raise RuntimeError(f"the processor exited during the soak; see {run.logs['process']}")
            sample = Sample(time.monotonic() - t0, _rss_kib(collector.pid), _rss_kib(processor.pid))
            if sample.collector_kib and sample.processor_kib:
                run.samples.append(sample)
                if on_sample is not None:
                    on_sample(sample)
            time.sleep(sample_every_s)
        run.collector_rc = collector.returncode
        deadline = time.monotonic() + _CATCH_UP_TIMEOUT_S
        while _stored_total(db_url, run.group) < end_offsets():
            if processor.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the processor did not catch up; see {run.logs['process']}")
            time.sleep(0.5)
    finally:
        if collector.poll() is None:
            stop_process(collector)
        run.processor_rc = stop_process(processor)
    return run


def main(argv: list[str] | None = None) -> int:
    from bench.common import end_offsets, fresh_database, fresh_topic

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=1800.0, help="how long the collector runs (default 1800)")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    p.add_argument("--csv", type=Path, default=None, help="also write every sample to this CSV file")
    args = p.parse_args(argv)
    bootstrap = settings.kafka_bootstrap()
    with fresh_database() as url, fresh_topic(4, bootstrap) as topic, tempfile.TemporaryDirectory() as tmp:
        print(f"soak: {HOSTS * GPUS_PER_HOST} GPUs, a round every {INTERVAL_S / SPEED:.2f} s, {args.seconds:.0f} s",
              flush=True)
        run = run_soak(bootstrap, url, topic, args.seconds, Path(tmp), sample_every_s=args.sample_every,
                       end_offsets=lambda: sum(end_offsets(topic, bootstrap).values()),
                       on_sample=lambda s: print(f"  t={s.t_s:7.0f}s collector {s.collector_kib / 1024:7.1f} MiB  "
                                                 f"processor {s.processor_kib / 1024:7.1f} MiB", flush=True))
    if args.csv:
        run.write_csv(args.csv)
    print(run.curve())
    ok = run.collector_rc == 0 and run.processor_rc == 0
    for name, values in (("collector", [s.collector_kib for s in run.samples]),
                         ("processor", [s.processor_kib for s in run.samples])):
        second, last, within = growth(values)
        ok = ok and within
        print(f"{name}: 2nd-quarter median {second / 1024:.1f} MiB, last-quarter median {last / 1024:.1f} MiB "
              f"({(last / second - 1) * 100:+.1f}%): {'flat' if within else 'GROWING'}")
    print(f"{run.rounds} rounds x {HOSTS * GPUS_PER_HOST} GPUs; exit codes collector {run.collector_rc}, "
          f"processor {run.processor_rc}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
