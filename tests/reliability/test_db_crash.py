"""PostgreSQL crashes (immediate shutdown: no checkpoint, WAL buffers not flushed) under a
running processor whose sessions commit asynchronously (``synchronous_commit = off``).

The last batches acknowledged as committed may be gone after the crash recovery; each took
its offsets with it (one transaction), so the processor re-reads the offsets, consumes those
records again, and the warehouse ends exactly equal to the oracle: nothing lost, nothing
billed twice. The database is a private cluster.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

from processor.sink import Sink
from tests.fix_faults import (
    Feeder,
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

GROUP = f"crash-{uuid.uuid4().hex[:8]}"


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
    topic = new_topic(partitions=4)
    feeder = Feeder(kafka_bootstrap, topic, rounds=160, pause_s=0.1)
    port = free_port()
    proc = spawn("process", processor_args(kafka_bootstrap, url, topic, GROUP, port), tmp_path, metrics_port=port)
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
        wait_until(caught_up(kafka_bootstrap, topic, url, GROUP), "the processor to catch up", alive=[proc])
        assert proc.running(), "the processor exited after the crash"
    finally:
        rc = proc.terminate()
        feeder.join(30)
    assert rc == 0, proc.tail()
    assert "Traceback" not in proc.log.read_text()
    expected = oracle(sent)
    assert_same_totals(expected, url)
    stored = stored_offsets(url, GROUP).values()
    # Every snapshot billed once: merged counts add up to the oracle's, nothing dead-lettered.
    assert sum(v[1] for v in stored) == expected.snapshots
    assert sum(v[3] for v in stored) == 0
