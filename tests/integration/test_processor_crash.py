"""Exactly-once under crashes: `migmeter process` killed with SIGKILL at random moments while
snapshots keep arriving, restarted; one of two processors in a group killed. The warehouse
must end equal to an independent oracle, every record accounted for exactly once."""

from __future__ import annotations

import random
import signal
import time

import pytest

from collector.snapshot import Snapshot
from tests.fix_faults import (
    Feeder,
    Proc,
    assert_same_totals,
    caught_up,
    end_offsets_total,
    oracle,
    start_processor,
    stored_offsets_total,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]



def _group(topic: str) -> str:
    """Each test's own Kafka group: on the shared broker a group named by two tests would make a
    member one test killed hold up the other's rebalances."""
    return f"crash.{topic}"


@pytest.fixture
def spawn(kafka_bootstrap, fresh_db, tmp_path):  # type: ignore[no-untyped-def]
    """Start `migmeter process` children (log ``<name>.log``); any still running at teardown are
    killed (a failed assertion must not leave processors behind)."""
    procs: list[Proc] = []

    def start(topic: str, name: str, *extra: str) -> Proc:
        proc = start_processor(kafka_bootstrap, fresh_db, topic, _group(topic), tmp_path, "--session-timeout-ms", "6000",
                               *extra, name=name)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


def _feeder(bootstrap: str, topic: str, rounds: int, pause_after: int | None = None) -> Feeder:
    """A simulated fleet round by round; every 7th round re-sends the round before it (duplicates)."""
    previous: list[Snapshot] = []

    def resend_every_7th(n: int, batch: list[Snapshot]) -> list[Snapshot]:
        nonlocal previous
        out = previous + batch if n % 7 == 6 else batch
        previous = out
        return out

    return Feeder(bootstrap, topic, rounds, pause_s=0.02, seed=11, reconfigure_every_s=900.0,
                  mutate=resend_every_7th, pause_after=pause_after)


def _wait_progress(db: str, above: int, proc: Proc) -> int:
    """Waits until the stored offsets pass ``above``; returns their sum then."""
    def progressed() -> int:
        total = stored_offsets_total(db)[0]
        return total if total > above else 0
    return int(wait_until(progressed, f"progress past offset {above}", alive=[proc]))


def _wait_assigned(proc: Proc, topic: str) -> None:
    wait_until(lambda: f"partitions assigned: {topic}[" in proc.tail(1_000_000), f"{proc.name} to own partitions",
               alive=[proc])


def _wait_caught_up(bootstrap: str, topic: str, db: str, proc: Proc) -> None:
    wait_until(caught_up(bootstrap, topic, db, _group(topic)), "the processor to catch up", alive=[proc])


def _stop(proc: Proc) -> None:
    rc = proc.terminate()
    assert rc == 0, proc.tail()
    assert proc.tail().rstrip().endswith("processor stopped")


def _assert_exact(bootstrap: str, topic: str, db: str, sent: list[Snapshot]) -> None:
    expected = oracle(sent)
    next_sum, merged, dups, dead = stored_offsets_total(db)
    assert next_sum == end_offsets_total(bootstrap, topic) == len(sent)
    assert (merged, dups, dead) == (expected.snapshots, expected.duplicates, 0)
    assert_same_totals(expected, db, instance_rows=True)


def test_sigkill_at_random_moments_then_restart(kafka_bootstrap, new_topic, fresh_db, spawn):  # type: ignore[no-untyped-def]
    topic = new_topic(partitions=3)
    rng = random.Random(20260101)
    feeder = _feeder(kafka_bootstrap, topic, rounds=300)
    feeder.start()
    progress = 0
    for _ in range(3):
        # Static membership: the restarted process takes over the dead one's partitions at once.
        proc = spawn(topic, "process", "--instance-id", "p1")
        progress = _wait_progress(fresh_db, progress, proc)
        time.sleep(rng.uniform(0.0, 0.6))  # a random moment inside the next batches, not an assertion
        proc.kill()
        progress = stored_offsets_total(fresh_db)[0]
    sent = feeder.finish()
    proc = spawn(topic, "process", "--instance-id", "p1")
    _wait_caught_up(kafka_bootstrap, topic, fresh_db, proc)
    _stop(proc)
    assert proc.log.read_text().count("SIGTERM") == 1  # one log for all four runs: only the last was stopped
    _assert_exact(kafka_bootstrap, topic, fresh_db, sent)


def test_two_processors_in_one_group_one_killed(kafka_bootstrap, new_topic, fresh_db, spawn):  # type: ignore[no-untyped-def]
    topic = new_topic(partitions=4)
    feeder = _feeder(kafka_bootstrap, topic, rounds=200)
    feeder.start()
    a = spawn(topic, "a")
    b = spawn(topic, "b")
    _wait_assigned(a, topic)  # a really owns partitions before it dies
    _wait_progress(fresh_db, 0, a)
    time.sleep(random.Random(5).uniform(0.5, 1.5))  # a random moment of the stream, not an assertion
    a.kill()  # b takes its partitions over once the group notices
    sent = feeder.finish()
    _wait_caught_up(kafka_bootstrap, topic, fresh_db, b)
    _stop(b)
    _assert_exact(kafka_bootstrap, topic, fresh_db, sent)


def test_stalled_zombie_processor_is_fenced(kafka_bootstrap, new_topic, fresh_db, spawn):  # type: ignore[no-untyped-def]
    """A processor frozen (SIGSTOP) mid-stream loses its partitions; when it thaws, whatever batch
    it still holds must not land (offsets compare-and-set), and the totals stay exact."""
    topic = new_topic(partitions=2)
    feeder = _feeder(kafka_bootstrap, topic, rounds=200, pause_after=80)
    feeder.start()
    a = spawn(topic, "a", "--batch-ms", "1500")
    _wait_progress(fresh_db, 0, a)
    b = spawn(topic, "b")
    _wait_assigned(b, topic)  # both members own partitions now
    assert feeder.paused.wait(120)
    _wait_caught_up(kafka_bootstrap, topic, fresh_db, b)
    try:
        feeder.go_on.set()  # snapshots keep arriving ...
        _wait_progress(fresh_db, stored_offsets_total(fresh_db)[0], a)
        a.popen.send_signal(signal.SIGSTOP)  # ... and a freezes mid-stream, likely holding a batch
        sent = feeder.finish()
        # b takes over every partition once a's session times out, and catches up.
        _wait_caught_up(kafka_bootstrap, topic, fresh_db, b)
    finally:
        a.popen.send_signal(signal.SIGCONT)
    _stop(a)
    _stop(b)
    _assert_exact(kafka_bootstrap, topic, fresh_db, sent)
