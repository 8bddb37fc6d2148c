"""PostgreSQL stopped under a running processor, then restarted: it pauses, retries with
backoff, resumes, and the warehouse ends exactly equal to the oracle. The processor is the
same process from start to end (no crash loop). The database is a private cluster.

Also a crash (immediate shutdown: no checkpoint, WAL buffers not flushed) under a processor
whose sessions commit asynchronously (``synchronous_commit = off``): the last batches
acknowledged as committed may be gone after recovery, each with its offsets (one
transaction), so the processor consumes them again and the warehouse still equals the
oracle: nothing lost, nothing billed twice."""

from __future__ import annotations

import os
import signal
import uuid
import time
from pathlib import Path
from typing import Any

import pytest

from collector.snapshot import Snapshot
from processor.sink import Sink

from tests.fix_faults import Feeder, assert_same_totals, caught_up, oracle, start_processor, stored_offsets, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Unique per run: consumer groups live on the broker, which concurrent test runs share.
GROUP = f"outage-{uuid.uuid4().hex[:8]}"
# How long the database stays down: several backoff rounds at --retry-max 2.
OUTAGE_S = 8.0
CRASH_GROUP = f"crash-{uuid.uuid4().hex[:8]}"


def test_database_down_then_back(kafka_bootstrap: str, new_topic, private_pg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster, url = private_pg
    topic, feeder, proc = _start(kafka_bootstrap, new_topic, url, GROUP, tmp_path)
    try:
        feeder.start()
        wait_until(lambda: sum(v[0] for v in stored_offsets(url, GROUP).values()) > 0, "a first commit",
                   alive=[proc])
        down_at = time.monotonic()  # before the stop: the first failures come while it shuts down
        cluster.stop()
        # While it is down: the process stays up and counts retries (backoff 0.5, 1, 2, 2 ... s).
        wait_until(lambda: proc.metrics().get("migmeter_processor_db_retries_total", 0) >= 3,
                   "three database retries", alive=[proc])
        assert proc.metrics()["migmeter_processor_database_up"] == 0
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))  # the outage lasts; not an assertion
        retries_during_outage = proc.metrics()["migmeter_processor_db_retries_total"]
        outage_s = time.monotonic() - down_at
        cluster.start()
        sent = feeder.finish()
        wait_until(caught_up(kafka_bootstrap, topic, url, GROUP), "the processor to catch up", alive=[proc])
        metrics = proc.metrics()
        assert metrics["migmeter_processor_database_up"] == 1
        # Backoff, not a hot loop: tries start 0.5 s apart and only get further apart (a loaded
        # machine spaces them more, never less), so the outage holds at most 1 + outage_s / 0.5.
        assert 3 <= retries_during_outage <= 1 + outage_s / 0.5, (retries_during_outage, outage_s)
        assert proc.running(), "the processor exited during the outage"
    finally:
        rc = proc.terminate()
        feeder.join(30)
    _assert_exact(proc, rc, sent, url, GROUP)


def _start(kafka_bootstrap: str, new_topic: Any, url: str, group: str, tmp_path: Path) -> tuple[str, Feeder, Any]:
    """A 4-partition topic, a feeder (not started yet) and a processor on it."""
    topic = new_topic(partitions=4)
    feeder = Feeder(kafka_bootstrap, topic, rounds=None, pause_s=0.1)
    proc = start_processor(kafka_bootstrap, url, topic, group, tmp_path, metrics=True)
    return topic, feeder, proc


def _assert_exact(proc: Any, rc: int, sent: list[Snapshot], url: str, group: str) -> None:
    """A clean exit, and the warehouse equals the oracle: every snapshot billed once, none dead-lettered."""
    assert rc == 0, proc.tail()
    assert "Traceback" not in proc.log.read_text()
    expected = oracle(sent)
    assert_same_totals(expected, url)
    stored = stored_offsets(url, group).values()
    assert sum(v[1] for v in stored) == expected.snapshots
    assert sum(v[3] for v in stored) == 0  # nothing dead-lettered


def test_sink_sessions_commit_asynchronously(fresh_db: str) -> None:
    sink = Sink(fresh_db, "g")
    try:
        row = sink._connection().execute("SHOW synchronous_commit").fetchone()
    finally:
        sink.close()
    assert row == ("off",)


def test_database_crash_loses_nothing_and_doubles_nothing(kafka_bootstrap: str, new_topic, private_pg,  # type: ignore[no-untyped-def]
                                                          tmp_path: Path) -> None:
    cluster, url = private_pg
    topic, feeder, proc = _start(kafka_bootstrap, new_topic, url, CRASH_GROUP, tmp_path)
    try:
        feeder.start()
        # Crash while batches keep committing: after a few commits, not the first.
        wait_until(lambda: proc.metrics().get("migmeter_processor_batches_total", 0) >= 3, "three committed batches",
                   alive=[proc])
        pid = cluster.pid()
        assert pid is not None
        os.kill(pid, signal.SIGQUIT)  # PostgreSQL's immediate shutdown: a crash, recovery at restart
        wait_until(lambda: not cluster.is_running(), "PostgreSQL to go down")
        cluster.stop()  # reap it
        wait_until(lambda: proc.metrics().get("migmeter_processor_database_up", 1) == 0,
                   "the processor to notice", alive=[proc])
        cluster.start()
        sent = feeder.finish()
        wait_until(caught_up(kafka_bootstrap, topic, url, CRASH_GROUP), "the processor to catch up", alive=[proc])
        assert proc.running(), "the processor exited after the crash"
    finally:
        rc = proc.terminate()
        feeder.join(30)
    _assert_exact(proc, rc, sent, url, CRASH_GROUP)
