"""One valid-looking snapshot with a value the warehouse cannot store (a GI id or GPU index
past 32 bits, a NUL or a lone surrogate in a string: a hostile or buggy producer) must be
dead-lettered, not stall the processor.

Before the contract refused these, the decoder accepted them, the database refused the batch
("integer out of range"), and the processor retried that batch forever: one message stopped
metering for every GPU behind it.
"""

from __future__ import annotations

import uuid
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

# Unique per run: consumer groups live on the broker, which concurrent test runs share.
GROUP = f"poison-values-{uuid.uuid4().hex[:8]}"
# (field, value, words of the reason): integers past 32 bits, and strings PostgreSQL's text
# cannot hold (a NUL) or UTF-8 cannot encode (a lone surrogate, legal in JSON's \\u escapes).
HOSTILE = [("gi_id", 2**31, "32-bit"), ("gpu_index", 2**40, "32-bit"), ("sm_count", 2**63, "32-bit"),
           ("placement_start", -(2**31) - 1, "32-bit"), ("host", "node\u0000x", "NUL"),
           ("namespace", "team-\ud800", "surrogate"), ("profile", "1g.10gb\u0000", "NUL")]
_TOP = {"gpu_index", "host"}


def _hostile(snapshot_json: bytes, field: str, value: object) -> bytes:
    doc = json.loads(snapshot_json)
    if field in _TOP:
        doc[field] = value
    elif field == "namespace":
        doc["instances"][0]["tenant"][field] = value
    else:
        doc["instances"][0][field] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("field", "value", "why"), HOSTILE)
def test_the_contract_refuses_values_the_warehouse_cannot_store(field: str, value: object, why: str) -> None:
    snap = SimulatedFleet(hosts=1, gpus_per_host=1, models=("A100-SXM4-80GB",)).read()[0]
    with pytest.raises(BadSnapshot, match=why):
        from_json(_hostile(snap.to_json(), field, value))


def test_an_unstorable_integer_is_dead_lettered_and_the_rest_is_exact(kafka_bootstrap: str, new_topic, fresh_db: str,
                                                                      tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    topic = new_topic(partitions=2)
    fleet = SimulatedFleet(seed=4, hosts=2, gpus_per_host=4)
    good = [s for _ in range(10) for s in fleet.read()]
    produce(kafka_bootstrap, topic, good[:20])
    extra = fleet.read()  # a later round: its snapshots are newer than everything above
    assert len(extra) >= len(HOSTILE)
    produce_raw(kafka_bootstrap, topic, [(s.key, _hostile(s.to_json(), f, v)) for s, (f, v, _) in zip(extra, HOSTILE)])
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
    assert sorted(why for _, _, why in HOSTILE) == sorted(
        next(w for w in ("32-bit", "NUL", "surrogate") if w in r) for r in reasons), reasons
