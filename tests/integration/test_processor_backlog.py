"""Batch sizes under backlog (processor.consumer BACKLOG_BATCH_FACTOR), on real Kafka + TimescaleDB.

A batch that reaches ``batch_records`` while another batch's worth of records already waits in
Kafka grows, up to BACKLOG_BATCH_FACTOR times; caught up, it closes at ``batch_records``. The
sizes are read from the processor's own "batch committed" log lines; the warehouse must equal
the independent oracle whatever the batch sizes were.
"""

from __future__ import annotations

import gc
import logging
import re

import pytest

from collector.sources.simulate import SimulatedFleet
from processor.consumer import BACKLOG_BATCH_FACTOR
from tests.fix_faults import assert_same_totals, config, oracle, produce, run_until_idle, stored_offsets_total

pytestmark = pytest.mark.integration

_COMMITTED = re.compile(r"batch committed: (\d+) records")


def _snaps(rounds: int):  # type: ignore[no-untyped-def]
    fleet = SimulatedFleet(seed=5, hosts=2, gpus_per_host=4, reconfigure_every_s=600.0)
    return [s for r in fleet.rounds(rounds) for s in r]


def _batch_sizes(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [int(m.group(1)) for r in caplog.records if (m := _COMMITTED.search(r.getMessage()))]


def test_batches_grow_under_backlog_and_the_warehouse_stays_exact(kafka_bootstrap, new_topic, fresh_db,
                                                                    caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG, logger="migmeter.processor")
    topic = new_topic(partitions=1)  # one partition: every fetch response knows the whole backlog
    snaps = _snaps(50)  # 8 GPUs x 50 rounds = 400 records, all waiting before the processor starts
    produce(kafka_bootstrap, topic, snaps)
    gc_before = gc.get_threshold()
    # batch_ms long enough that only the record counts close batches, even on a loaded machine.
    run_until_idle(config(kafka_bootstrap, fresh_db, topic, batch_records=50, batch_ms=20_000))
    sizes = _batch_sizes(caplog)
    assert sum(sizes) == 400
    # 50 records per batch would be 8 batches; with 350 more waiting, the first batch grows to
    # 4 x 50 = 200, and so does the second (200 waiting): [200, 200] when every poll fills up,
    # never a batch over 200.
    assert max(sizes) <= 50 * BACKLOG_BATCH_FACTOR == 200
    assert max(sizes) > 50 and len(sizes) < 8, sizes
    # The fold's GC thresholds hold only while a batch is folded: the interpreter's own after.
    assert gc.get_threshold() == gc_before
    expected = oracle(snaps)
    assert expected.snapshots == 400
    assert_same_totals(expected, fresh_db, instance_rows=True)
    assert stored_offsets_total(fresh_db) == (400, 400, 0, 0)


def test_caught_up_batches_close_at_batch_records(kafka_bootstrap, new_topic, fresh_db,
                                                  caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG, logger="migmeter.processor")
    topic = new_topic(partitions=1)
    snaps = _snaps(8)[:60]  # 60 records: once 50 are taken only 10 wait, less than a batch
    produce(kafka_bootstrap, topic, snaps)
    run_until_idle(config(kafka_bootstrap, fresh_db, topic, batch_records=50, batch_ms=3000))
    sizes = _batch_sizes(caplog)
    # Normally [50, 10]: 50 at batch_records (no growth: 10 < 50 waiting), the last 10 at
    # batch_ms; a poll cut short on a loaded machine may split them further, but no batch ever
    # exceeds 50 (grown, the first would hold all 60).
    assert sum(sizes) == 60 and max(sizes) <= 50, sizes
    assert stored_offsets_total(fresh_db) == (60, 60, 0, 0)
