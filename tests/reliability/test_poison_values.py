"""One valid-looking snapshot with a value the warehouse cannot store (a GI id or GPU index
past 32 bits, a NUL or a lone surrogate in a string, a time past the calendar's edge once in
UTC, an integer of 400 digits, labels whose UTF-8 overflows the btree index: a hostile or
buggy producer) must be dead-lettered, not stall or crash the processor.

Before the contract refused these, the decoder accepted them, the database refused the batch
("integer out of range", "index row size 3136 exceeds maximum 2704"), and the processor
retried that batch forever: one message stopped metering for every GPU behind it. Worse, a
``ts`` of ``0001-01-01T00:00:00+14:00`` or a 400-digit ``interval_s`` raised OverflowError in
the decoder, and a 400-digit ``fb_used_mib`` failed inside binary COPY: the processor exited,
its partitions moved to the next processor of the group, which died the same way (issue 18).
"""

from __future__ import annotations

import random
import uuid
import json
from pathlib import Path

import msgspec
import psycopg
import pytest

from dataclasses import replace

from collector.snapshot import MAX_TEXT_BYTES, Tenant, from_json
from collector.sources.simulate import SimulatedFleet
from migmeter.errors import BadSnapshot
from tests.fix_faults import assert_same_totals, oracle, produce, produce_raw, start_processor, stored_offsets
from tests.integration.feed import feed

pytestmark = pytest.mark.integration

# Unique per run: consumer groups live on the broker, which concurrent test runs share.
GROUP = f"poison-values-{uuid.uuid4().hex[:8]}"
# (field, value, words of the reason): integers past 32 bits, and strings PostgreSQL's text
# cannot hold (a NUL) or UTF-8 cannot encode (a lone surrogate, legal in JSON's \\u escapes).
HOSTILE = [("gi_id", 2**31, "32-bit"), ("gpu_index", 2**40, "32-bit"), ("sm_count", 2**63, "32-bit"),
           ("placement_start", -(2**31) - 1, "32-bit"), ("host", "node\u0000x", "NUL"),
           ("namespace", "team-\ud800", "surrogate"), ("profile", "1g.10gb\u0000", "NUL"),
           # issue 18: UTC before year 1 / after 9999, 400-digit integers, 256 four-byte characters
           ("ts", "0001-01-01T00:00:00+14:00", "is outside 1970"), ("ts", "9999-12-31T23:59:59-14:00", "is outside 1970"),
           ("interval_s", 10**400 - 1, "interval_s="), ("fb_used_mib", 10**400 - 1, "fb_used_mib="),
           ("namespace", "\U0001F600" * 256, "bytes of UTF-8")]
_TOP = {"gpu_index", "host", "ts", "interval_s"}
_WHY = ("32-bit", "NUL", "surrogate", "is outside 1970", "interval_s=", "fb_used_mib=", "bytes of UTF-8")


def _hostile(snapshot_json: bytes, field: str, value: object) -> bytes:
    doc = json.loads(snapshot_json)
    if field in _TOP:
        doc[field] = value
    elif field == "namespace":
        doc["instances"][0]["tenant"][field] = value
    elif field == "fb_used_mib":
        doc["instances"][0]["metrics"][field] = value
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
    extra = fleet.read() + fleet.read()  # later rounds: their snapshots are newer than everything above
    assert len(extra) >= len(HOSTILE)
    produce_raw(kafka_bootstrap, topic, [(s.key, _hostile(s.to_json(), f, v)) for s, (f, v, _) in zip(extra, HOSTILE)])
    produce(kafka_bootstrap, topic, good[20:])
    proc = start_processor(kafka_bootstrap, fresh_db, topic, GROUP, tmp_path, "--stop-when-idle", "2")
    try:
        rc = proc.popen.wait(180)  # a stalled processor never becomes idle: this wait would time out
    finally:
        proc.kill()
    assert rc == 0, proc.tail()
    assert_same_totals(oracle(good), fresh_db)
    stored = stored_offsets(fresh_db, GROUP).values()
    assert sum(v[3] for v in stored) == len(HOSTILE)
    with psycopg.connect(fresh_db) as conn:
        reasons = sorted(r[0] for r in conn.execute("SELECT reason FROM dead_letters"))
    assert sorted(why for _, _, why in HOSTILE) == sorted(
        next(w for w in _WHY if w in r) for r in reasons), reasons


def test_labels_at_the_byte_limit_are_stored(fresh_db: str) -> None:
    """The bound must be one the index really holds: gpu_uuid, profile, namespace and pod (the
    key of instance_usage_*) each at MAX_TEXT_BYTES of random four-byte characters (which do
    not compress, so the index entry is as large as it gets) merge at every grain."""
    rng = random.Random(18)

    def label(prefix: str) -> str:  # CJK Extension B: four bytes each in UTF-8
        text = prefix + "".join(chr(rng.randrange(0x20000, 0x2A6DF)) for _ in range(MAX_TEXT_BYTES // 4))
        while len(text.encode()) > MAX_TEXT_BYTES:
            text = text[:-1]
        return text

    snap = SimulatedFleet(seed=5, hosts=1, gpus_per_host=1, models=("A100-SXM4-80GB",)).read()[0]
    inst = snap.instances[0]
    big = replace(snap, gpu_uuid=label("GPU-"), host=label("h"), cluster=label("c"), instances=(
        msgspec.structs.replace(inst, profile=label("1g"), tenant=Tenant(label("ns"), label("pod"), label("ctr"))),
        *snap.instances[1:]))
    decoded = from_json(big.to_json())  # the contract accepts it...
    # each within one four-byte character of the limit ("GPU-" + 127 x 4 bytes = 512 exactly)
    assert all(MAX_TEXT_BYTES - 4 < len(v.encode()) <= MAX_TEXT_BYTES for v in (
        decoded.gpu_uuid, decoded.instances[0].profile, decoded.instances[0].tenant.namespace,
        decoded.instances[0].tenant.pod))
    rows = feed(fresh_db, [decoded])  # ... and the warehouse stores it
    # 1m/1h/1d each: one row per instance of the snapshot
    assert rows["instance_usage_1m"] == rows["instance_usage_1d"] == len(snap.instances), rows
    with psycopg.connect(fresh_db) as conn:
        stored = conn.execute("SELECT namespace, pod FROM instance_usage_1d WHERE gpu_uuid = %s AND gi_id = %s",
                              (decoded.gpu_uuid, inst.gi_id)).fetchall()
    assert stored == [(decoded.instances[0].tenant.namespace, decoded.instances[0].tenant.pod)]
