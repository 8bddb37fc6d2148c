"""What the trend rollups' triggers (sql/034) cost the processor's sink.

Two fresh warehouses, identical but for the two row triggers on gpu_usage_1d / tenant_usage_1d
(dropped in the second: sql/034's six statement triggers). The same simulated fleet (``--hosts`` x ``--gpus-per-host`` GPUs, one
scrape round per batch, the processor's own fold) is written batch by batch into both by the
processor's own ``Sink.write``, alternately (load that comes and goes hits both alike), so every
batch upserts one daily GPU row and its tenants' daily rows per GPU, as the live pipeline does.
Measured: the median ``Sink.write`` time per batch with and without the triggers. After the
run both warehouses' daily rows are compared (the triggers change nothing else), and the
rollup is checked against a fresh sum of the daily rows.
Run: ``python -m bench.rollup_cost [--hosts 125 --gpus-per-host 8 --batches 30]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from typing import Any

import psycopg

from bench.common import fresh_database, load_average, median
from collector.sources.simulate import SimulatedFleet
from processor.fold import BatchFold
from processor.layout import GpuState
from processor.sink import Sink

__all__ = ["measure", "main"]

TOPIC = "bench.rollup"
_DROP = tuple(f"DROP TRIGGER {table}_rollup_{event} ON {table}" for table in ("gpu_usage_1d", "tenant_usage_1d")
              for event in ("insert", "update", "delete"))
_DAILY = "SELECT count(*), round(sum(alloc_gpu_seconds)::numeric, 3), round(sum(busy_gpu_seconds)::numeric, 3) FROM {}"


def measure(hosts: int, gpus_per_host: int, batches: int, interval_s: float = 60.0) -> dict[str, Any]:
    fleet = SimulatedFleet(seed=7, hosts=hosts, gpus_per_host=gpus_per_host, cluster="bench-rollup",
                           start=datetime(2025, 1, 1, tzinfo=timezone.utc), interval_s=interval_s)
    times: dict[str, list[float]] = {"with_triggers": [], "without": []}
    out: dict[str, Any] = {"gpus": hosts * gpus_per_host, "batches": batches, "load_before": load_average()}
    with fresh_database() as with_url, fresh_database() as without_url:
        with psycopg.connect(without_url) as conn:
            for stmt in _DROP:
                conn.execute(stmt)
        sinks = {"with_triggers": Sink(with_url, "bench"), "without": Sink(without_url, "bench")}
        states: dict[str, GpuState | None] = {}
        offset = 0
        try:
            for i, round_ in enumerate(fleet.rounds(batches)):
                fold = BatchFold(states=states, stored_offsets={(TOPIC, 0): offset or None})
                for snap in round_:
                    fold.add(TOPIC, 0, offset, snap.key, None, snap)
                    offset += 1
                batch = fold.finish()
                for name in (("with_triggers", "without") if i % 2 == 0 else ("without", "with_triggers")):
                    t0 = time.perf_counter()
                    sinks[name].write(batch)
                    if i > 0:  # the first batch inserts every row: the rest are the steady state
                        times[name].append(time.perf_counter() - t0)
                states.update(batch.states)
        finally:
            for sink in sinks.values():
                sink.close()
        with psycopg.connect(with_url) as a, psycopg.connect(without_url) as b:
            for table in ("gpu_usage_1d", "tenant_usage_1d"):
                q = _DAILY.format(table)
                assert a.execute(q).fetchone() == b.execute(q).fetchone(), f"{table} differs"
            fresh = a.execute("SELECT count(*), sum(alloc_gpu_seconds) FROM gpu_usage_1d").fetchone()
            rolled = a.execute("SELECT sum(gpu_days), sum(alloc_gpu_seconds) FROM gpu_usage_model_1d").fetchone()
            assert fresh is not None and rolled is not None
            assert fresh[0] == rolled[0] and abs(fresh[1] - rolled[1]) <= 1e-9 * max(1.0, abs(fresh[1]))
    for name, runs in times.items():
        out[name] = {"median_ms": round(median(runs) * 1000, 1), "max_ms": round(max(runs) * 1000, 1)}
    out["overhead_pct"] = round(100 * (out["with_triggers"]["median_ms"] / out["without"]["median_ms"] - 1), 1)
    out["load_after"] = load_average()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=125)
    ap.add_argument("--gpus-per-host", type=int, default=8)
    ap.add_argument("--batches", type=int, default=30, help="scrape rounds, one batch each (default 30)")
    args = ap.parse_args(argv)
    if args.hosts < 1 or args.gpus_per_host < 1 or args.batches < 3:
        ap.error("--hosts, --gpus-per-host >= 1 and --batches >= 3")
    result = measure(args.hosts, args.gpus_per_host, args.batches)
    print(json.dumps(result, indent=2))
    print(f"\n{result['gpus']} GPUs, {args.batches} batches: Sink.write median {result['with_triggers']['median_ms']} ms"
          f" with the rollup triggers, {result['without']['median_ms']} ms without ({result['overhead_pct']:+} %)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
