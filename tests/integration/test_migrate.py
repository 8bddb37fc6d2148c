"""Migrations: ordered, recorded, idempotent, and a file changed after it ran is refused."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from migmeter import settings
from migmeter.errors import MigrationError
from warehouse.migrate import applied, discover, migrate, pending

pytestmark = pytest.mark.integration

_ONE = """\
-- a hypertable, and a % sign that must not be taken for a placeholder
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE TABLE t_usage (
    ts   timestamptz NOT NULL,
    gpu  text NOT NULL CHECK (gpu NOT LIKE '%bad%'),
    v    double precision NOT NULL
);
SELECT create_hypertable('t_usage', 'ts', chunk_time_interval => interval '1 day');
"""
_TWO = "CREATE TABLE t_gpus (gpu text PRIMARY KEY);\n"


@pytest.fixture
def empty_db(admin_url: str) -> Iterator[str]:
    """A new database with nothing in it (fresh_db is already migrated with sql/)."""
    name = f"migmeter_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def migrate_before(url: str, tmp_path: Path, first_skipped: str) -> None:
    """Migrate ``url`` with the project's migrations that sort before ``first_skipped`` ("013"):
    a warehouse as an older release left it, for upgrade tests."""
    older = tmp_path / f"sql_before_{first_skipped}"
    older.mkdir()
    for path in sorted(settings.SQL_DIR.glob("0*.sql")):
        if path.name < first_skipped:
            shutil.copy(path, older / path.name)
    migrate(url, older)


@pytest.fixture
def sql_dir(tmp_path: Path) -> Path:
    d = tmp_path / "sql"
    d.mkdir()
    (d / "001_usage.sql").write_text(_ONE)
    (d / "002_gpus.sql").write_text(_TWO)
    (d / "report_by_tenant.sql").write_text("SELECT 1;\n")  # not a migration: ignored
    return d


def _hypertables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def _schema(url: str) -> list[tuple[object, ...]]:
    """Every column of every table/view in public, and the hypertables: a schema fingerprint."""
    with psycopg.connect(url) as conn:
        cols = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY 1, 2"
        ).fetchall()
        hts = conn.execute("SELECT hypertable_name, num_dimensions FROM timescaledb_information.hypertables "
                           "ORDER BY 1").fetchall()
        migs = conn.execute("SELECT name, sha256, applied_at FROM schema_migrations ORDER BY 1").fetchall()
    return cols + hts + migs


def test_applies_in_order_and_creates_a_hypertable(empty_db: str, sql_dir: Path) -> None:
    assert pending(empty_db, sql_dir) == ["001_usage", "002_gpus"]
    assert migrate(empty_db, sql_dir) == ["001_usage", "002_gpus"]
    assert _hypertables(empty_db) == ["t_usage"]
    recorded = applied(empty_db)
    assert [(a.name, a.sha256) for a in recorded] == [(m.name, m.sha256) for m in discover(sql_dir)]


def test_second_run_changes_nothing(empty_db: str, sql_dir: Path) -> None:
    migrate(empty_db, sql_dir)
    before = _schema(empty_db)
    assert migrate(empty_db, sql_dir) == []
    assert _schema(empty_db) == before


def test_new_file_is_applied_later(empty_db: str, sql_dir: Path) -> None:
    migrate(empty_db, sql_dir)
    (sql_dir / "003_more.sql").write_text("ALTER TABLE t_gpus ADD COLUMN model text;\n")
    assert migrate(empty_db, sql_dir) == ["003_more"]


def test_changed_file_is_refused_and_nothing_else_runs(empty_db: str, sql_dir: Path) -> None:
    migrate(empty_db, sql_dir)
    (sql_dir / "001_usage.sql").write_text(_ONE + "-- an edit after the fact\n")
    (sql_dir / "003_more.sql").write_text("CREATE TABLE t_more (x int);\n")
    with pytest.raises(MigrationError, match="001_usage.sql changed after it was applied"):
        migrate(empty_db, sql_dir)
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT to_regclass('t_more')").fetchone() == (None,)


def test_changed_file_fails_the_cli_with_exit_1(empty_db: str, sql_dir: Path) -> None:
    migrate(empty_db, sql_dir)
    (sql_dir / "002_gpus.sql").write_text(_TWO.replace("gpus", "gpus2"))
    proc = subprocess.run(
        [sys.executable, "-m", "migmeter.cli", "db", "migrate", "--database-url", empty_db, "--sql-dir", str(sql_dir)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "002_gpus.sql changed after it was applied" in proc.stderr
    password = urlsplit(empty_db).password
    assert password and password not in proc.stdout + proc.stderr


def test_failing_migration_is_rolled_back_and_not_recorded(empty_db: str, sql_dir: Path) -> None:
    (sql_dir / "003_broken.sql").write_text("CREATE TABLE t_half (x int);\nSELECT no_such_function();\n")
    with pytest.raises(MigrationError, match="003_broken.sql failed"):
        migrate(empty_db, sql_dir)
    assert [a.name for a in applied(empty_db)] == ["001_usage", "002_gpus"]
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT to_regclass('t_half')").fetchone() == (None,)


def test_duplicate_numbers_are_refused(sql_dir: Path) -> None:
    (sql_dir / "002_other.sql").write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match="share number 002"):
        discover(sql_dir)


def test_a_folder_that_cannot_be_read_is_a_clear_error(tmp_path: Path) -> None:
    # A name longer than the file system allows (found by the CLI fuzz: it crashed with OSError).
    with pytest.raises(MigrationError, match="cannot be read: File name too long"):
        discover(tmp_path / ("9" * 300))


def test_project_migrations_create_hypertables_and_are_idempotent(fresh_db: str) -> None:
    """fresh_db ran the project's sql/ once; the hypertables are there and a rerun is a no-op."""
    names = [m.name for m in discover(settings.SQL_DIR)]
    assert [a.name for a in applied(fresh_db)] == names
    assert _hypertables(fresh_db), "the project's migrations create no hypertable"
    before = _schema(fresh_db)
    assert migrate(fresh_db) == []
    assert _schema(fresh_db) == before
