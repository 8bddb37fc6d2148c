"""One valid-looking snapshot with an integer the warehouse cannot store (a GI id or GPU index
past 32 bits: a hostile or buggy producer) must be dead-lettered, not stall the processor.

Before the contract bounded these integers, the decoder accepted them, the database refused
the batch ("integer out of range"), and the processor retried that batch forever: one
message stopped metering for every GPU behind it.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from collector.snapshot import from_json
from collector.sources.simulate import SimulatedFleet
from migmeter.errors import BadSnapshot
from tests.fix_faults import assert_same_totals, oracle, processor_args, spawn, stored_offsets
from tests.integration.proc_kit import produce, produce_raw

pytestmark = pytest.mark.integration

GROUP = "poison-values"
HOSTILE = [("gi_id", 2**31), ("gpu_index", 2**40), ("sm_count", 2**63), ("placement_start", -(2**31) - 1)]


def _hostile(snapshot_json: bytes, field: str, value: int) -> bytes:
    doc = json.loads(snapshot_json)
    if field == "gpu_index":
        doc[field] = value
    else:
        doc["instances"][0][field] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("field", "value"), HOSTILE)
def test_the_contract_refuses_integers_past_32_bits(field: str, value: int) -> None:
    snap = SimulatedFleet(hosts=1, gpus_per_host=1).read()[0]
    with pytest.raises(BadSnapshot, match=field):
        from_json(_hostile(snap.to_json(), field, value))


def test_an_unstorable_integer_is_dead_lettered_and_the_rest_is_exact(kafka_bootstrap: str, new_topic, fresh_db: str,
                                                                      tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    topic = new_topic(partitions=2)
    fleet = SimulatedFleet(seed=4, hosts=1, gpus_per_host=4)
    good = [s for _ in range(10) for s in fleet.read()]
    produce(kafka_bootstrap, topic, good[:20])
    extra = fleet.read()  # a later round: its snapshots are newer than everything above
    produce_raw(kafka_bootstrap, topic, [(s.key, _hostile(s.to_json(), f, v)) for s, (f, v) in zip(extra, HOSTILE)])
    produce(kafka_bootstrap, topic, good[20:])
    proc = spawn("process", processor_args(kafka_bootstrap, fresh_db, topic, GROUP, 0, "--stop-when-idle", "2"),
                 tmp_path)
    try:
        rc = proc.popen.wait(60)  # a stalled processor never becomes idle: this wait would time out
    finally:
        proc.kill()
    assert rc == 0, proc.tail()
    assert_same_totals(oracle(good), fresh_db)
    stored = stored_offsets(fresh_db, GROUP).values()
    assert sum(v[3] for v in stored) == len(HOSTILE)
    with psycopg.connect(fresh_db) as conn:
        reasons = sorted(r[0] for r in conn.execute("SELECT reason FROM dead_letters"))
    assert all("32-bit" in r for r in reasons), reasons
