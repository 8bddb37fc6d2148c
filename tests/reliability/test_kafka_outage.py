"""The broker goes away under a running collector and processor, then comes back.

Both run as real ``migmeter`` processes against a private broker. While it is down the
collector keeps reading its (simulated) GPUs into its on-disk spool; when it is back the
spool drains in order, the processor reconnects and resumes, and the warehouse ends exactly
equal to the oracle of every snapshot the collector produced (regenerated here from the same
deterministic fleet, so a snapshot lost anywhere on the way shows up as a difference).
"""

from __future__ import annotations

import uuid
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from collector.sources.simulate import SimulatedFleet
from migmeter import stack
from tests.fix_faults import (
    assert_same_totals,
    caught_up,
    free_port,
    oracle,
    processor_args,
    spawn,
    stored_offsets,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Unique per run: consumer groups live on the broker, which concurrent test runs share.
GROUP = f"kafka-outage-{uuid.uuid4().hex[:8]}"
TOPIC = "faults.snapshots"
SEED, HOSTS, GPUS, INTERVAL_S, CLUSTER = 5, 2, 4, 15.0, "faults"
# 0.2 s between rounds: 200 rounds take ~40 s, enough for a stop and a start of the broker.
SPEED, ROUNDS = 75.0, 200
OUTAGE_S = 6.0


def test_broker_down_then_back(private_kafka: stack.KafkaNode, fresh_db: str, tmp_path: Path) -> None:
    admin = KafkaAdminClient(bootstrap_servers=private_kafka.bootstrap, client_id="migmeter-tests")
    try:
        admin.create_topics([NewTopic(TOPIC, num_partitions=4, replication_factor=1)])
    finally:
        admin.close()
    c_port, p_port = free_port(), free_port()
    collector = spawn("collect", [
        "collect", "--source", "simulate", "--seed", str(SEED), "--hosts", str(HOSTS), "--gpus-per-host", str(GPUS),
        "--cluster", CLUSTER, "--interval", str(INTERVAL_S), "--speed", str(SPEED), "--rounds", str(ROUNDS),
        "--bootstrap", private_kafka.bootstrap, "--topic", TOPIC, "--spool-dir", str(tmp_path / "spool"),
        "--flush-timeout", "2", "--metrics-port", str(c_port), "--log-every", "5",
    ], tmp_path, metrics_port=c_port)
    processor = spawn("process", processor_args(private_kafka.bootstrap, fresh_db, TOPIC, GROUP, p_port),
                      tmp_path, metrics_port=p_port)
    procs = [collector, processor]
    try:
        wait_until(lambda: sum(v[0] for v in stored_offsets(fresh_db, GROUP).values()) > 0,
                   "the first snapshots in the warehouse", alive=procs)
        private_kafka.stop()
        wait_until(lambda: collector.metrics().get("migmeter_collector_spool_depth", 0) > 0,
                   "the collector to spool", alive=procs)
        time.sleep(OUTAGE_S)
        spooled = collector.metrics()["migmeter_collector_spool_depth"]
        private_kafka.start()
        rc = collector.popen.wait(180)
        assert rc == 0, collector.tail()
        wait_until(caught_up(private_kafka.bootstrap, TOPIC, fresh_db, GROUP), "the processor to catch up",
                   alive=[processor])
        assert processor.running()
    finally:
        collector.kill()
        prc = processor.terminate()
    assert prc == 0, processor.tail()

    # The collector's own account: everything read was delivered, some of it through the spool.
    summary = [line for line in collector.log.read_text().splitlines() if "collector stopped" in line][-1]
    assert f"read={ROUNDS * HOSTS * GPUS}" in summary and "dropped=0" in summary and "spool_depth=0" in summary, summary
    assert spooled > 0
    fleet = SimulatedFleet(seed=SEED, hosts=HOSTS, gpus_per_host=GPUS, cluster=CLUSTER, interval_s=INTERVAL_S)
    produced = [s for _ in range(ROUNDS) for s in fleet.read()]
    expected = oracle(produced)
    assert_same_totals(expected, fresh_db)
    stored = stored_offsets(fresh_db, GROUP).values()
    # Re-sent records (a spool batch whose acknowledgement was lost) are duplicates, counted, not added.
    assert sum(v[1] for v in stored) == expected.snapshots == len(produced)
    assert sum(v[0] for v in stored) == len(produced) + sum(v[2] for v in stored)
    assert sum(v[3] for v in stored) == 0
