"""Exactly-once under crashes: `migmeter process` killed with SIGKILL at random moments while
snapshots keep arriving, restarted; one of two processors in a group killed. The warehouse
must end equal to an independent oracle, every record accounted for exactly once."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from collector.sources.simulate import SimulatedFleet
from tests.integration.proc_kit import (
    Oracle,
    db_totals,
    end_offsets,
    spawn_processor,
    stored_offsets_total,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REL = 1e-9
# Generous bounds that only stop a broken test from hanging; nothing asserts on time.
PROGRESS_DEADLINE_S = 90.0


@pytest.fixture
def spawn(kafka_bootstrap, fresh_db):  # type: ignore[no-untyped-def]
    """Start `migmeter process` children; any still running at teardown are killed (a failed
    assertion must not leave processors behind)."""
    procs: list[subprocess.Popen] = []

    def start(topic: str, log: Path, *extra: str) -> subprocess.Popen:
        proc = spawn_processor(kafka_bootstrap, fresh_db, topic, log, "g", *extra)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


class _Feeder(threading.Thread):
    """Produces a simulated fleet round by round (every 7th round re-sent: duplicates)."""

    def __init__(self, bootstrap: str, topic: str, rounds: int, pause_after: int | None = None) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.rounds = bootstrap, topic, rounds
        self.pause_after = pause_after  # rounds to send before waiting for ``go_on``
        self.paused = threading.Event()
        self.go_on = threading.Event()
        self.sent: list = []  # production order, what the oracle reads
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            fleet = SimulatedFleet(seed=11, hosts=2, gpus_per_host=4, reconfigure_every_s=900.0)
            producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
            previous: list = []
            for n in range(self.rounds):
                if n == self.pause_after:
                    self.paused.set()
                    self.go_on.wait(120)
                batch = fleet.read()
                if n % 7 == 6:
                    batch = previous + batch
                for s in batch:
                    producer.send(self.topic, key=s.key, value=s.to_json())
                producer.flush(30)
                self.sent.extend(batch)
                previous = batch
                time.sleep(0.02)
            producer.close()
        except BaseException as exc:
            self.error = exc


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _wait_progress(db: str, above: int, proc: subprocess.Popen, log: Path) -> int:
    deadline = time.monotonic() + PROGRESS_DEADLINE_S
    while time.monotonic() < deadline:
        total = stored_offsets_total(db)[0]
        if total > above:
            return total
        if proc.poll() is not None:
            raise AssertionError(f"processor exited early: {_tail(log)}")
        time.sleep(0.1)
    raise AssertionError("the processor made no progress")


def _wait_log(log: Path, text: str) -> None:
    deadline = time.monotonic() + PROGRESS_DEADLINE_S
    while text not in (log.read_text(errors="replace") if log.exists() else ""):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never appeared in {log.name}: {_tail(log)}")
        time.sleep(0.1)


def _wait_caught_up(bootstrap: str, topic: str, db: str, proc: subprocess.Popen, log: Path) -> None:
    expected = sum(end_offsets(bootstrap, topic).values())
    deadline = time.monotonic() + PROGRESS_DEADLINE_S
    while stored_offsets_total(db)[0] < expected:
        if proc.poll() is not None:
            raise AssertionError(f"processor exited early: {_tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError("the processor did not catch up")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen, log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert rc == 0, _tail(log)
    assert _tail(log).rstrip().endswith("processor stopped")


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def _assert_exact(bootstrap: str, topic: str, db: str, sent: list) -> None:
    oracle = Oracle.of(sent)
    ends = sum(end_offsets(bootstrap, topic).values())
    next_sum, merged, dups, dead = stored_offsets_total(db)
    assert next_sum == ends == len(sent)
    assert (merged, dups, dead) == (oracle.snapshots, oracle.duplicates, 0)
    for grain in ("1m", "1h", "1d"):
        got = db_totals(db, grain)
        assert got["snapshots"] == oracle.snapshots
        assert got["instance_samples"] == oracle.instance_samples
        assert got["gpu_seconds"] == pytest.approx(oracle.gpu_seconds, rel=REL)
        assert got["alloc_gpu_seconds"] == pytest.approx(oracle.alloc_gpu_seconds, rel=REL)
        assert got["busy_gpu_seconds"] == pytest.approx(oracle.busy_gpu_seconds, rel=REL)
        for tenant, alloc in oracle.tenant_alloc.items():
            assert got["tenant_alloc"][tenant] == pytest.approx(alloc, rel=REL)


def test_sigkill_at_random_moments_then_restart(kafka_bootstrap, new_topic, fresh_db, tmp_path, spawn):  # type: ignore[no-untyped-def]
    log = tmp_path / "process.log"
    topic = new_topic(partitions=3)
    rng = random.Random(20260101)
    feeder = _Feeder(kafka_bootstrap, topic, rounds=300)
    feeder.start()
    progress = 0
    for _ in range(3):
        # Static membership: the restarted process takes over the dead one's partitions at once.
        proc = spawn(topic, log, "--instance-id", "p1")
        progress = _wait_progress(fresh_db, progress, proc, log)
        time.sleep(rng.uniform(0.0, 0.6))  # somewhere inside the next batches
        _kill(proc)
        progress = stored_offsets_total(fresh_db)[0]
    feeder.join(120)
    assert feeder.error is None and not feeder.is_alive()
    proc = spawn(topic, log, "--instance-id", "p1")
    _wait_caught_up(kafka_bootstrap, topic, fresh_db, proc, log)
    _stop(proc, log)
    assert log.read_text().count("SIGTERM") == 1
    _assert_exact(kafka_bootstrap, topic, fresh_db, feeder.sent)


def test_two_processors_in_one_group_one_killed(kafka_bootstrap, new_topic, fresh_db, tmp_path, spawn):  # type: ignore[no-untyped-def]
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    topic = new_topic(partitions=4)
    feeder = _Feeder(kafka_bootstrap, topic, rounds=200)
    feeder.start()
    a = spawn(topic, log_a)
    b = spawn(topic, log_b)
    _wait_progress(fresh_db, 0, a, log_a)
    time.sleep(random.Random(5).uniform(0.5, 1.5))
    _kill(a)  # b takes its partitions over once the group notices
    feeder.join(120)
    assert feeder.error is None and not feeder.is_alive()
    _wait_caught_up(kafka_bootstrap, topic, fresh_db, b, log_b)
    _stop(b, log_b)
    assert f"partitions assigned: {topic}[" in log_a.read_text()  # a really owned partitions before it died


def test_stalled_zombie_processor_is_fenced(kafka_bootstrap, new_topic, fresh_db, tmp_path, spawn):  # type: ignore[no-untyped-def]
    """A processor frozen (SIGSTOP) mid-stream loses its partitions; when it thaws, whatever batch
    it still holds must not land (offsets compare-and-set), and the totals stay exact."""
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    topic = new_topic(partitions=2)
    feeder = _Feeder(kafka_bootstrap, topic, rounds=200, pause_after=80)
    feeder.start()
    a = spawn(topic, log_a, "--batch-ms", "1500")
    _wait_progress(fresh_db, 0, a, log_a)
    b = spawn(topic, log_b)
    _wait_log(log_b, f"partitions assigned: {topic}[")  # both members own partitions now
    assert feeder.paused.wait(120)
    _wait_caught_up(kafka_bootstrap, topic, fresh_db, b, log_b)
    try:
        feeder.go_on.set()  # snapshots keep arriving ...
        _wait_progress(fresh_db, stored_offsets_total(fresh_db)[0], a, log_a)
        a.send_signal(signal.SIGSTOP)  # ... and a freezes mid-stream, likely holding a batch
        feeder.join(120)
        assert feeder.error is None and not feeder.is_alive()
        # b takes over every partition once a's session times out, and catches up.
        _wait_caught_up(kafka_bootstrap, topic, fresh_db, b, log_b)
    finally:
        a.send_signal(signal.SIGCONT)
    _stop(a, log_a)
    _stop(b, log_b)
    _assert_exact(kafka_bootstrap, topic, fresh_db, feeder.sent)
