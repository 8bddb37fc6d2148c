"""A replicated Kafka cluster under faults: three KRaft nodes on loopback (replication factor 3,
``min.insync.replicas`` 2), a collector publishing a simulated fleet and two processors
consuming, while, in each cycle:

(a) the node leading the most partitions of the topic is SIGKILLed, held down, restarted;
(b) another node (not the active controller) is stopped cleanly (controlled shutdown) and
    stays down while
(c) a second node is killed: two of three down at once (no write can reach two in-sync
    replicas, and the controller quorum has no majority: the collector spools), then both
    are restarted;
(d) the active controller (the KRaft quorum's leader) is killed, held down, restarted.

Recovery times (printed, and what the README's reliability section quotes):

- ``progress_s``: from the fault (for (c): from both nodes being back) until every partition
  that had data has committed past the end offset it had when the fault began: records
  produced since went all the way into the warehouse, for every GPU.
- ``in_sync_s``: from the restart until every partition is back to 3 in-sync replicas (for (b),
  which is restarted together with (c), see (c)).

    python bench/kafka_cluster.py                     # 3 cycles, nodes held down 20 s
    python bench/kafka_cluster.py --cycles 10 --hold 60

The CI form is ``tests/reliability/test_kafka_cluster.py`` (one cycle, short holds); it also
checks that the topic holds every round the fleet produced (nothing lost) and the warehouse
equals the oracle (nothing doubled). This script checks that nothing was lost and that the
warehouse merged each produced snapshot once, and exits 1 otherwise. It uses the local
stack's Kafka jars and PostgreSQL (a fresh database, dropped afterwards).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python bench/kafka_cluster.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
from kafka import KafkaConsumer, TopicPartition  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402

from bench.soak import spawn_migmeter, stop_process  # noqa: E402
from collector.snapshot import Snapshot, from_json  # noqa: E402
from collector.sources.simulate import SimulatedFleet  # noqa: E402
from migmeter import settings, stack  # noqa: E402

__all__ = ["FLEET", "Recovery", "ClusterRun", "create_topic", "run_cluster_faults", "topic_snapshots",
           "fleet_rounds", "end_offsets", "main"]

# The fleet: 2 hosts x 8 GPUs (16 keys: every one of 4 partitions gets some), a round every
# 0.2 s (interval 15 s at speed 75) = 80 snapshots/s: steady traffic through every fault.
FLEET = {"hosts": 2, "gpus_per_host": 8, "interval_s": 15.0, "seed": 16, "cluster": "kcluster"}
SPEED = 75.0
PARTITIONS = 4
# Guards against a hang (a step that never happens), not timing assertions.
STEP_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Recovery:
    cycle: int
    fault: str
    nodes: tuple[int, ...]
    progress_s: float
    in_sync_s: float

    def line(self) -> str:
        in_sync = "with (c)" if math.isnan(self.in_sync_s) else f"{self.in_sync_s:6.1f} s"
        return (f"cycle {self.cycle} {self.fault:<28} nodes {','.join(map(str, self.nodes)):<5} "
                f"progress after {self.progress_s:6.1f} s, 3 in-sync replicas after {in_sync}")


@dataclass
class ClusterRun:
    group: str
    recoveries: list[Recovery] = field(default_factory=list)
    collector_rc: int | None = None
    processor_rcs: list[int] = field(default_factory=list)
    logs: dict[str, Path] = field(default_factory=dict)


def create_topic(cluster: stack.KafkaCluster, topic: str) -> None:
    admin = cluster.admin()
    try:
        admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=3,
                                      topic_configs={"min.insync.replicas": "2"})])
    finally:
        admin.close()
    _wait(lambda: len(_safe_leaders(cluster, topic)) == PARTITIONS, "the topic's partitions to have leaders")


def _safe_leaders(cluster: stack.KafkaCluster, topic: str) -> dict[int, tuple[int, tuple[int, ...]]]:
    try:
        return {p: v for p, v in cluster.leaders(topic).items() if v[0] >= 0}
    except Exception:  # noqa: BLE001 - a node going down mid-request: ask again
        return {}


def _wait(check: Callable[[], object], what: str, timeout_s: float = STEP_TIMEOUT_S,
          alive: Callable[[], str | None] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        problem = alive() if alive is not None else None
        if problem:
            raise RuntimeError(f"{problem} while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what} after {timeout_s:.0f} s")
        time.sleep(0.2)


def _stored(url: str, group: str) -> dict[int, int]:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            rows = conn.execute("SELECT partition, next_offset FROM sink_offsets WHERE consumer_group = %s",
                                (group,)).fetchall()
    except psycopg.OperationalError:
        return {}
    return {int(p): int(o) for p, o in rows}


def _in_sync(cluster: stack.KafkaCluster, topic: str) -> bool:
    leaders = _safe_leaders(cluster, topic)
    return len(leaders) == PARTITIONS and all(len(isr) == len(cluster.nodes) for _, isr in leaders.values())


def run_cluster_faults(cluster: stack.KafkaCluster, topic: str, db_url: str, log_dir: Path, *, cycles: int = 1,
                       hold_s: float = 5.0, flush_timeout_s: float = 10.0,
                       report: Callable[[str], None] = print) -> ClusterRun:
    """Collector + two processors through ``cycles`` rounds of faults (a)-(d); then stop the
    collector and let the processors catch up. Returns recovery times and exit codes.
    ``flush_timeout_s`` is the collector's ``--flush-timeout``: how long a round waits for
    acknowledgements before it spools (most of the time a lost leader costs the collector)."""
    run = ClusterRun(f"kcluster-{uuid.uuid4().hex[:8]}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGMETER_")}
    run.logs = {name: log_dir / f"{name}.log" for name in ("collect", "process-1", "process-2")}
    collector = spawn_migmeter([
        "--log-level", "INFO", "collect", "--source", "simulate", "--seed", str(FLEET["seed"]),
        "--hosts", str(FLEET["hosts"]), "--gpus-per-host", str(FLEET["gpus_per_host"]),
        "--cluster", str(FLEET["cluster"]), "--interval", str(FLEET["interval_s"]), "--speed", str(SPEED),
        "--bootstrap", cluster.bootstrap, "--topic", topic, "--spool-dir", str(log_dir / "spool"),
        "--flush-timeout", str(flush_timeout_s), "--metrics-port", "0", "--log-every", "10"], run.logs["collect"], env)
    processors = [spawn_migmeter([
        "--log-level", "INFO", "process", "--bootstrap", cluster.bootstrap, "--topic", topic,
        "--dead-letter-topic", topic + ".dlq", "--group", run.group, "--metrics-port", "0", "--batch-ms", "200",
        "--batch-records", "500", "--retry-max", "2", "--session-timeout-ms", "6000", "--summary-every", "10"],
        run.logs[f"process-{i}"], {**env, settings.ENV_DATABASE_URL: db_url}) for i in (1, 2)]

    def alive(with_collector: bool = True) -> str | None:
        named = [("processor 1", processors[0]), ("processor 2", processors[1])]
        for name, proc in [("collector", collector)] * with_collector + named:
            if proc.poll() is not None:
                return f"the {name} exited (rc {proc.returncode})"
        return None

    def through() -> Callable[[], bool]:
        """True once every partition holding data has committed past its end offset of now:
        records produced after this moment went all the way into the warehouse."""
        ends = {p: e for p, e in _end_offsets(cluster, topic).items() if e > 0}

        def check() -> bool:
            now = _stored(db_url, run.group)
            return all(now.get(p, 0) > e for p, e in ends.items())
        return check

    def down(name: str, victim: stack.KafkaNode, kill: bool) -> float:
        """Take one node down; returns when records produced since have reached the warehouse."""
        check = through()
        t0 = time.monotonic()
        if kill:
            victim.kill()
        else:
            victim.stop()
        _wait(check, f"progress after {name}", alive=alive)
        return time.monotonic() - t0

    def up(cycle: int, name: str, victims: list[stack.KafkaNode], since: float, progress_s: float | None) -> None:
        held = hold_s - (time.monotonic() - since)
        if held > 0:
            time.sleep(held)  # the outage lasts this long; nothing is asserted on time
        for node in victims:
            node.start(wait=False)
        for node in victims:
            node.wait_ready()
        t1 = time.monotonic()
        if progress_s is None:  # nothing could be written while they were down: measure from now
            _wait(through(), f"progress after {name}", alive=alive)
            progress_s = time.monotonic() - t1
        _wait(lambda: _in_sync(cluster, topic), f"3 in-sync replicas after {name}", alive=alive)
        rec = Recovery(cycle, name, tuple(n.node_id for n in victims), progress_s, time.monotonic() - t1)
        run.recoveries.append(rec)
        report(rec.line())

    try:
        _wait(lambda: len([o for o in _stored(db_url, run.group).values() if o > 0]) == PARTITIONS,
              "a first commit on every partition", alive=alive)
        for cycle in range(1, cycles + 1):
            # (a) the node leading most partitions dies without warning, comes back.
            leaders = Counter(leader for leader, _ in _safe_leaders(cluster, topic).values())
            busiest = cluster.nodes[leaders.most_common(1)[0][0]]
            t = time.monotonic()
            up(cycle, "(a) leader SIGKILLed", [busiest], t, down("(a)", busiest, kill=True))
            # (b) a node other than the active controller shuts down cleanly; it stays down while
            # (c) a second one is killed: two of three down, writes cannot reach two replicas.
            quorum = cluster.quorum_leader()
            clean = cluster.nodes[next(i for i in cluster.nodes if i not in (busiest.node_id, quorum))]
            t = time.monotonic()
            rec_b = down("(b)", clean, kill=False)
            run.recoveries.append(Recovery(cycle, "(b) broker stopped cleanly", (clean.node_id,), rec_b, float("nan")))
            report(run.recoveries[-1].line())
            second = next(n for i, n in cluster.nodes.items() if i not in (clean.node_id, quorum))
            second.kill()
            up(cycle, "(c) two brokers down", [clean, second], t, None)
            # (d) the KRaft quorum loses its leader, which comes back.
            leader = cluster.nodes[cluster.quorum_leader()]
            t = time.monotonic()
            up(cycle, "(d) quorum leader killed", [leader], t, down("(d)", leader, kill=True))
    finally:
        run.collector_rc = stop_process(collector)
    try:
        ends = _end_offsets(cluster, topic)
        _wait(lambda: all(_stored(db_url, run.group).get(p, 0) >= e for p, e in ends.items() if e > 0),
              "the processors to catch up", alive=lambda: alive(with_collector=False))
    finally:
        run.processor_rcs = [stop_process(p) for p in processors]
    return run


def _end_offsets(cluster: stack.KafkaCluster, topic: str) -> dict[int, int]:
    return end_offsets(cluster.bootstrap, topic)


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = consumer.end_offsets(parts)
    finally:
        consumer.close()
    return {tp.partition: int(off) for tp, off in ends.items()}


def topic_snapshots(bootstrap: str, topic: str) -> list[Snapshot]:
    """Every record of the topic, decoded (duplicates included), partition by partition."""
    total = sum(end_offsets(bootstrap, topic).values())
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        out: list[Snapshot] = []
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while total > len(out) and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=500).values():
                out.extend(from_json(r.value) for r in recs)
        return out
    finally:
        consumer.close()


def fleet_rounds(rounds: int) -> list[Snapshot]:
    """The first ``rounds`` rounds the collector's simulated fleet produces, in order."""
    fleet = SimulatedFleet(seed=int(FLEET["seed"]), hosts=int(FLEET["hosts"]),  # type: ignore[call-overload]
                           gpus_per_host=int(FLEET["gpus_per_host"]), cluster=str(FLEET["cluster"]),
                           interval_s=float(FLEET["interval_s"]))
    return [s for _ in range(rounds) for s in fleet.read()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cycles", type=int, default=3, help="rounds of faults (a)-(d) (default 3)")
    p.add_argument("--hold", type=float, default=20.0, help="seconds each fault lasts (default 20)")
    args = p.parse_args(argv)
    from warehouse.migrate import migrate

    admin_url = settings.database_url()
    db = f"migmeter_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    home = Path(tempfile.mkdtemp(prefix="migmeter-kcluster-"))
    cluster = stack.KafkaCluster(stack.default_kafka().jars_dir, home / "kafka", partitions=PARTITIONS)
    try:
        url = psycopg.conninfo.make_conninfo(admin_url, dbname=db)
        migrate(url)
        cluster.start()
        topic = "kcluster.snapshots"
        create_topic(cluster, topic)
        run = run_cluster_faults(cluster, topic, url, home, cycles=args.cycles, hold_s=args.hold)
        in_topic = topic_snapshots(cluster.bootstrap, topic)
        rounds = len({s.ts for s in in_topic})
        distinct = {s.to_json() for s in in_topic}
        produced = fleet_rounds(rounds)
        lost = [s for s in produced if s.to_json() not in distinct]
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT coalesce(sum(snapshots), 0) FROM gpu_usage_1m").fetchone()
        merged = int(row[0]) if row else 0
        print(f"collector rc {run.collector_rc}, processors rc {run.processor_rcs}; {len(in_topic)} records, "
              f"{rounds} rounds, {len(lost)} snapshots lost, {len(in_topic) - len(distinct)} duplicates in the "
              f"topic; {merged} snapshots merged in the warehouse for {len(produced)} produced")
        ok = not lost and merged == len(produced) and run.collector_rc == 0 and run.processor_rcs == [0, 0]
        return 0 if ok else 1
    finally:
        cluster.kill()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
