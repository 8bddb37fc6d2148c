"""The broker goes away under a running collector and processor, then comes back.

Both run as real ``migmeter`` processes against a private broker. While it is down the
collector keeps reading its (simulated) GPUs into its on-disk spool; when it is back the
spool drains in order, the processor reconnects and resumes, and the warehouse ends exactly
equal to the oracle of every snapshot the collector produced (regenerated here from the same
deterministic fleet, so a snapshot lost anywhere on the way shows up as a difference).

One outage can land at a lucky moment, so the broker is also stopped (SIGTERM, or SIGKILL:
no controlled shutdown) and restarted CYCLES times at seeded random moments (issue 18 item 9:
the processor used to die with ``KafkaConnectionError`` raised out of ``poll()``). And one
deterministic case: the broker's port accepts connections and drops them at once (a broker
dying, a proxy in front of a dead one); kafka-python then raises out of ``poll()`` on every
run, which a refused port it mostly rides out inside ``poll()``.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from collector.sources.simulate import SimulatedFleet
from migmeter import stack
from tests.fix_faults import (
    Proc,
    assert_same_totals,
    caught_up,
    end_offsets_total,
    free_port,
    oracle,
    produce,
    spawn,
    start_processor,
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
# Random outages: how many, and how long the broker runs before each and stays down. Up
# times start at 0: a stop right after a start lands while the group coordinator is still
# loading, the moment that made poll() raise out of a coordinator lookup.
CYCLES = 5
CHAOS_SEED = 1809
UP_S = (0.0, 2.0)
DOWN_S = (0.2, 2.0)


def _start(node: stack.KafkaNode, db: str, tmp_path: Path, *rounds: str) -> tuple[Proc, Proc]:
    """The topic, then a collector of the simulated fleet (``--rounds N`` or until stopped)
    and a processor, both real processes."""
    admin = KafkaAdminClient(bootstrap_servers=node.bootstrap, client_id="migmeter-tests")
    try:
        stack.create_topic(admin, TOPIC, 4)
    finally:
        admin.close()
    c_port = free_port()
    collector = spawn("collect", [
        "collect", "--source", "simulate", "--seed", str(SEED), "--hosts", str(HOSTS), "--gpus-per-host", str(GPUS),
        "--cluster", CLUSTER, "--interval", str(INTERVAL_S), "--speed", str(SPEED), *rounds,
        "--bootstrap", node.bootstrap, "--topic", TOPIC, "--spool-dir", str(tmp_path / "spool"),
        "--flush-timeout", "2", "--metrics-port", str(c_port), "--log-every", "5",
    ], tmp_path, metrics_port=c_port)
    processor = start_processor(node.bootstrap, db, TOPIC, GROUP, tmp_path, metrics=True)
    wait_until(lambda: sum(v[0] for v in stored_offsets(db, GROUP).values()) > 0,
               "the first snapshots in the warehouse", alive=[collector, processor])
    return collector, processor


def _assert_everything_delivered_once(collector: Proc, db: str) -> dict[str, str]:
    """The collector's own account (everything read delivered, some through the spool), then
    the warehouse against the oracle of every round it read; returns the summary's fields."""
    summary = [line for line in collector.log.read_text().splitlines() if "collector stopped" in line][-1]
    fields = dict(f.split("=", 1) for f in summary.split(": ", 1)[1].split() if "=" in f)
    rounds = int(fields["rounds"])
    # Every round reads every GPU of the fleet: 2 hosts x 4 GPUs = 8 snapshots a round.
    assert int(fields["read"]) == rounds * HOSTS * GPUS, summary
    assert fields["dropped"] == "0" and fields["spool_depth"] == "0", summary
    assert int(fields["spooled"]) > 0, "no outage reached the collector: the test proved nothing"
    fleet = SimulatedFleet(seed=SEED, hosts=HOSTS, gpus_per_host=GPUS, cluster=CLUSTER, interval_s=INTERVAL_S)
    produced = [s for _ in range(rounds) for s in fleet.read()]
    expected = oracle(produced)
    assert_same_totals(expected, db)
    stored = stored_offsets(db, GROUP).values()
    # Re-sent records (a spool batch whose acknowledgement was lost) are duplicates, counted, not added.
    assert sum(v[1] for v in stored) == expected.snapshots == len(produced)
    assert sum(v[0] for v in stored) == len(produced) + sum(v[2] for v in stored)
    assert sum(v[3] for v in stored) == 0
    return fields


def test_broker_down_then_back(private_kafka: stack.KafkaNode, fresh_db: str, tmp_path: Path) -> None:
    collector, processor = _start(private_kafka, fresh_db, tmp_path, "--rounds", str(ROUNDS))
    procs = [collector, processor]
    try:
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
    assert spooled > 0
    fields = _assert_everything_delivered_once(collector, fresh_db)
    assert fields["rounds"] == str(ROUNDS)


def _outage_schedule() -> list[tuple[float, float, bool]]:
    """(seconds up before the stop, seconds down, hard kill?) per cycle; seeded."""
    rng = random.Random(CHAOS_SEED)
    return [(rng.uniform(*UP_S), rng.uniform(*DOWN_S), rng.random() < 0.5) for _ in range(CYCLES)]


def test_broker_stopped_at_random_moments(private_kafka: stack.KafkaNode, fresh_db: str, tmp_path: Path) -> None:
    schedule = _outage_schedule()
    assert any(hard for _, _, hard in schedule) and not all(hard for _, _, hard in schedule)
    collector, processor = _start(private_kafka, fresh_db, tmp_path)  # runs until stopped
    procs = [collector, processor]
    try:
        t0 = time.monotonic()
        timings: list[float] = []
        for up_s, down_s, hard in schedule:
            time.sleep(up_s)  # a random moment of the loops, not an assertion
            pid = private_kafka.pid()
            if hard and pid is not None:
                os.kill(pid, signal.SIGKILL)
                wait_until(lambda: private_kafka.pid() is None, "the killed broker to exit")
            t_stop = time.monotonic()
            private_kafka.stop()
            timings.append(time.monotonic() - t_stop)
            time.sleep(down_s)
            for p in procs:
                assert p.running(), f"{p.name} died during an outage:\n{p.tail()}"
            t_start = time.monotonic()
            private_kafka.start()
            timings.append(time.monotonic() - t_start)
        print(f"{CYCLES} outages in {time.monotonic() - t0:.0f} s; stop/start seconds: "
              + " ".join(f"{t:.1f}" for t in timings))
        # Back for good: the spool drains, the collector stops, the processor catches up.
        wait_until(lambda: collector.metrics().get("migmeter_collector_spool_depth", 1) == 0,
                   "the collector's spool to drain", alive=procs)
        assert collector.terminate() == 0, collector.tail()
        wait_until(caught_up(private_kafka.bootstrap, TOPIC, fresh_db, GROUP), "the processor to catch up",
                   alive=[processor])
    finally:
        collector.kill()
        prc = processor.terminate()
    assert prc == 0, processor.tail()
    _assert_everything_delivered_once(collector, fresh_db)
    # One line per outage that reached the processor, not one per retry. (kafka-python raises
    # out of poll() only when an outage hits a coordinator lookup at the wrong moment; most it
    # rides out inside poll(), so the count may be 0; the next test makes it certain.)
    outages = processor.log.read_text().count("unavailable (")
    print(f"the processor saw {outages} outage(s) raise out of the Kafka client")
    assert outages <= CYCLES, processor.tail()


@contextmanager
def _drops_every_connection(port: int) -> Iterator[None]:
    """A listener on ``port`` that accepts each connection and closes it at once."""
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5)
        server.close()


def test_processor_survives_a_broker_port_that_drops_every_connection(
        private_kafka: stack.KafkaNode, fresh_db: str, tmp_path: Path) -> None:
    topic, group = "blackhole.snapshots", f"blackhole-{uuid.uuid4().hex[:8]}"
    fleet = SimulatedFleet(seed=SEED, hosts=HOSTS, gpus_per_host=GPUS, cluster=CLUSTER, interval_s=INTERVAL_S)
    # 10 rounds of 8 GPUs before the outage, 10 after: 160 snapshots in all.
    before = [s for _ in range(10) for s in fleet.read()]
    after = [s for _ in range(10) for s in fleet.read()]
    produce(private_kafka.bootstrap, topic, before)
    # A real process: kafka-python leaks sockets on failed connects, which in this process
    # would surface as ResourceWarnings in whichever test runs when they are collected.
    processor = start_processor(private_kafka.bootstrap, fresh_db, topic, group, tmp_path)
    try:
        wait_until(caught_up(private_kafka.bootstrap, topic, fresh_db, group), "the first 80 snapshots",
                   alive=[processor])
        private_kafka.stop()
        with _drops_every_connection(private_kafka.port):
            wait_until(lambda: "unavailable (" in processor.tail(100_000), "the processor to notice the outage",
                       alive=[processor])
            time.sleep(2.0)  # several more failing polls inside the same outage; not an assertion
        private_kafka.start()
        produce(private_kafka.bootstrap, topic, after)
        wait_until(caught_up(private_kafka.bootstrap, topic, fresh_db, group), "the last 80 snapshots",
                   alive=[processor])
    finally:
        rc = processor.terminate()
    log = processor.log.read_text()
    assert rc == 0, log[-4000:]
    assert end_offsets_total(private_kafka.bootstrap, topic) == 160
    # One line for the outage, however many calls failed in it; one when it ended.
    assert log.count("unavailable (") == 1 and "WARNING migmeter.processor: Kafka at" in log, log[-4000:]
    assert log.count("usable again") == 1, log[-4000:]
    assert_same_totals(oracle(before + after), fresh_db)
