"""Soak, CI form: a simulated fleet (32 GPUs, 320 snapshots/s) through the real collector,
Kafka and processor for ``MIGMETER_SOAK_SECONDS`` (default 60); the memory of both processes
must stay flat, and the warehouse must equal the oracle at the end.

The long run is ``python bench/soak.py`` (30 minutes by default; ``--seconds`` for longer).
The curve is written to ``soak-rss.csv`` under the test's tmp folder, or to the file named by
``MIGMETER_SOAK_CSV``. Flat means: last-quarter median RSS at most ``MAX_GROWTH`` above the
second-quarter median plus ``GROWTH_SLACK_KIB`` (bench/soak.py says why these values).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.soak import CLUSTER, GPUS_PER_HOST, HOSTS, INTERVAL_S, SEED, growth, run_soak
from collector.sources.simulate import SimulatedFleet
from tests.fix_faults import assert_same_totals, end_offsets_total, oracle, stored_offsets

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOAK_SECONDS = float(os.environ.get("MIGMETER_SOAK_SECONDS") or 60)


def test_soak_memory_flat_and_totals_exact(kafka_bootstrap: str, new_topic, fresh_db: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    topic = new_topic(partitions=4)
    run = run_soak(kafka_bootstrap, fresh_db, topic, SOAK_SECONDS, tmp_path,
                   end_offsets=lambda: end_offsets_total(kafka_bootstrap, topic))
    csv_path = Path(os.environ.get("MIGMETER_SOAK_CSV") or tmp_path / "soak-rss.csv")
    run.write_csv(csv_path)
    print(f"\nsoak {SOAK_SECONDS:.0f} s, {run.rounds} rounds, RSS curve in {csv_path}:\n{run.curve()}")
    assert run.collector_rc == 0, run.logs["collect"].read_text()[-3000:]
    assert run.processor_rc == 0, run.logs["process"].read_text()[-3000:]

    verdicts = {}
    for name in ("collector", "processor"):
        second, last, within = growth([getattr(s, f"{name}_kib") for s in run.samples])
        verdicts[name] = within
        print(f"{name}: 2nd-quarter median {second / 1024:.1f} MiB, last quarter {last / 1024:.1f} MiB "
              f"({(last / second - 1) * 100:+.1f}%)")
    assert all(verdicts.values()), f"memory grew during the soak: {verdicts}; curve in {csv_path}"

    fleet = SimulatedFleet(seed=SEED, hosts=HOSTS, gpus_per_host=GPUS_PER_HOST, cluster=CLUSTER, interval_s=INTERVAL_S)
    produced = [s for _ in range(run.rounds) for s in fleet.read()]
    expected = oracle(produced)
    assert_same_totals(expected, fresh_db, grains=("1h",))
    stored = stored_offsets(fresh_db, run.group).values()
    assert sum(v[0] for v in stored) == len(produced) and sum(v[3] for v in stored) == 0
