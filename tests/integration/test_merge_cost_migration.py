"""Migration 035 (issue 13): the 1h/1d usage tables leave room for updates on their pages, the
1m instance and tenant tables keep only their primary key, no usage table keeps the default
(bucket DESC) index; on a warehouse that already has chunks, and for chunks made later."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from processor.fold import BatchFold
from processor.sink import Sink
from tests.integration.test_migrate import empty_db, migrate_before  # noqa: F401 - fixture
from tests.processor.build import at, inst, mig
from warehouse.migrate import migrate

pytestmark = pytest.mark.integration

_FAMILIES = ("instance_usage", "tenant_usage", "gpu_usage")


def _write(url: str, seconds: range, first_offset: int) -> None:
    sink = Sink(url, "g")
    try:
        fold = BatchFold(sink.load_states({"GPU-a"}), {("t", 0): sink.read_offsets("t", [0])[0]})
        for i, t in enumerate(seconds):
            s = mig(at(t), [inst(0, "3g.40gb", 0.5, "ns", "p"), inst(1, "4g.40gb", 0.25)])
            fold.add("t", 0, first_offset + i, s.key, None, s)
        sink.write(fold.finish())
    finally:
        sink.close()


def _chunk_settings(conn: psycopg.Connection, table: str) -> tuple[set[str | None], set[int]]:
    """Fillfactor of each chunk of ``table`` and how many indexes each has."""
    rows = conn.execute(
        "SELECT array_to_string(c.reloptions, ','), (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) "
        "FROM timescaledb_information.chunks ch "
        "JOIN pg_class c ON c.oid = format('%%I.%%I', ch.chunk_schema, ch.chunk_name)::regclass "
        "WHERE ch.hypertable_name = %s", (table,)).fetchall()
    assert rows, f"{table} has no chunks"
    return {r[0] for r in rows}, {r[1] for r in rows}


def test_existing_and_new_chunks_take_the_settings(empty_db: str, tmp_path: Path) -> None:  # noqa: F811
    migrate_before(empty_db, tmp_path, "035")
    _write(empty_db, range(15, 61, 15), 0)  # day 0: chunks made before the migration
    assert "035_merge_cost" in migrate(empty_db)
    _write(empty_db, range(86400 * 3, 86400 * 3 + 46, 15), 4)  # three days on: 1m and 1h chunks made after
    with psycopg.connect(empty_db) as conn:
        for family in _FAMILIES:
            for grain in ("1h", "1d"):
                fillfactors, _ = _chunk_settings(conn, f"{family}_{grain}")
                assert fillfactors == {"fillfactor=50"}, (family, grain)
            fillfactors, indexes = _chunk_settings(conn, f"{family}_1m")
            assert fillfactors == {None}, family  # 1m pages are filled: nearly every 1m row is new
            # Only the primary key on the instance and tenant rows; the GPU rows keep gpu and cluster indexes.
            assert indexes == ({3} if family == "gpu_usage" else {1}), family
            # No (bucket DESC) index left anywhere: the primary key starts with bucket.
            for grain in ("1m", "1h", "1d"):
                assert conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = %s AND indexdef LIKE %s",
                                    (f"{family}_{grain}", "%(bucket DESC)")).fetchone() == (0,), (family, grain)
        # Nothing lost on the way: both stretches are in every grain: 4 snapshots of 15 s each day
        # (the first of each covers the 15 s before it; the 3-day gap is unmetered, not billed):
        # 120 s per GPU, 240 s over its two instances.
        for family in ("instance_usage", "gpu_usage"):
            totals = [conn.execute(f"SELECT sum(seconds) FROM {family}_{g}").fetchone()[0]  # noqa: S608
                      for g in ("1m", "1h", "1d")]
            assert totals == ([240.0] * 3 if family == "instance_usage" else [120.0] * 3), family
