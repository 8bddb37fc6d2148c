"""The exactly-once sink: one folded batch -> one PostgreSQL transaction.

Exactly-once comes from storing the Kafka offsets in the same transaction as the data they
cover, and advancing them only by compare-and-set. :meth:`Sink.write` runs these steps:

1. Offsets compare-and-set, first (fail fast, and the row locks serialize two processors that
   both believe they own a partition): ``UPDATE sink_offsets ... WHERE partition = p AND
   next_offset = <where this batch started>``; a partition without a row is ``INSERT ... ON
   CONFLICT DO NOTHING``. Any row count other than 1 raises :class:`OffsetConflict`: another
   processor owns the partition now; the caller rolls back, re-reads offsets and re-seeks.
   That fences a stalled "zombie" processor.
   Then the GPU fence: the ``gpu_state`` rows of the GPUs this batch bills are locked
   (``SELECT ... FOR UPDATE``, in GPU order so two writers never deadlock) and their
   ``version`` compared with the one the batch was folded on. A GPU whose snapshots reach two
   partitions (an unkeyed producer, a topic whose partitions grew) can be held by two
   processors; a changed version raises :class:`StateConflict` (an OffsetConflict): roll back,
   re-read, re-fold. So no second is billed twice and ``last_ts`` never moves backward.
2. COPY the batch's 1-minute usage partials into per-connection TEMP staging tables. Tenant
   rows are staged from the staged instance rows (``INSERT ... SELECT``, one per instance
   row, by ``processor.aggregate.TENANT_FROM_INSTANCE``) next to the fold's corrections for
   shared instances: the processor never formats a second copy of a dense fleet's rows.
3. Merge them additively: ``INSERT ... SELECT FROM staging ON CONFLICT (key) DO UPDATE SET
   x = t.x + EXCLUDED.x`` (LEAST/GREATEST for min/max; attributes take the newer value),
   into the 1m tables (tenant rows grouped per key first), and the same staged rows grouped
   by hour and by day into the 1h and 1d tables (:meth:`TableSpec.rollup_sql`: sums add,
   min/max keep theirs, attributes are those of the latest minute). The column roles come
   from ``processor.aggregate``, so the fold, the rollups and the upserts merge alike;
   rolling up in the server spares the processor's one Python thread a second and third copy
   of every partial (README "Performance").
4. Append layout events; close and open instance intervals.
5. Upsert ``gpus`` and ``gpu_state`` (last ts, layout, billed time, version + 1). The state
   upsert applies only on top of the version the batch read (``WHERE t.version =
   excluded.version - 1``): a row inserted meanwhile by another processor makes the row
   count short -> StateConflict, as in step 1.
6. Record dead letters (the exactly-once record; the topic is only the notification).
7. COMMIT. If the commit's outcome is unknown (connection lost during COMMIT), the caller
   re-reads the offsets: they say whether it happened.

Any failure leaves the database as before the batch. Identifiers come only from the fixed
table specs below, never from input; values are always parameters or COPY data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from migmeter import settings
from migmeter.errors import SinkError
from processor.aggregate import (TENANT_FROM_INSTANCE, GpuKey, GpuSums, InstanceKey, InstanceSums, TenantKey,
                                 TenantSums)
from processor.fold import FoldedBatch
from processor.grains import FOLD_GRAIN, GRAINS, usage_table
from processor.layout import GpuState
from processor.refusals import is_data_refusal, refusal

__all__ = ["Sink", "OffsetConflict", "StateConflict", "DatabaseUnavailable", "TableSpec", "USAGE_TABLES",
           "DEAD_LETTER_PAYLOAD_MAX"]

log = logging.getLogger("migmeter.processor.sink")

# Keep enough of a rejected record to diagnose it, not a 256 KiB blob per row.
DEAD_LETTER_PAYLOAD_MAX = 4096
# A stuck lock or a runaway statement must not hang the processor forever; the batch is
# retried after a timeout like after any other failure.
STATEMENT_TIMEOUT_MS = 120_000
# SQLSTATE classes of a server that went away (connection exception, operator intervention such
# as admin shutdown): the database is unavailable, not refusing.
_UNAVAILABLE_CLASSES = ("08", "57")


class OffsetConflict(SinkError):
    """The stored offset of a partition is not where this batch started: another processor owns it."""


class StateConflict(OffsetConflict):
    """A GPU's stored state changed since the batch read it: another processor billed it meanwhile."""


class DatabaseUnavailable(SinkError):
    """The database could not be reached or the connection broke; the batch may be retried."""


@dataclass(frozen=True)
class TableSpec:
    """How one table merges: key columns, then columns by merge role."""

    name: str
    keys: tuple[str, ...]
    attrs: tuple[str, ...] = ()
    sums: tuple[str, ...] = ()
    mins: tuple[str, ...] = ()
    maxs: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return self.keys + self.attrs + self.sums + self.mins + self.maxs

    @property
    def stage(self) -> str:
        return f"_stage_{self.name}"

    def upsert_sql(self) -> sql.Composed:
        """Merge this table's staged rows into it."""
        cols = sql.SQL(", ").join(map(sql.Identifier, self.columns))
        return sql.SQL("INSERT INTO {table} AS t ({cols}) SELECT {cols} FROM {stage} {conflict}").format(
            table=sql.Identifier(self.name), cols=cols, stage=sql.Identifier(self.stage),
            conflict=self._on_conflict())

    def rollup_sql(self, finer: TableSpec, width_s: int) -> sql.Composed:
        """Merge ``finer``'s staged rows, grouped into buckets of ``width_s``, into this table.

        Both tables have the same columns, ``bucket`` first. Per group, by role: sums add
        (``sum``), min/max keep theirs (``min``/``max`` skip NULL, as the fold's do), attributes
        are those of the group's latest bucket (TimescaleDB's ``last(value, bucket)``; the
        buckets of one group are distinct, so it is well defined). Buckets are UTC-aligned like
        the fold's: ``date_bin`` from the Unix epoch.
        """
        if finer.columns != self.columns or self.keys[0] != "bucket":
            raise ValueError(f"{finer.name} does not roll up into {self.name}")
        bucket, other_keys = sql.Identifier("bucket"), list(map(sql.Identifier, self.keys[1:]))
        width = sql.Literal(f"{int(width_s)} seconds")
        values: list[sql.Composable] = [
            sql.SQL("date_bin({}::interval, {}, TIMESTAMPTZ 'epoch')").format(width, bucket), *other_keys]
        for role, func in ((self.attrs, "last({}, bucket)"), (self.sums, "sum({})"), (self.mins, "min({})"),
                           (self.maxs, "max({})")):
            values += [sql.SQL(func).format(sql.Identifier(c)) for c in role]
        return sql.SQL("INSERT INTO {table} AS t ({cols}) SELECT {values} FROM {stage} GROUP BY {groups} "
                       "{conflict}").format(
            table=sql.Identifier(self.name), cols=sql.SQL(", ").join(map(sql.Identifier, self.columns)),
            values=sql.SQL(", ").join(values), stage=sql.Identifier(finer.stage),
            groups=sql.SQL(", ").join([sql.SQL("1"), *other_keys]), conflict=self._on_conflict())

    def derive_sql(self, source: TableSpec) -> sql.Composed:
        """Stage one tenant row per staged ``source`` (instance) row: keys and attributes by name,
        sums by :data:`processor.aggregate.TENANT_FROM_INSTANCE` (a weighted one times
        ``slices / total_slices``, in the order :func:`processor.aggregate.tenant_rows` computes it)."""
        values: dict[str, sql.Composable] = {c: sql.Identifier(c) for c in self.keys + self.attrs}
        for tenant_col, instance_col, weighted in TENANT_FROM_INSTANCE:
            values[tenant_col] = sql.SQL("{} * {} / {}").format(
                sql.Identifier(instance_col), sql.Identifier("slices"), sql.Identifier("total_slices")
            ) if weighted else sql.Identifier(instance_col)
        needed = (*self.keys, *self.attrs, *(i for _, i, _ in TENANT_FROM_INSTANCE), "slices", "total_slices")
        missing = [c for c in self.columns if c not in values] + [c for c in needed if c not in source.columns]
        if missing or self.mins or self.maxs:
            raise ValueError(f"{self.name} cannot be derived from {source.name} (columns {missing})")
        return sql.SQL("INSERT INTO {stage} ({cols}) SELECT {values} FROM {source}").format(
            stage=sql.Identifier(self.stage), cols=sql.SQL(", ").join(map(sql.Identifier, self.columns)),
            values=sql.SQL(", ").join(values[c] for c in self.columns), source=sql.Identifier(source.stage))

    def _on_conflict(self) -> sql.Composed:
        """``ON CONFLICT (keys) DO UPDATE``: each column merged by its role."""
        t, ex = sql.Identifier("t"), sql.Identifier("excluded")

        def col(table: sql.Identifier, c: str) -> sql.Composable:
            return sql.SQL("{}.{}").format(table, sql.Identifier(c))

        sets: list[sql.Composable] = []
        for c in self.attrs:
            sets.append(sql.SQL("{} = {}").format(sql.Identifier(c), col(ex, c)))
        for c in self.sums:
            sets.append(sql.SQL("{} = {} + {}").format(sql.Identifier(c), col(t, c), col(ex, c)))
        for c in self.mins:
            sets.append(sql.SQL("{} = LEAST({}, {})").format(sql.Identifier(c), col(t, c), col(ex, c)))
        for c in self.maxs:
            sets.append(sql.SQL("{} = GREATEST({}, {})").format(sql.Identifier(c), col(t, c), col(ex, c)))
        return sql.SQL("ON CONFLICT ({keys}) DO UPDATE SET {sets}").format(
            keys=sql.SQL(", ").join(map(sql.Identifier, self.keys)), sets=sql.SQL(", ").join(sets))


def _usage_spec(name: str, key_type: Any, sums_type: Any) -> TableSpec:
    return TableSpec(name, tuple(key_type._fields), sums_type.ATTRS, sums_type.SUMS, sums_type.MINS, sums_type.MAXS)


# (grain, table, which Aggregates dict of the batch feeds it) for every grain; order = write order.
USAGE_TABLES: tuple[tuple[str, TableSpec, str], ...] = tuple(
    (grain, spec, attr)
    for grain in GRAINS
    for spec, attr in (
        (_usage_spec(usage_table("instance_usage", grain), InstanceKey, InstanceSums), "instances"),
        (_usage_spec(usage_table("tenant_usage", grain), TenantKey, TenantSums), "tenants"),
        (_usage_spec(usage_table("gpu_usage", grain), GpuKey, GpuSums), "gpus"),
    )
)
# Per family: (the fold grain's table, its Aggregates dict, ((grain, width, coarser table), ...)).
_USAGE_FAMILIES: tuple[tuple[TableSpec, str, tuple[tuple[str, int, TableSpec], ...]], ...] = tuple(
    (fine, attr, tuple((grain, GRAINS[grain], spec) for grain, spec, a in USAGE_TABLES
                       if a == attr and grain != FOLD_GRAIN))
    for g, fine, attr in USAGE_TABLES if g == FOLD_GRAIN
)
# Families whose staged rows are derived from another's (Aggregates dict -> the source's):
# tenant rows from instance rows (processor.aggregate.TENANT_FROM_INSTANCE).
_DERIVED_FROM = {"tenants": "instances"}
_GPUS = TableSpec("gpus", ("gpu_uuid",), ("cluster", "host", "gpu_index", "gpu_model", "total_slices", "mig_enabled"),
                  mins=("first_seen",), maxs=("last_seen",))
_GPU_STATE = TableSpec("gpu_state", ("gpu_uuid",),
                       ("last_ts", "mig_enabled", "layout", "source_partition", "source_offset", "updated_at",
                        "billed", "version", "feed"))
_LOCK_STATES = "SELECT gpu_uuid, version FROM gpu_state WHERE gpu_uuid = ANY(%s) ORDER BY gpu_uuid FOR UPDATE"
_INTERVAL_COLUMNS = ("gpu_uuid", "gi_id", "cluster", "profile", "slices", "total_slices", "namespace", "pod",
                     "container", "valid_from", "valid_to", "placement_start")
_EVENT_COLUMNS = ("ts", "gpu_uuid", "cluster", "event", "gi_id", "before", "after", "source_partition",
                  "source_offset")

_CAS_UPDATE = """
UPDATE sink_offsets
   SET next_offset = %(next)s, snapshots = snapshots + %(snapshots)s, duplicates = duplicates + %(duplicates)s,
       dead_letters = dead_letters + %(dead)s, trimmed = trimmed + %(trimmed)s,
       trimmed_seconds = trimmed_seconds + %(trimmed_s)s, updated_at = now()
 WHERE consumer_group = %(group)s AND topic = %(topic)s AND partition = %(partition)s AND next_offset = %(expected)s
"""
_CAS_INSERT = """
INSERT INTO sink_offsets (consumer_group, topic, partition, next_offset, snapshots, duplicates, dead_letters,
                          trimmed, trimmed_seconds)
VALUES (%(group)s, %(topic)s, %(partition)s, %(next)s, %(snapshots)s, %(duplicates)s, %(dead)s,
        %(trimmed)s, %(trimmed_s)s)
ON CONFLICT DO NOTHING
"""
# Close the open interval of each (gpu, gi): ended by a layout change, or superseded by a
# newly opened one (defensive: if state and intervals ever disagreed, the unique index on open
# intervals would otherwise fail every retry of the batch).
_CLOSE_INTERVALS = """
UPDATE instance_intervals AS iv SET valid_to = v.ts
  FROM (SELECT * FROM unnest(%s::text[], %s::int[], %s::timestamptz[])) AS v(gpu_uuid, gi_id, ts)
 WHERE iv.gpu_uuid = v.gpu_uuid AND iv.gi_id = v.gi_id AND iv.valid_to IS NULL AND iv.valid_from <= v.ts
"""
_INSERT_DEAD_LETTER = """
INSERT INTO dead_letters (topic, partition, "offset", consumer_group, reason, key, payload, payload_bytes)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING
"""


class Sink:
    """Writes folded batches for one consumer group into one database; owns one connection."""

    def __init__(self, url: str, consumer_group: str, connect_timeout_s: float = 10.0,
                 grains: Sequence[str] = tuple(GRAINS)) -> None:
        """``grains``: the usage grains written (default all); the 1-minute partials are staged
        either way, since the coarser grains are rolled up from them."""
        unknown = set(grains) - set(GRAINS)
        if unknown:
            raise ValueError(f"unknown grains {sorted(unknown)}; known: {list(GRAINS)}")
        self.url = url
        self.consumer_group = consumer_group
        self.connect_timeout_s = connect_timeout_s
        # Per family: the staged table, its Aggregates dict, the statement that stages rows
        # derived from another family's (or None), and the statements (composed once) that merge
        # the staged rows into the family's tables of ``grains``: [(table, SQL), ...]. Derived
        # rows repeat a key (a tenant's instances), so their 1m merge groups them first.
        fine_of = {attr: fine for fine, attr, _ in _USAGE_FAMILIES}
        self._families: list[tuple[TableSpec, str, sql.Composed | None, list[tuple[str, sql.Composed]]]] = []
        for fine, attr, coarser in _USAGE_FAMILIES:
            source = _DERIVED_FROM.get(attr)
            derive = fine.derive_sql(fine_of[source]) if source else None
            merge = fine.rollup_sql(fine, GRAINS[FOLD_GRAIN]) if derive is not None else fine.upsert_sql()
            merges = [(fine.name, merge)] if FOLD_GRAIN in grains else []
            merges += [(spec.name, spec.rollup_sql(fine, width)) for grain, width, spec in coarser if grain in grains]
            self._families.append((fine, attr, derive, merges))
        self._conn: psycopg.Connection[Any] | None = None
        self._ts_cache: dict[int, datetime] = {}
        # Staging table -> type names of the COPY columns, for binary COPY (read per connection).
        self._stage_types: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"Sink({settings.redact_url(self.url)!r}, group={self.consumer_group!r})"

    # -- connection ------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        self._conn = None
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = psycopg.connect(self.url, connect_timeout=max(1, int(self.connect_timeout_s)),
                                   application_name="migmeter-process")
            with conn.transaction():
                conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(STATEMENT_TIMEOUT_MS)))
                # Asynchronous commit: COMMIT returns before the WAL is flushed. A server crash
                # can lose the last batches' commits, but a batch and its offsets are one
                # transaction, so they vanish together and the batch is consumed again (README
                # "Performance"); never a half batch, never a batch twice.
                conn.execute("SET synchronous_commit = off")
                for spec in _staged_specs():
                    conn.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) "
                                         "ON COMMIT DELETE ROWS").format(sql.Identifier(spec.stage),
                                                                         sql.Identifier(spec.name)))
                    self._stage_types[spec.stage] = _column_types(conn, spec)
        except psycopg.Error as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, psycopg.OperationalError):
                raise DatabaseUnavailable(
                    f"cannot connect to {settings.redact_url(self.url)}: {settings.database_error(exc, self.url)}") from None
            raise SinkError(f"preparing the connection failed: {_first_line(exc)}") from None
        log.info("connected to %s", settings.redact_url(self.url))
        self._conn = conn
        return conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _discard(self) -> None:
        """Drop a connection in an unknown state; the next call reconnects."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    # -- reads -----------------------------------------------------------------------------

    def read_offsets(self, topic: str, partitions: Iterable[int]) -> dict[int, int | None]:
        """Stored next offset per partition (None = this group never committed it)."""
        parts = sorted(set(partitions))
        rows = self._read(
            "SELECT partition, next_offset FROM sink_offsets WHERE consumer_group = %s AND topic = %s "
            "AND partition = ANY(%s)", (self.consumer_group, topic, parts))
        stored: dict[int, int | None] = dict.fromkeys(parts)
        stored.update({int(p): int(o) for p, o in rows})
        return stored

    def load_states(self, gpu_uuids: Iterable[str]) -> dict[str, GpuState]:
        """Stored state of these GPUs; GPUs never seen are absent from the result."""
        uuids = list(gpu_uuids)
        if not uuids:
            return {}
        rows = self._read("SELECT gpu_uuid, last_ts, mig_enabled, layout, source_partition, source_offset, "
                          "billed, version, feed FROM gpu_state WHERE gpu_uuid = ANY(%s)", (uuids,))
        return {r[0]: GpuState.from_row(*r[1:]) for r in rows}

    def _read(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        conn = self._connection()
        with self._database_errors("reading failed", "reading failed"):
            with conn.transaction():
                rows = conn.execute(query, params).fetchall()
        return rows

    @contextlib.contextmanager
    def _database_errors(self, unavailable: str, refused: str) -> Iterator[None]:
        """Map psycopg failures to the sink's errors; a broken connection is dropped either way.

        Lost connection / server gone (no SQLSTATE, class 08 or 57) -> DatabaseUnavailable (retry
        after backoff); anything else the server refused -> DataRefused or SystemRefused by its
        SQLSTATE (``processor.refusals``). Our own errors (OffsetConflict) pass through untouched.
        """
        try:
            yield
        except psycopg.Error as exc:
            state = exc.sqlstate
            if is_data_refusal(state):
                # The transaction was rolled back and the connection is sound: keep it, since
                # bisecting a batch may meet many refusals in a row.
                raise refusal(refused, _first_line(exc), state or "") from None
            self._discard()
            if isinstance(exc, psycopg.OperationalError) and (not state or state[:2] in _UNAVAILABLE_CLASSES):
                raise DatabaseUnavailable(f"{unavailable}: {_first_line(exc)}") from None
            if state:
                raise refusal(refused, _first_line(exc), state) from None
            raise SinkError(f"{refused}: {_first_line(exc)}") from None

    # -- the batch transaction -------------------------------------------------------------

    def write(self, batch: FoldedBatch) -> dict[str, int]:
        """Write ``batch`` in one transaction; returns rows merged per table.

        Raises OffsetConflict (nothing written; re-read offsets and re-seek), DatabaseUnavailable
        (nothing written, or the commit outcome is unknown: re-read offsets before going on)
        or DataRefused / SystemRefused (the database refused the batch; ``processor.refusals``).
        """
        conn = self._connection()
        rows: dict[str, int] = {}
        with self._database_errors("batch not written (or commit outcome unknown)", "database refused the batch"):
            with conn.transaction():
                with conn.cursor() as cur:
                    # Step 1: offsets compare-and-set, then the GPU fence.
                    self._advance_offsets(cur, batch)
                    self._fence_states(cur, batch)
                    # Steps 2-3: COPY the 1-minute partials into staging, merge them additively
                    # into the 1m tables and, grouped by hour and day, into the 1h and 1d tables.
                    for fine, attr, derive, merges in self._families:
                        parts = getattr(batch.aggregates, attr)
                        staged = bool(parts)
                        if parts:
                            self._copy(cur, fine.stage, fine.columns, _usage_rows(parts, fine, self._bucket_ts),
                                       self._stage_types[fine.stage])
                        if derive is not None:
                            cur.execute(derive)
                            staged = staged or cur.rowcount > 0
                        if not staged:
                            continue
                        for table, statement in merges:
                            cur.execute(statement)
                            rows[table] = cur.rowcount
                    # Step 4: layout events and intervals.
                    if batch.events:
                        self._copy(cur, "layout_events", _EVENT_COLUMNS, (
                            (e.ts, e.gpu_uuid, e.cluster, e.event, e.gi_id, _json(e.before), _json(e.after),
                             e.source_partition, e.source_offset) for e in batch.events))
                        rows["layout_events"] = len(batch.events)
                    if batch.intervals:
                        rows["instance_intervals"] = self._write_intervals(cur, batch)
                    # Step 5: GPUs and their state.
                    if batch.gpus:
                        rows["gpus"] = self._merge(cur, _GPUS, (
                            (u, g.cluster, g.host, g.gpu_index, g.gpu_model, g.total_slices, g.mig_enabled,
                             g.first_seen, g.last_seen) for u, g in batch.gpus.items()))
                    if batch.states:
                        rows["gpu_state"] = self._write_states(cur, batch)
                    # Step 6: dead letters, exactly once.
                    if batch.dead_letters:
                        cur.executemany(_INSERT_DEAD_LETTER, [
                            (d.topic, d.partition, d.offset, self.consumer_group, d.reason[:1000], d.key,
                             d.payload[:DEAD_LETTER_PAYLOAD_MAX], len(d.payload)) for d in batch.dead_letters])
                        rows["dead_letters"] = len(batch.dead_letters)
            # Step 7: the commit happened when the transaction block exited without error.
        return rows

    def _advance_offsets(self, cur: psycopg.Cursor[Any], batch: FoldedBatch) -> None:
        for (topic, partition), p in sorted(batch.progress.items()):
            params = {"group": self.consumer_group, "topic": topic, "partition": partition, "next": p.next_offset,
                      "expected": p.expected, "snapshots": p.snapshots, "duplicates": p.duplicates,
                      "dead": p.dead_letters, "trimmed": p.trimmed, "trimmed_s": p.trimmed_seconds}
            cur.execute(_CAS_UPDATE if p.expected is not None else _CAS_INSERT, params)
            if cur.rowcount != 1:
                raise OffsetConflict(
                    f"{topic}[{partition}]: stored offset is no longer "
                    f"{'absent' if p.expected is None else p.expected}; another processor owns the partition")

    @staticmethod
    def _fence_states(cur: psycopg.Cursor[Any], batch: FoldedBatch) -> None:
        if not batch.states:
            return
        cur.execute(_LOCK_STATES, (sorted(batch.states),))
        for uuid, version in cur.fetchall():
            if version != batch.states[uuid].version - 1:
                raise StateConflict(f"GPU {uuid}: stored state is at version {version}, the batch read "
                                    f"{batch.states[uuid].version - 1}; another processor billed it meanwhile")

    def _write_states(self, cur: psycopg.Cursor[Any], batch: FoldedBatch) -> int:
        n = self._copy(cur, _GPU_STATE.stage, _GPU_STATE.columns, (
            (u, s.last_ts, s.mig_enabled, Jsonb(s.layout_json()), s.source_partition, s.source_offset, _now(),
             Jsonb(s.billed), s.version, s.feed) for u, s in batch.states.items()),
            self._stage_types[_GPU_STATE.stage])
        cur.execute(_GPU_STATE.upsert_sql() + sql.SQL(" WHERE t.version = excluded.version - 1"))
        if cur.rowcount != n:
            raise StateConflict(f"{n - cur.rowcount} of {n} GPU states were written by another processor meanwhile")
        return n

    def _merge(self, cur: psycopg.Cursor[Any], spec: TableSpec, rows: Iterable[Sequence[Any]]) -> int:
        n = self._copy(cur, spec.stage, spec.columns, rows, self._stage_types[spec.stage])
        cur.execute(spec.upsert_sql())
        return n

    @staticmethod
    def _copy(cur: psycopg.Cursor[Any], table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
              binary_types: list[str] | None = None) -> int:
        """COPY rows in; binary when the column types are known (the hot tables: less to format
        here and to parse on the server), text otherwise."""
        n = 0
        stmt = sql.SQL("COPY {} ({}) FROM STDIN{}").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.SQL(" (FORMAT BINARY)" if binary_types else ""))
        with cur.copy(stmt) as copy:
            if binary_types:
                copy.set_types(binary_types)
            write = copy.write_row
            for row in rows:
                write(row)
                n += 1
        return n

    def _write_intervals(self, cur: psycopg.Cursor[Any], batch: FoldedBatch) -> int:
        book = batch.intervals
        closes = dict(book.closes)
        for iv in book.opened:
            closes.setdefault((iv.gpu_uuid, iv.gi_id), iv.valid_from)
        if closes:
            keys = list(closes)
            cur.execute(_CLOSE_INTERVALS, ([k[0] for k in keys], [k[1] for k in keys], list(closes.values())))
        n = cur.rowcount if closes else 0
        if book.opened:
            n += self._copy(cur, "instance_intervals", _INTERVAL_COLUMNS, (
                (iv.gpu_uuid, iv.gi_id, iv.cluster, iv.profile, iv.slices, iv.total_slices, iv.namespace, iv.pod,
                 iv.container, iv.valid_from, iv.valid_to, iv.placement_start) for iv in book.opened))
        return n

    def _bucket_ts(self, epoch_s: int) -> datetime:
        ts = self._ts_cache.get(epoch_s)
        if ts is None:
            if len(self._ts_cache) > 100_000:  # a long-running process sees ever new buckets
                self._ts_cache.clear()
            ts = self._ts_cache[epoch_s] = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
        return ts


def _staged_specs() -> Iterator[TableSpec]:
    for fine, _, _ in _USAGE_FAMILIES:
        yield fine
    yield _GPUS
    yield _GPU_STATE


def _column_types(conn: psycopg.Connection[Any], spec: TableSpec) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
        (spec.stage,)).fetchall()
    types = dict(rows)
    missing = [c for c in spec.columns if c not in types]
    if missing:
        raise SinkError(f"table {spec.name} lacks columns {missing}: is the schema migrated?")
    return [types[c] for c in spec.columns]


def _usage_rows(parts: dict[Any, Any], spec: TableSpec, bucket_ts: Any) -> Iterator[tuple[Any, ...]]:
    values = operator.attrgetter(*spec.columns[len(spec.keys):])  # one C call per row, not one per column
    for key, sums in parts.items():
        yield (bucket_ts(key[0]), *key[1:], *values(sums))


def _json(obj: dict[str, Any] | None) -> str | None:
    return None if obj is None else json.dumps(obj, separators=(",", ":"))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else exc.__class__.__name__
