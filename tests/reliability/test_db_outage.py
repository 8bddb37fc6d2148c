"""PostgreSQL stopped under a running processor, then restarted: it pauses, retries with
backoff, resumes, and the warehouse ends exactly equal to the oracle. The processor is the
same process from start to end (no crash loop). The database is a private cluster."""

from __future__ import annotations

import uuid
import time
from pathlib import Path

import pytest

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

# Unique per run: consumer groups live on the broker, which concurrent test runs share.
GROUP = f"outage-{uuid.uuid4().hex[:8]}"
# How long the database stays down: several backoff rounds at --retry-max 2.
OUTAGE_S = 8.0


def test_database_down_then_back(kafka_bootstrap: str, new_topic, private_pg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster, url = private_pg
    topic = new_topic(partitions=4)
    feeder = Feeder(kafka_bootstrap, topic, rounds=160, pause_s=0.1)
    port = free_port()
    proc = spawn("process", processor_args(kafka_bootstrap, url, topic, GROUP, port), tmp_path, metrics_port=port)
    try:
        feeder.start()
        wait_until(lambda: sum(v[0] for v in stored_offsets(url, GROUP).values()) > 0, "a first commit",
                   alive=[proc])
        cluster.stop()
        down_at = time.monotonic()
        # While it is down: the process stays up and counts retries (backoff 0.5, 1, 2, 2 ... s).
        wait_until(lambda: proc.metrics().get("migmeter_processor_db_retries_total", 0) >= 3,
                   "three database retries", alive=[proc])
        assert proc.metrics()["migmeter_processor_database_up"] == 0
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        retries_during_outage = proc.metrics()["migmeter_processor_db_retries_total"]
        cluster.start()
        sent = feeder.finish()
        wait_until(caught_up(kafka_bootstrap, topic, url, GROUP), "the processor to catch up", alive=[proc])
        metrics = proc.metrics()
        assert metrics["migmeter_processor_database_up"] == 1
        # Backoff, not a hot loop: an 8 s outage at 0.5 s doubling to a 2 s cap is a handful of tries.
        assert 3 <= retries_during_outage <= 30, retries_during_outage
        assert proc.running(), "the processor exited during the outage"
    finally:
        rc = proc.terminate()
        feeder.join(30)
    assert rc == 0, proc.tail()
    assert "Traceback" not in proc.log.read_text()
    expected = oracle(sent)
    assert_same_totals(expected, url)
    stored = stored_offsets(url, GROUP).values()
    assert sum(v[1] for v in stored) == expected.snapshots
    assert sum(v[3] for v in stored) == 0  # nothing dead-lettered
