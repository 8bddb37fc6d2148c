"""Schema migrations: plain SQL files ``sql/NNN_name.sql`` applied in order, once each.

Why a tiny runner of our own: the warehouse is plain SQL (hypertables, views, roles) that
a DBA can read and apply by hand; the runner only adds ordering, one transaction per file
and a record of what ran. Each applied file's sha256 is stored in ``schema_migrations``; a
file edited after it ran is refused, because the database would no longer match the code
that claims to describe it — write a new migration instead.

A migration runs inside a transaction, so statements that refuse one (``CREATE INDEX
CONCURRENTLY``, ``VACUUM``) do not belong in a migration file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

from migmeter import settings
from migmeter.errors import MigrationError

__all__ = ["Migration", "AppliedMigration", "discover", "applied", "pending", "migrate", "MIGRATION_FILE"]

log = logging.getLogger("warehouse.migrate")

# NNN_name.sql: a three-digit number fixes the order; the name says what it does.
MIGRATION_FILE = re.compile(r"^(\d{3})_[A-Za-z0-9_]+\.sql$")
# Several processes may migrate the same database at once (tests, a deploy racing a
# developer); a transaction-independent advisory lock serializes them. Arbitrary constant.
_LOCK_KEY = 0x6D69676D  # "migm"

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name        text PRIMARY KEY,
    sha256      text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    """One migration file on disk."""

    name: str
    path: Path
    sha256: str

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class AppliedMigration:
    """One row of ``schema_migrations``."""

    name: str
    sha256: str
    applied_at: datetime


def discover(sql_dir: Path = settings.SQL_DIR) -> list[Migration]:
    """The migration files of ``sql_dir`` in the order they apply. Other files (report
    queries) are ignored; two files with the same number are refused (ambiguous order)."""
    try:
        if not sql_dir.is_dir():
            raise MigrationError(f"migrations folder {sql_dir} does not exist")
        paths = sorted(sql_dir.iterdir())
    except OSError as exc:  # a name too long, a folder without read permission
        raise MigrationError(f"migrations folder {sql_dir} cannot be read: {exc.strerror or exc}") from None
    found: list[Migration] = []
    numbers: dict[str, str] = {}
    for path in paths:
        m = MIGRATION_FILE.match(path.name)
        if m is None or not path.is_file():
            continue
        if m.group(1) in numbers:
            raise MigrationError(
                f"two migrations share number {m.group(1)}: {numbers[m.group(1)]} and {path.name}; renumber one"
            )
        numbers[m.group(1)] = path.name
        found.append(Migration(path.stem, path, hashlib.sha256(path.read_bytes()).hexdigest()))
    return found


@contextlib.contextmanager
def _connect(url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A connection; any psycopg error (cannot connect, or connected and refused: a role without
    rights on the schema) becomes one MigrationError line without the password."""
    try:
        conn = psycopg.connect(url, connect_timeout=10)
    except psycopg.Error as exc:
        raise MigrationError(f"cannot connect to {settings.redact_url(url)}: {settings.database_error(exc, url)}") from None
    try:
        with conn:
            yield conn
    except psycopg.Error as exc:
        raise MigrationError(f"migrating {settings.redact_url(url)} failed: {settings.database_error(exc, url)}") from None


def _applied(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, AppliedMigration]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT name, sha256, applied_at FROM schema_migrations ORDER BY name").fetchall()
    return {str(r[0]): AppliedMigration(str(r[0]), str(r[1]), r[2]) for r in rows}  # type: ignore[arg-type]


def applied(url: str) -> list[AppliedMigration]:
    """What ``schema_migrations`` records, in order (empty for a database never migrated)."""
    with _connect(url) as conn:
        return list(_applied(conn).values())


def _check_unchanged(files: list[Migration], done: dict[str, AppliedMigration]) -> None:
    for mig in files:
        rec = done.get(mig.name)
        if rec is not None and rec.sha256 != mig.sha256:
            raise MigrationError(
                f"migration {mig.path.name} changed after it was applied (sha256 {rec.sha256[:12]}... "
                f"recorded {rec.applied_at:%Y-%m-%d %H:%M}, file now {mig.sha256[:12]}...): restore the "
                f"file and put the change in a new migration"
            )
    known = {m.name for m in files}
    for name in done:
        if name not in known:
            log.warning("migration %s is recorded as applied but its file is gone", name)


def pending(url: str, sql_dir: Path = settings.SQL_DIR) -> list[str]:
    """Names that ``migrate`` would apply now (raises if an applied file changed)."""
    files = discover(sql_dir)
    with _connect(url) as conn:
        done = _applied(conn)
    _check_unchanged(files, done)
    return [m.name for m in files if m.name not in done]


def migrate(url: str, sql_dir: Path = settings.SQL_DIR) -> list[str]:
    """Apply the pending migrations of ``sql_dir`` in order, each in its own transaction;
    return the names applied now (empty when up to date). Idempotent.

    Raises MigrationError when a file changed after it was applied (nothing is applied
    then) or when a migration fails (it is rolled back; earlier ones stay applied).
    """
    files = discover(sql_dir)
    done_now: list[str] = []
    with _connect(url) as conn:
        conn.autocommit = True
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute("SET client_min_messages = warning")
            conn.execute(_CREATE_TABLE)
            done = _applied(conn)
            _check_unchanged(files, done)
            for mig in files:
                if mig.name in done:
                    continue
                log.info("applying migration %s to %s", mig.path.name, settings.redact_url(url))
                try:
                    with conn.transaction():
                        conn.execute(mig.sql().encode())  # bytes: no %-placeholder parsing
                        conn.execute(
                            "INSERT INTO schema_migrations (name, sha256) VALUES (%s, %s)",
                            (mig.name, mig.sha256),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"migration {mig.path.name} failed and was rolled back: {exc}".strip()
                    ) from exc
                done_now.append(mig.name)
        finally:
            if not conn.closed and not conn.broken:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return done_now
