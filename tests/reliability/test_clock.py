"""Clock trouble in a collector: a GPU's snapshots jump far into the future or far back.

The processor's documented rule (``processor.fold``): a snapshot more than ``--max-future-skew``
ahead of the processor's clock, or more than ``--max-backward-skew`` behind its GPU's last ts,
is a dead letter with a reason (table ``dead_letters`` exactly once, topic ``<topic>.dlq`` with
its kind); a smaller step back is a duplicate. Nothing lands in a month it does not belong to,
and the GPU's next good snapshots still count. Both limits are set by flag here, to values
that differ from the defaults, so the test also shows the flags are applied.
"""

from __future__ import annotations

import uuid
import dataclasses
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from collector.snapshot import Snapshot
from collector.sources.simulate import SimulatedFleet
from tests.fix_faults import assert_same_totals, oracle, produce, read_topic, start_processor, stored_offsets

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Unique per run: consumer groups live on the broker, which concurrent test runs share.
GROUP = f"clock-{uuid.uuid4().hex[:8]}"
FUTURE_SKEW_S = 600.0  # default 300
BACKWARD_SKEW_S = 1800.0  # default 3600
ROUNDS = 40
INTERVAL_S = 15.0


def _jumped(s: Snapshot, seconds: float) -> Snapshot:
    return dataclasses.replace(s, ts=s.ts + timedelta(seconds=seconds))


def test_clock_jumps_are_dead_lettered_with_reason_never_mixed_into_another_month(
        kafka_bootstrap: str, new_topic, fresh_db: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    topic = new_topic(partitions=4)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    # Ten minutes of fleet ending a minute ago: every good snapshot is in the past.
    fleet = SimulatedFleet(seed=3, hosts=1, gpus_per_host=4, interval_s=INTERVAL_S,
                           start=now - timedelta(seconds=ROUNDS * INTERVAL_S + 60))
    gpus = [s.gpu_uuid for s in fleet.read()]
    fleet = SimulatedFleet(seed=3, hosts=1, gpus_per_host=4, interval_s=INTERVAL_S,
                           start=now - timedelta(seconds=ROUNDS * INTERVAL_S + 60))
    # (gpu, round) -> clock step in seconds, and what the rule must make of it.
    faults = {
        (gpus[0], 10): (400 * 86400.0, "clock_future"),  # clock a year+ ahead: next year's buckets
        (gpus[0], 11): (None, "clock_future"),  # a few minutes past the configured limit (set below)
        (gpus[1], 20): (-40 * 86400.0, "clock_backward"),  # reset 40 days back: last month
        (gpus[1], 21): (-(BACKWARD_SKEW_S + 600), "clock_backward"),  # under the default 3600 s, over the flag
        (gpus[2], 15): (-120.0, "duplicate"),  # a small step back: a duplicate, not a dead letter
    }
    sent: list[Snapshot] = []
    rejected: list[Snapshot] = []
    for n in range(ROUNDS):
        for s in fleet.read():
            step = faults.get((s.gpu_uuid, n))
            if step is not None:
                # None: to the processor's clock plus the limit plus 5 minutes (absolute, not a step).
                s = _jumped(s, step[0]) if step[0] is not None else dataclasses.replace(
                    s, ts=now + timedelta(seconds=FUTURE_SKEW_S + 300))
                if step[1] != "duplicate":
                    rejected.append(s)
            sent.append(s)
    produce(kafka_bootstrap, topic, sent)

    proc = start_processor(kafka_bootstrap, fresh_db, topic, GROUP, tmp_path, "--max-future-skew", str(FUTURE_SKEW_S),
                           "--max-backward-skew", str(BACKWARD_SKEW_S), "--stop-when-idle", "2")
    try:
        rc = proc.popen.wait(120)
    finally:
        proc.kill()
    assert rc == 0, proc.tail()

    expected = oracle([s for s in sent if s not in rejected])
    assert expected.duplicates == 1
    assert_same_totals(expected, fresh_db)
    stored = stored_offsets(fresh_db, GROUP).values()
    assert sum(v[0] for v in stored) == len(sent)
    assert (sum(v[1] for v in stored), sum(v[2] for v in stored), sum(v[3] for v in stored)) == (
        expected.snapshots, 1, len(rejected))

    with psycopg.connect(fresh_db) as conn:
        reasons = [r[0] for r in conn.execute("SELECT reason FROM dead_letters ORDER BY partition, \"offset\"")]
        months = {r[0] for table in ("gpu_usage_1m", "gpu_usage_1h", "gpu_usage_1d", "tenant_usage_1d",
                                     "instance_usage_1h")
                  for r in conn.execute(f"SELECT DISTINCT date_trunc('month', bucket) FROM {table}")}
        last_ts = dict(conn.execute("SELECT gpu_uuid, last_ts FROM gpu_state").fetchall())
    assert len(reasons) == len(rejected) == 4
    assert sum("ahead of the processor clock" in r and f"limit {FUTURE_SKEW_S:g} s" in r for r in reasons) == 2
    assert sum("behind the GPU's last ts" in r and f"limit {BACKWARD_SKEW_S:g} s" in r for r in reasons) == 2
    # v2 time model: a snapshot covers time up to its ts, from at most 3 intervals before it.
    good_months = {datetime(t.year, t.month, 1, tzinfo=timezone.utc) for s in sent if s not in rejected
                   for t in (s.ts, s.ts - timedelta(seconds=s.interval_s))}
    assert months == good_months, "usage landed in a month no good snapshot belongs to"
    # The GPUs whose clock jumped still have their latest good snapshot as state: later ones counted.
    latest = {g: max(s.ts for s in sent if s.gpu_uuid == g and s not in rejected) for g in gpus}
    assert last_ts == latest

    dlq = [json.loads(v) for v in read_topic(kafka_bootstrap, topic + ".dlq", expect=len(rejected))]
    assert sorted(d["kind"] for d in dlq) == ["clock_backward", "clock_backward", "clock_future", "clock_future"]
    assert all(d["reason"] and d["payload"] for d in dlq)
