"""Rebalances while a batch is in flight: processors join and leave a running group.

The first processor collects long batches (3 s), so whenever another one joins, the first
holds uncommitted records; the group rebalances, partitions move, and the processor that
gave them up must either commit what it holds while still the owner or drop it for the new
owner to redo, never both. A third joins, the second is killed mid-batch, the third leaves
with SIGTERM. The warehouse must end exactly equal to the oracle.
"""

from __future__ import annotations

import uuid
import random
import re
from pathlib import Path

import pytest

from tests.fix_faults import (
    Feeder,
    Proc,
    assert_same_totals,
    caught_up,
    oracle,
    start_processor,
    stored_offsets,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Unique per run: consumer groups live on the broker, which concurrent test runs share.
GROUP = f"rebalance-{uuid.uuid4().hex[:8]}"
# Long batches: a rebalance almost always finds records collected but not yet written.
LONG_BATCH = ("--batch-ms", "3000", "--batch-records", "100000")


def _owns_partitions(p: Proc) -> bool:
    return bool(re.search(r"partitions assigned: test\.", p.log.read_text(errors="replace")))


def _committed(url: str) -> int:
    return sum(v[0] for v in stored_offsets(url, GROUP).values())


def test_processors_join_and_leave_mid_batch(kafka_bootstrap: str, new_topic, fresh_db: str,
                                             tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(20261128)
    topic = new_topic(partitions=6)
    feeder = Feeder(kafka_bootstrap, topic, rounds=None, pause_s=0.08, hosts=3, gpus_per_host=4)

    def processor(name: str) -> Proc:
        # DEBUG: the log then shows each batch commit, the evidence checked at the end.
        return start_processor(kafka_bootstrap, fresh_db, topic, GROUP, tmp_path, *LONG_BATCH, name=name,
                               log_level="DEBUG")

    procs: list[Proc] = []
    try:
        feeder.start()
        procs.append(processor("p1"))
        wait_until(lambda: _committed(fresh_db) > 0, "p1's first commit", alive=procs)
        wait_until(lambda: rng.random() < 0.2, "a random moment inside p1's next batch", every_s=0.25)
        procs.append(processor("p2"))  # joins while p1 collects
        wait_until(lambda: _owns_partitions(procs[1]), "p2 to get partitions", alive=procs)
        progress = _committed(fresh_db)
        wait_until(lambda: _committed(fresh_db) > progress, "progress after p2 joined", alive=procs)
        procs.append(processor("p3"))  # another rebalance, two batches in flight
        wait_until(lambda: _owns_partitions(procs[2]), "p3 to get partitions", alive=procs)
        progress = _committed(fresh_db)
        wait_until(lambda: _committed(fresh_db) > progress, "progress after p3 joined", alive=procs)
        wait_until(lambda: rng.random() < 0.3, "a random moment inside p2's batch", every_s=0.3)
        procs[1].kill()  # p2 dies holding records: its partitions go to p1/p3 after the session timeout
        assert procs[2].terminate() == 0, procs[2].tail()  # p3 leaves cleanly: commits, then rebalances
        sent = feeder.finish()
        wait_until(caught_up(kafka_bootstrap, topic, fresh_db, GROUP), "p1 to catch up", alive=[procs[0]])
        assert procs[0].terminate() == 0, procs[0].tail()
    finally:
        for p in procs:
            p.kill()
        feeder.join(30)

    expected = oracle(sent)
    assert_same_totals(expected, fresh_db)
    stored = stored_offsets(fresh_db, GROUP).values()
    assert sum(v[0] for v in stored) == len(sent)
    assert sum(v[1] for v in stored) == expected.snapshots
    assert sum(v[2] for v in stored) == expected.duplicates == 0
    # Evidence the rebalances met batches in flight: a revoke followed by that batch's commit.
    p1 = procs[0].log.read_text(errors="replace")
    revoked_with_batch = re.findall(r"partitions revoked: test\.[^\n]*\n[^\n]*batch committed", p1)
    assert revoked_with_batch, "no rebalance found p1 holding a batch"
