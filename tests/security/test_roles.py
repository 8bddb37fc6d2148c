"""Database roles: the BI reader reads views only; the processor's writer role changes rows in
its own tables and nothing else: no DDL, no DROP or TRUNCATE, no grants, no prices, no
migrations table. And the writer role is enough to run the real sink (least privilege that
still works). Checked over the whole catalog, so a table added later is covered too.

(``tests/integration/test_bi_access.py`` checks named views and tables for the reader; these
tests sweep every relation, including TimescaleDB's chunks.)
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from processor.fold import BatchFold
from processor.sink import Sink
from tests.processor.build import at, inst, mig

pytestmark = pytest.mark.integration

_DENIED = (psycopg.errors.InsufficientPrivilege,)


def _relations(conn: psycopg.Connection, kinds: str) -> list[tuple[str, str, str]]:
    """(schema, name, relkind) of every relation of ``kinds`` in public, and every hypertable chunk
    (TimescaleDB's own catalog tables in that schema are the extension's, readable by design)."""
    return conn.execute(
        "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE (n.nspname = 'public' OR (n.nspname = '_timescaledb_internal' AND c.relname LIKE '\\_hyper\\_%%')) "
        "AND c.relkind = ANY(%s) ORDER BY 1, 2",
        (list(kinds),)).fetchall()


def test_reader_cannot_write_anything_nor_read_any_table(fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as conn:
        # Give TimescaleDB chunks to sweep too.
        _write(fresh_db)
        rels = _relations(conn, "rvmpf")
        assert len(rels) > 30
        writable, readable_tables = [], []
        for schema, name, kind in rels:
            qualified = f"{schema}.{name}"
            if conn.execute("SELECT has_table_privilege('migmeter_reader', %s::regclass, "
                            "'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')", (qualified,)).fetchone()[0]:
                writable.append(qualified)
            if kind in "rpf" and conn.execute("SELECT has_table_privilege('migmeter_reader', %s::regclass, 'SELECT')",
                                              (qualified,)).fetchone()[0]:
                readable_tables.append(qualified)
        creates = conn.execute("SELECT has_schema_privilege('migmeter_reader', 'public', 'CREATE')").fetchone()[0]
    assert writable == [], f"the reader may write to {writable}"
    assert readable_tables == [], f"the reader may read tables (views only): {readable_tables}"
    assert not creates


@pytest.mark.parametrize("table", ["sink_offsets", "gpu_state", "dead_letters"])
def test_reader_cannot_read_the_processor_bookkeeping(fresh_db: str, table: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("SET ROLE migmeter_reader")
        with pytest.raises(_DENIED):
            conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))


_SCHEMA_CHANGES = [
    "DROP TABLE {table}",
    "TRUNCATE {table}",
    "ALTER TABLE {table} ADD COLUMN evil int",
    "ALTER TABLE {table} OWNER TO migmeter_writer",
    "CREATE INDEX evil_idx ON {table} (gpu_uuid)",
    "CREATE TRIGGER evil BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
]
_NOT_ITS_OWN = [
    "DROP VIEW chargeback_pod_monthly",
    "CREATE TABLE public.mine (x int)",
    "CREATE VIEW public.mine AS SELECT 1",
    "INSERT INTO prices (gpu_model, price_per_gpu_hour, currency, effective_from) VALUES ('A30', 0, 'USD', '2025-01-01')",
    "SELECT * FROM prices",
    "DELETE FROM schema_migrations",
    "SELECT drop_chunks('gpu_usage_1m', older_than => now())",
    "DROP SCHEMA public CASCADE",
]


def test_writer_cannot_change_the_schema_or_touch_what_is_not_its_own(fresh_db: str) -> None:
    allowed: list[str] = []
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("SET ROLE migmeter_writer")
        statements = [st.format(table=t) for t in ("gpu_usage_1m", "tenant_usage_1d", "sink_offsets", "gpu_state",
                                                   "gpus", "dead_letters") for st in _SCHEMA_CHANGES] + _NOT_ITS_OWN
        for statement in statements:
            try:
                conn.execute(statement)
            except _DENIED:
                continue
            allowed.append(statement)
        # GRANT without the grant option is only a warning ("no privileges were granted"): check the effect.
        conn.execute("GRANT SELECT ON sink_offsets, gpu_state TO migmeter_reader")
        conn.execute("RESET ROLE")
        leaked = conn.execute("SELECT has_table_privilege('migmeter_reader', 'sink_offsets', 'SELECT') OR "
                              "has_table_privilege('migmeter_reader', 'gpu_state', 'SELECT')").fetchone()[0]
    assert allowed == [], f"the writer role may run: {allowed}"
    assert not leaked, "the writer role granted the reader its bookkeeping tables"


def test_writer_has_no_truncate_or_ddl_anywhere(fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as conn:
        _write(fresh_db)
        bad = [f"{s}.{n}" for s, n, _ in _relations(conn, "rpf") if conn.execute(
            "SELECT has_table_privilege('migmeter_writer', %s::regclass, 'TRUNCATE, REFERENCES, TRIGGER')",
            (f"{s}.{n}",)).fetchone()[0]]
        owns = conn.execute("SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
                            "WHERE r.rolname IN ('migmeter_writer', 'migmeter_reader')").fetchone()[0]
    assert bad == [] and owns == 0


@pytest.fixture
def writer_login(fresh_db: str) -> Iterator[str]:
    """A login role that is only a member of migmeter_writer (how the processor is deployed)."""
    name = f"migmeter_it_w_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE migmeter_writer").format(
            sql.Identifier(name), sql.Literal(password)))
    parts = urlsplit(fresh_db)
    netloc = f"{name}:{password}@{parts.hostname}:{parts.port}"
    try:
        yield urlunsplit(parts._replace(netloc=netloc))
    finally:
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _batch(url: str, first_offset: int = 0):  # type: ignore[no-untyped-def]
    """Two snapshots of one GPU with a layout change between them, and one dead letter."""
    from migmeter.errors import BadSnapshot

    sink = Sink(url, "g")
    try:
        fold = BatchFold(sink.load_states(["GPU-w"]), {("t", 0): sink.read_offsets("t", [0])[0]})
    finally:
        sink.close()
    snaps = [mig(at(0), [inst(0, "3g.40gb", 0.5, "ns", "p")], gpu="GPU-w"),
             mig(at(60), [inst(0, "3g.40gb", 0.5, "ns", "p"), inst(1, "1g.10gb", 0.25)], gpu="GPU-w")]
    for i, s in enumerate(snaps):
        fold.add("t", 0, first_offset + i, s.key, s.to_json(), s)
    fold.add("t", 0, first_offset + 2, b"k", b"not json", BadSnapshot("not JSON"))
    return fold.finish()


def _write(url: str) -> None:
    sink = Sink(url, "g")
    try:
        sink.write(_batch(url))
    finally:
        sink.close()


def test_the_writer_role_is_enough_for_the_sink(fresh_db: str, writer_login: str) -> None:
    sink = Sink(writer_login, "g")
    try:
        rows = sink.write(_batch(writer_login))
    finally:
        sink.close()
    assert rows["layout_events"] >= 1 and rows["dead_letters"] == 1 and rows["gpu_usage_1m"] == 2
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT next_offset FROM sink_offsets").fetchone()[0] == 3
