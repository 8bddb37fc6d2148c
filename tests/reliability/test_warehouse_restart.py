"""The warehouse restarts under load (issue 16 item 5): a long backfill (a fleet of 16 GPUs
replayed as fast as the collector goes) and live collection (8 other GPUs, a round a second)
flow into one processor while its private PostgreSQL is restarted twice: a fast shutdown
(SIGINT: sessions cut, checkpoint) and an immediate one (SIGQUIT: like a crash, WAL recovery
on start).

No crash loop: the processor is the same process from start to end and exits 0 on SIGTERM,
no traceback. No lost batch: the topic holds every round of both fleets and the warehouse
equals the oracle of them, books balanced. Lag back to normal: after each restart, the time
until everything produced before the database was back is in the warehouse is printed (run
with ``-s``); nothing is asserted on time.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import pytest

from bench.kafka_cluster import topic_snapshots
from collector.snapshot import Snapshot
from collector.sources.simulate import SimulatedFleet
from tests.fix_faults import (
    Proc,
    assert_same_totals,
    caught_up,
    end_offsets,
    oracle,
    spawn,
    start_processor,
    stored_offsets,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Unique per run: consumer groups live on the broker, which concurrent test runs share.
GROUP = f"wh-restart-{uuid.uuid4().hex[:8]}"


class Fleet(NamedTuple):
    """A simulated fleet as one collector publishes it (interval 15 s)."""

    cluster: str
    seed: int
    hosts: int
    gpus_per_host: int
    speed: float
    rounds: int | None  # None: until stopped


# The backfill's round every 0.05 s lasts 30 s or more, longer than both restarts; the live
# fleet's a round a second until stopped.
BACKFILL = Fleet("backfill", 51, 2, 8, 300.0, 600)
LIVE = Fleet("live", 52, 1, 8, 15.0, None)
HOLD_S = 3.0  # how long the database stays down each time


def _collector(name: str, f: Fleet, topic: str, bootstrap: str, tmp_path: Path) -> Proc:
    args = ["collect", "--source", "simulate", "--cluster", f.cluster, "--seed", str(f.seed), "--hosts", str(f.hosts),
            "--gpus-per-host", str(f.gpus_per_host), "--interval", "15", "--speed", str(f.speed),
            "--bootstrap", bootstrap, "--topic", topic, "--spool-dir", str(tmp_path / f"spool-{name}"),
            "--metrics-port", "0"]
    return spawn(name, args + (["--rounds", str(f.rounds)] if f.rounds else []), tmp_path)


def _fleet(f: Fleet, rounds: int) -> list[Snapshot]:
    fleet = SimulatedFleet(seed=f.seed, hosts=f.hosts, gpus_per_host=f.gpus_per_host, cluster=f.cluster, interval_s=15.0)
    return [s for _ in range(rounds) for s in fleet.read()]


def test_warehouse_restarts_under_backfill_and_live_load(kafka_bootstrap: str, new_topic, private_pg,
                                                         tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster, url = private_pg
    topic = new_topic(partitions=4)
    proc = start_processor(kafka_bootstrap, url, topic, GROUP, tmp_path, metrics=True)
    backfill = _collector("backfill", BACKFILL, topic, kafka_bootstrap, tmp_path)
    live = _collector("live", LIVE, topic, kafka_bootstrap, tmp_path)
    lag_back_s: list[float] = []
    try:
        wait_until(lambda: sum(v[0] for v in stored_offsets(url, GROUP).values()) > 0, "a first commit",
                   alive=[proc])
        for how in ("fast", "immediate"):
            if how == "fast":
                cluster.stop()
            else:
                os.kill(cluster.pid(), signal.SIGQUIT)  # immediate shutdown: no checkpoint, crash recovery
                wait_until(lambda: not cluster.is_running(), "PostgreSQL to go away")
            wait_until(lambda: proc.metrics().get("migmeter_processor_database_up", 1) == 0,
                       "the processor to notice", alive=[proc])
            time.sleep(HOLD_S)  # the outage lasts this long; nothing is asserted on time
            cluster.start()
            back = time.monotonic()
            ends = end_offsets(kafka_bootstrap, topic)
            wait_until(lambda: all(v[0] >= ends.get(p, 0) for p, v in stored_offsets(url, GROUP).items())
                       and len(stored_offsets(url, GROUP)) == len([e for e in ends.values() if e > 0]),
                       f"the lag from before the {how} restart to be gone", alive=[proc])
            lag_back_s.append(time.monotonic() - back)
        backfill_running = backfill.running()
        assert backfill.popen.wait(300) == 0, backfill.tail()
        retries = proc.metrics()["migmeter_processor_db_retries_total"]
    finally:
        live_rc = live.terminate()
        backfill.kill()
    try:
        wait_until(caught_up(kafka_bootstrap, topic, url, GROUP), "the processor to catch up", alive=[proc])
        assert proc.running()  # the same process from start to end: no crash loop
    finally:
        rc = proc.terminate()
    print(f"\nlag back to normal after a fast restart {lag_back_s[0]:.1f} s, after an immediate one "
          f"{lag_back_s[1]:.1f} s (backfill still running at the second: {backfill_running}); "
          f"{retries:.0f} database retries")
    assert live_rc == 0 and rc == 0, proc.tail()
    assert retries >= 2
    assert "Traceback" not in proc.log.read_text()

    in_topic = topic_snapshots(kafka_bootstrap, topic)
    by_cluster: dict[str, set[str]] = defaultdict(set)
    for s in in_topic:
        by_cluster[s.cluster].add(s.ts.isoformat())
    assert set(by_cluster) == {"backfill", "live"}
    produced = _fleet(BACKFILL, 600) + _fleet(LIVE, len(by_cluster["live"]))
    assert len(by_cluster["backfill"]) == 600
    assert {s.to_json() for s in in_topic} == {s.to_json() for s in produced}, "a snapshot never reached Kafka"
    expected = oracle(produced)
    assert_same_totals(expected, url)
    stored = stored_offsets(url, GROUP).values()
    # 16 x 600 backfill + 8 x live rounds merged; re-sent copies (spool, retries) are duplicates.
    assert sum(v[0] for v in stored) == len(in_topic)
    assert sum(v[1] for v in stored) == expected.snapshots == 16 * 600 + 8 * len(by_cluster["live"])
    assert sum(v[2] for v in stored) == len(in_topic) - len(produced)
    assert sum(v[3] for v in stored) == 0
