"""Property-based: the decoder is total *for the warehouse*, not only for itself.

Whatever a hostile producer puts into a snapshot (times at the edge of the calendar with
±14:00 offsets, integers of hundreds of digits, four-byte characters, NULs, lone
surrogates), :func:`collector.snapshot.from_json` either raises ``BadSnapshot`` (a dead
letter, whose reason must itself be storable) or returns a snapshot that the processor's
real fold and the sink's real row builders and COPY encoders turn into bytes without an
error. Before the contract bounded them, a 400-digit ``fb_used_mib`` decoded fine and then
failed inside binary COPY in the writer thread, crashing every processor of the group in turn.

The sink runs its own ``write()`` (every step, every row builder) against a capturing
connection: COPY data is encoded by psycopg's real ``Copy`` into a buffer, other statements
are rendered client-side with their parameters; nothing reaches the server per example. The
column types for binary COPY are read once from a migrated database, as the sink does.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.copy import Copy, FileWriter

from collector.snapshot import MAX_TEXT_BYTES, Snapshot, from_json
from collector.sources.simulate import SimulatedFleet
from migmeter.errors import BadSnapshot
from processor.fold import DEAD_LETTER, MERGED, BatchFold
from processor.layout import IntervalBook, diff_layout
from processor.sink import Sink

pytestmark = pytest.mark.integration  # the binary COPY column types come from a migrated database

TOPIC = "prop.decode"
# Big enough to find the classes of bad values below in every run, small enough for ~20 s.
EXAMPLES = 400


class _CaptureCursor:
    """What ``Sink.write`` needs of a cursor: COPY goes through a real ``psycopg.copy.Copy`` into
    ``buffer`` (the real encoders), statements are rendered with their parameters by a client-side
    cursor (the real parameter dumpers); every statement "affects" one row."""

    def __init__(self, conn: psycopg.Connection[Any], buffer: io.BytesIO) -> None:
        self._conn, self._buffer = conn, buffer
        self._render = psycopg.ClientCursor(conn)
        self.rowcount = 1

    def __enter__(self) -> _CaptureCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._render.close()

    def execute(self, query: Any, params: Any = None) -> None:
        self._buffer.write(self._render.mogrify(query, params).encode())
        self.rowcount = 1

    def fetchall(self) -> list[tuple[Any, ...]]:
        # The only read in ``Sink.write`` is the per-GPU state fence (step 1): every GPU here is
        # new (the fold starts from no stored state), so no state row exists to lock.
        return []

    def executemany(self, query: Any, seq: Any) -> None:
        for params in seq:
            self.execute(query, params)

    def copy(self, statement: Any) -> Copy:
        binary = "FORMAT BINARY" in statement.as_string(self._conn)
        return Copy(self._conn.cursor(), binary=binary, writer=FileWriter(self._buffer))


class _CaptureConnection:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self.buffer = io.BytesIO()
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def cursor(self) -> _CaptureCursor:
        return _CaptureCursor(self._conn, self.buffer)


@pytest.fixture
def capturing_sink(fresh_db: str) -> Iterator[tuple[Sink, psycopg.Connection[Any]]]:
    sink = Sink(fresh_db, "prop")
    sink.read_offsets(TOPIC, [0])  # connects for real once: staging tables and their column types
    real = sink._conn
    try:
        with psycopg.connect(fresh_db) as conn:
            yield sink, conn
    finally:
        sink._conn = real
        sink.close()


# -- strategies ---------------------------------------------------------------------------------

_BASE = json.loads(SimulatedFleet(seed=3, hosts=1, gpus_per_host=1, models=("A100-SXM4-80GB",)).read()[0].to_json())
_HUGE = st.integers(min_value=-(10**400), max_value=10**400)
_int_like = st.one_of(st.integers(-3, 9), st.integers(-(2**64), 2**64), _HUGE)
_number = st.one_of(st.floats(0, 1), st.floats(allow_nan=False, allow_infinity=False), st.integers(0, 2**60),
                    _HUGE, st.sampled_from([0, 1, 2**53, 2**53 + 1, 1e308, 5e-324, -0.0]))
# Every offset PostgreSQL and ISO-8601 allow (±14:00), any year Python can write.
_offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
_ts = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59), timezones=_offsets)
    .map(lambda d: d.isoformat()),
    st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1970-01-01T00:00:00Z",
                     "9998-12-31T23:59:59.999Z", "2026-11-03T12:00:00.000Z"]),
)
# Labels: plain, four-byte characters up to and past the limits, NUL, lone surrogates.
_label = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.sampled_from(["\U0001F600", "\U00010348", "é", "a"]), min_size=100, max_size=300),
    st.text(st.characters(codec=None, categories=None), max_size=40),
    st.sampled_from(["", "x" * 256, "x" * 257, "\U0001F600" * 128, "\U0001F600" * 129, "é" * 256, "a\x00b"]),
)
_maybe = st.booleans()


@st.composite
def hostile_snapshots(draw: st.DrawFn) -> bytes:
    """The base snapshot with some fields replaced by hostile values (most stay valid, so many
    examples decode and reach the encoders)."""
    doc = json.loads(json.dumps(_BASE))
    doc["gpu_uuid"] = "GPU-" + draw(st.text("0123456789abcdef", min_size=8, max_size=8))
    if draw(_maybe):
        doc["ts"] = draw(_ts)
    if draw(_maybe):
        doc["interval_s"] = draw(_number)
    for key in ("host", "cluster", "gpu_model", "source"):
        if draw(st.integers(0, 3)) == 0:
            doc[key] = draw(_label)
    if draw(st.integers(0, 3)) == 0:
        doc["gpu_index"] = draw(_int_like)
    for inst in doc["instances"]:
        if draw(st.integers(0, 2)) == 0:
            inst["metrics"][draw(st.sampled_from(["gr_engine_active", "sm_active", "fb_used_mib", "fb_free_mib"]))] = \
                draw(_number)
        if draw(st.integers(0, 2)) == 0:
            inst["tenant"][draw(st.sampled_from(["namespace", "pod", "container"]))] = draw(_label)
        if draw(st.integers(0, 3)) == 0:
            inst[draw(st.sampled_from(["gi_id", "sm_count", "placement_start"]))] = draw(_int_like)
        if draw(st.integers(0, 3)) == 0:
            inst[draw(st.sampled_from(["profile", "mem_total_mib"]))] = draw(st.one_of(_label, _number))
    return json.dumps(doc).encode()


# -- the property -------------------------------------------------------------------------------


def _write(sink: Sink, conn: psycopg.Connection[Any], data: bytes) -> tuple[str, Snapshot | BadSnapshot]:
    """Decode, fold and write one record as the processor does; returns the fold's verdict."""
    try:
        snap: Snapshot | BadSnapshot = from_json(data)
    except BadSnapshot as exc:
        snap = exc
    states = {}
    if isinstance(snap, Snapshot):
        # A previous snapshot of the GPU (a plain, valid one), so the layout diff emits events too.
        before = replace(from_json(json.dumps(_BASE).encode()), gpu_uuid=snap.gpu_uuid,
                         ts=snap.ts - timedelta(minutes=1))
        states[snap.gpu_uuid] = diff_layout(None, before, IntervalBook())[1]
    # The processor's clock is the snapshot's own time: no clock rule may hide a bad value.
    now = snap.ts.timestamp() if isinstance(snap, Snapshot) else 0.0
    fold = BatchFold(states=states, stored_offsets={(TOPIC, 0): 0}, clock=lambda: now, max_age_s=0)
    key = snap.key if isinstance(snap, Snapshot) else b"GPU-unknown"  # keyed by GPU UUID, as collectors do
    verdict = fold.add(TOPIC, 0, 0, key, data, snap)
    capture = _CaptureConnection(conn)
    sink._conn = capture  # type: ignore[assignment]  # the one seam: the sink's connection
    sink.write(fold.finish())
    assert capture.buffer.getvalue(), "nothing was encoded"
    return verdict, snap


def test_hostile_snapshots_decode_into_storable_rows_or_dead_letters(capturing_sink) -> None:  # type: ignore[no-untyped-def]
    sink, conn = capturing_sink
    seen: dict[str, int] = {MERGED: 0, DEAD_LETTER: 0}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(hostile_snapshots())
    def prop(data: bytes) -> None:
        verdict, snap = _write(sink, conn, data)
        seen[verdict] += 1
        if isinstance(snap, Snapshot):
            assert verdict == MERGED
            labels = [snap.gpu_uuid] + [v for i in snap.instances for v in (i.profile, i.tenant.namespace, i.tenant.pod)]
            assert all(len(v.encode()) <= MAX_TEXT_BYTES for v in labels)
        else:
            assert verdict == DEAD_LETTER and snap.reason

    prop()
    # The generator must exercise both outcomes, or the property proves nothing.
    assert seen[MERGED] > EXAMPLES // 10 and seen[DEAD_LETTER] > EXAMPLES // 10, seen


@pytest.mark.parametrize("field, value, why", [
    ("ts", "0001-01-01T00:00:00+14:00", "outside"),
    ("ts", "9999-12-31T23:59:59-14:00", "outside"),
    ("interval_s", 10**400 - 1, "interval_s"),
    ("fb_used_mib", 10**400 - 1, "fb_used_mib"),
    ("namespace", "\U0001F600" * 256, "bytes"),
])
def test_the_values_of_issue_18_are_dead_letters(capturing_sink, field: str, value: object,  # type: ignore[no-untyped-def]
                                                 why: str) -> None:
    """Each crashed the processor (OverflowError in decoding, DataError in the writer's COPY)."""
    sink, conn = capturing_sink
    doc = json.loads(json.dumps(_BASE))
    if field in doc:
        doc[field] = value
    elif field == "namespace":
        doc["instances"][0]["tenant"][field] = value
    else:
        doc["instances"][0]["metrics"][field] = value
    verdict, snap = _write(sink, conn, json.dumps(doc).encode())
    assert verdict == DEAD_LETTER
    assert isinstance(snap, BadSnapshot) and why in snap.reason
    assert len(snap.reason) < 200, snap.reason  # a 400-digit number is not echoed in full
