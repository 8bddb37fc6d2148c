"""Roles: the processor runs as a login granted migmeter_writer; BI readers see views, not bookkeeping."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from processor.fold import BatchFold
from processor.sink import Sink
from tests.processor.build import at, inst, mig

pytestmark = pytest.mark.integration


@pytest.fixture
def login(admin_url: str) -> Iterator:  # type: ignore[type-arg]
    """Factory: a LOGIN role granted one group role; returns a URL for ``db`` as that login."""
    made: list[str] = []

    def make(group: str, db: str) -> str:
        name, password = f"mm_test_{uuid.uuid4().hex[:8]}", secrets.token_hex(12)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(name), sql.Literal(password), sql.Identifier(group)))
        made.append(name)
        parts = urlsplit(db)
        return urlunsplit(parts._replace(netloc=f"{name}:{password}@{parts.hostname}:{parts.port}"))

    yield make
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _write_one(url: str) -> None:
    sink = Sink(url, "g")
    snap = mig(at(0), [inst(0, "3g.40gb", 0.5, "a", "p")])
    fold = BatchFold(sink.load_states([snap.gpu_uuid]), {("t", 0): sink.read_offsets("t", [0])[0]})
    fold.add("t", 0, 0, snap.key, snap.to_json(), snap)
    sink.write(fold.finish())
    sink.close()


def test_writer_can_process_but_not_alter_or_drop(fresh_db, login):  # type: ignore[no-untyped-def]
    url = login("migmeter_writer", fresh_db)
    _write_one(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT sum(snapshots) FROM gpu_usage_1m").fetchone() == (1,)
        for stmt in ("DROP TABLE gpu_usage_1m", "ALTER TABLE sink_offsets ADD COLUMN x int",
                     "TRUNCATE sink_offsets", "CREATE TABLE public.mine (x int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)


def test_reader_sees_views_only(fresh_db, login):  # type: ignore[no-untyped-def]
    _write_one(fresh_db)
    url = login("migmeter_reader", fresh_db)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT round(weighted_util_pct::numeric, 2) FROM gpu_utilization_1h").fetchone()
        assert row is not None and float(row[0]) == 50.0
        for table in ("sink_offsets", "gpu_state", "dead_letters", "gpu_usage_1m", "instance_usage_1h",
                      "tenant_usage_1d"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(sql.Identifier(table)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO sink_offsets (consumer_group, topic, partition, next_offset) "
                         "VALUES ('x', 'y', 0, 0)")
