"""Collector rate: snapshots/s the simulator + publisher sustain into the real broker.

Stages, each timed separately so a bottleneck can be located (medians of ``--repeat`` runs):

1. ``simulate``: ``SimulatedFleet.read()`` alone (the source's own ceiling);
2. ``simulate+encode``: plus ``Snapshot.to_json()`` (what every publisher pays);
3. ``collector->kafka``: the real poll loop (``run_loop`` at speed 0, so no waiting between
   rounds) with ``CollectorMetrics`` and ``KafkaPublisher`` (acks=all, idempotent, compressed,
   spool attached), into a fresh topic of the local broker; the clock stops when every
   snapshot is acknowledged (each round's flush waits for its acks, the final close too);
4. ``spool write``: the same publisher with the broker unreachable, so every snapshot goes
   to the on-disk spool (how long an outage the collector can absorb per second of reading);
5. ``spool drain``: that spool sent to the real broker on the next start (how fast a backlog
   clears once the broker is back).

Run: ``python -m bench.collector_rate [--gpus 800] [--rounds 40] [--repeat 3] [--json]``.
The machine is shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import fresh_topic, load_average, median
from collector.metrics import CollectorMetrics
from collector.publish import KafkaPublisher, PublishStats
from collector.run import run_loop
from collector.sources.simulate import SimulatedFleet
from collector.spool import Spool
from migmeter import settings

__all__ = ["main", "measure"]

# Port 1 on loopback: nothing listens, so the publisher sees a broker that is down.
_DOWN = "127.0.0.1:1"
_GPUS_PER_HOST = 8


def _fleet(gpus: int) -> SimulatedFleet:
    hosts = max(1, gpus // _GPUS_PER_HOST)
    return SimulatedFleet(seed=11, hosts=hosts, gpus_per_host=min(gpus, _GPUS_PER_HOST), cluster="bench",
                          interval_s=15.0)


def _timed(fn: Callable[[], int]) -> float:
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


def _simulate(gpus: int, rounds: int, encode: bool) -> int:
    fleet = _fleet(gpus)
    n = 0
    for _ in range(rounds):
        for snap in fleet.read():
            if encode:
                snap.to_json()
            n += 1
    return n


def _collector_to_kafka(gpus: int, rounds: int, bootstrap: str, topic: str, spool_dir: Path) -> tuple[int, PublishStats]:
    metrics = CollectorMetrics()
    pub = KafkaPublisher(bootstrap, topic, spool=Spool(spool_dir), on_latency=metrics.observe_latency,
                         client_id="migmeter-bench-collector")
    summary = run_loop(_fleet(gpus), pub, interval_s=15.0, speed=0, max_rounds=rounds, metrics=metrics,
                       flush_timeout_s=60.0, log_every_s=3600.0)
    if pub.stats.delivered != summary.snapshots_read or pub.stats.spooled:
        raise RuntimeError(f"not every snapshot was acknowledged directly: {pub.stats}")
    return summary.snapshots_read, pub.stats


def _spool_write(gpus: int, rounds: int, spool_dir: Path) -> int:
    pub = KafkaPublisher(_DOWN, "unused", spool=Spool(spool_dir, max_bytes=4 * 2**30), connect_timeout_s=0.2)
    summary = run_loop(_fleet(gpus), pub, interval_s=15.0, speed=0, max_rounds=rounds, flush_timeout_s=0.2,
                       log_every_s=3600.0)
    if pub.stats.spooled != summary.snapshots_read:
        raise RuntimeError(f"not every snapshot was spooled: {pub.stats}")
    return summary.snapshots_read


def _spool_drain(bootstrap: str, topic: str, spool_dir: Path) -> int:
    spool = Spool(spool_dir, max_bytes=4 * 2**30)
    n = len(spool)
    pub = KafkaPublisher(bootstrap, topic, spool=spool, client_id="migmeter-bench-drain")
    while pub.stats.spool_depth:
        pub.flush(60.0)
    pub.close()
    if pub.stats.resent != n:
        raise RuntimeError(f"drained {pub.stats.resent} of {n}")
    return n


def measure(gpus: int, rounds: int, repeat: int, bootstrap: str) -> dict[str, Any]:
    """Run every stage ``repeat`` times; returns {stage: {"value": median, "runs": [...]}} in snapshots/s."""
    runs: dict[str, list[float]] = {k: [] for k in
                                    ("simulate", "simulate+encode", "collector->kafka", "spool write", "spool drain")}
    for _ in range(repeat):
        runs["simulate"].append(_timed(lambda: _simulate(gpus, rounds, encode=False)))
        runs["simulate+encode"].append(_timed(lambda: _simulate(gpus, rounds, encode=True)))
        work = Path(tempfile.mkdtemp(prefix="migmeter-bench-collector-"))
        try:
            with fresh_topic(partitions=4, bootstrap=bootstrap) as topic:
                t0 = time.perf_counter()
                n, _stats = _collector_to_kafka(gpus, rounds, bootstrap, topic, work / "spool-live")
                runs["collector->kafka"].append(n / (time.perf_counter() - t0))
            runs["spool write"].append(_timed(lambda: _spool_write(gpus, rounds, work / "spool-outage")))
            with fresh_topic(partitions=4, bootstrap=bootstrap) as topic:
                runs["spool drain"].append(_timed(lambda: _spool_drain(bootstrap, topic, work / "spool-outage")))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return {k: {"value": round(median(v)), "unit": "snapshots/s", "runs": [round(x) for x in v]}
            for k, v in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.collector_rate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=800, help="simulated GPUs (default 800: 100 hosts x 8)")
    parser.add_argument("--rounds", type=int, default=40, help="rounds per run (default 40)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per stage; the median is reported (default 3)")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap (default: $MIGMETER_KAFKA_BOOTSTRAP or local)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # the spool-write stage refuses connections on purpose
    bootstrap = settings.kafka_bootstrap(args.bootstrap)
    load_before = load_average()
    results = measure(args.gpus, args.rounds, args.repeat, bootstrap)
    out = {
        "gpus": args.gpus, "rounds": args.rounds, "snapshots_per_run": args.gpus * args.rounds,
        "repeat": args.repeat, "load_average_before": load_before, "load_average_after": load_average(),
        "results": results,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"collector rate: {args.gpus} GPUs x {args.rounds} rounds = {args.gpus * args.rounds} snapshots per run, "
              f"median of {args.repeat}; load average {load_before}")
        for stage, r in results.items():
            print(f"  {stage:<18} {r['value']:>9,} snapshots/s   runs {r['runs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
