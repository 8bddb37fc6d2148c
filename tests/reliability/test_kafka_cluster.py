"""A three-node KRaft cluster (replication factor 3, min.insync.replicas 2) under a collector
and two processors, short form of ``bench/kafka_cluster.py`` (issue 16 item 1): one cycle of
(a) the busiest partition leader SIGKILLed, (b) a broker stopped cleanly, (c) two brokers down
at once (writes cannot reach two in-sync replicas: the collector spools), (d) the active
controller killed; each held down a few seconds, then restarted.

Nothing lost: the topic holds every snapshot of every round the fleet produced. Nothing
doubled: the warehouse equals the oracle of those rounds at every grain, and the books
balance (records = merged + duplicates, no dead letters). Recovery times are printed (run
with ``-s``); nothing is asserted on time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.kafka_cluster import create_topic, fleet_rounds, run_cluster_faults, topic_snapshots
from migmeter import stack
from tests.fix_faults import assert_same_totals, oracle, stored_offsets

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOPIC = "kcluster.snapshots"
# Each fault lasts this long: long enough for leader elections and for the collector to spool.
HOLD_S = 2.0
# The collector's --flush-timeout: a round stuck on a dead leader spools after this long
# (the default 10 s would dominate every recovery and the test's time).
FLUSH_TIMEOUT_S = 3.0


def test_collector_and_two_processors_through_broker_faults(kafka_bootstrap: str, fresh_db: str,
                                                            private_home: Path, tmp_path: Path) -> None:
    cluster = stack.KafkaCluster(stack.default_kafka().jars_dir, private_home / "kafka", partitions=4)
    try:
        cluster.start()
        create_topic(cluster, TOPIC)
        run = run_cluster_faults(cluster, TOPIC, fresh_db, tmp_path, cycles=1, hold_s=HOLD_S,
                                 flush_timeout_s=FLUSH_TIMEOUT_S)
        in_topic = topic_snapshots(cluster.bootstrap, TOPIC)
    finally:
        cluster.kill()
    logs = {name: path.read_text()[-3000:] for name, path in run.logs.items()}
    assert run.collector_rc == 0, logs["collect"]
    assert run.processor_rcs == [0, 0], logs
    assert [r.fault[:3] for r in run.recoveries] == ["(a)", "(b)", "(c)", "(d)"]
    for r in run.recoveries:
        print(r.line())

    rounds = len({s.ts for s in in_topic})
    produced = fleet_rounds(rounds)
    distinct = {s.to_json() for s in in_topic}
    assert distinct == {s.to_json() for s in produced}, "the topic lacks snapshots the fleet produced"
    expected = oracle(produced)
    assert_same_totals(expected, fresh_db)
    stored = stored_offsets(fresh_db, run.group).values()
    # Every record accounted for once: 16 GPUs x rounds merged, re-sent copies as duplicates.
    assert sum(v[0] for v in stored) == len(in_topic)
    assert sum(v[1] for v in stored) == len(produced) == 16 * rounds
    assert sum(v[2] for v in stored) == len(in_topic) - len(produced)
    assert sum(v[3] for v in stored) == 0
