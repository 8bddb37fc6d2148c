"""A bounded on-disk FIFO of encoded snapshots, for when Kafka cannot take them.

When the broker is down or unreachable the collector keeps reading GPUs; what it cannot
publish goes here and is sent, oldest first, once the broker is back. The spool survives a
collector restart, so an outage plus a restart loses nothing.

Why sqlite3 (stdlib) rather than segment files of JSON lines: what the spool needs is an
append, a "peek the oldest N" and a "remove everything up to seq S" that are each atomic and
survive a crash mid-write. sqlite gives exactly that in one transaction per call, with no
torn last line, no separate read-offset file to keep consistent with the segments, no
segment rotation or compaction to write and test. ``seq`` (AUTOINCREMENT) is the global
arrival order, which is also each GPU's order, because every snapshot is appended in the
order the poll loop produced it.

Durability: WAL journal with ``synchronous=NORMAL`` — a commit survives the collector
crashing or being killed (it is in the OS page cache), and the last commits before a power
loss may be lost. The spool is a buffer for broker outages, not a database of record, and a
fsync per snapshot would cap the spool at a few hundred snapshots/s on ordinary disks.

Bounds: ``max_bytes`` (sum of key + value sizes; sqlite adds page overhead on top, and the
file keeps its peak size because freed pages are reused rather than returned) and
optionally ``max_count``. When an append would exceed a bound the spool either drops the
oldest records (``full_policy="drop-oldest"``, each drop counted and logged) or raises
:class:`SpoolFull` (``"block"``) so the publisher can apply back-pressure: drain, then retry.

One spool belongs to one collector: an exclusive ``flock`` on ``spool.lock`` stops a second
collector from draining the same records (duplicates) or interleaving (reordering).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from collector.snapshot import MAX_MESSAGE_BYTES
from migmeter.errors import ConfigError, MigmeterError

__all__ = [
    "FULL_POLICIES",
    "DEFAULT_MAX_BYTES",
    "FullPolicy",
    "SpoolFull",
    "SpoolLocked",
    "SpooledRecord",
    "Spool",
]

log = logging.getLogger("migmeter.collector.spool")

FullPolicy = Literal["block", "drop-oldest"]
FULL_POLICIES: tuple[FullPolicy, ...] = ("block", "drop-oldest")
# 256 MiB holds roughly a day of a 100-GPU fleet at a 15 s interval (~1.5 KB a snapshot):
# long enough to ride out a weekend-night broker outage, small enough for any node's disk.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_DB_NAME = "spool.sqlite3"
_LOCK_NAME = "spool.lock"


class SpoolFull(MigmeterError):
    """The spool is at its bound and its policy is ``block``: drain it, then append again."""


class SpoolLocked(MigmeterError):
    """Another collector holds this spool directory."""


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    """One spooled message: ``seq`` is its place in the FIFO (pass it to :meth:`Spool.commit`)."""

    seq: int
    key: bytes
    value: bytes


class Spool:
    """A bounded, crash-safe FIFO of (key, value) records in ``directory``.

    Not thread-safe: the poll loop's thread owns it (the publisher calls it from ``send`` and
    ``flush`` only).
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_count: int | None = None,
        full_policy: FullPolicy = "block",
    ) -> None:
        if full_policy not in FULL_POLICIES:
            raise ConfigError(f"spool full policy must be one of {', '.join(FULL_POLICIES)}, not {full_policy!r}")
        if max_bytes < MAX_MESSAGE_BYTES:
            # Otherwise one legal message could never fit and a blocked spool would block forever.
            raise ConfigError(f"spool max bytes {max_bytes} is below one maximal message ({MAX_MESSAGE_BYTES} bytes)")
        if max_count is not None and max_count < 1:
            raise ConfigError(f"spool max count must be at least 1, not {max_count}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.full_policy: FullPolicy = full_policy
        self.dropped = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create spool directory {self.directory}: {exc}") from exc
        self._lock_fd = _lock(self.directory / _LOCK_NAME)
        try:
            self._db = sqlite3.connect(self.directory / _DB_NAME, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS spool ("
                " seq INTEGER PRIMARY KEY AUTOINCREMENT, key BLOB NOT NULL, value BLOB NOT NULL)"
            )
            count, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(key) + LENGTH(value)), 0) FROM spool"
            ).fetchone()
        except sqlite3.Error as exc:
            os.close(self._lock_fd)
            raise MigmeterError(f"cannot open spool {self.directory / _DB_NAME}: {exc}") from exc
        self._count: int = int(count)
        self._bytes: int = int(size)
        self._closed = False
        if self._count:
            log.info("spool %s holds %d snapshots (%d bytes) from a previous run", self.directory, count, size)

    def __repr__(self) -> str:
        return f"Spool({str(self.directory)!r}, depth={self._count}, bytes={self._bytes}, policy={self.full_policy})"

    def __len__(self) -> int:
        return self._count

    @property
    def depth(self) -> int:
        """Records waiting to be sent."""
        return self._count

    @property
    def size_bytes(self) -> int:
        """Sum of key and value sizes of the waiting records (what ``max_bytes`` bounds)."""
        return self._bytes

    def has_room(self, nbytes: int) -> bool:
        """Would a record of ``nbytes`` fit without dropping anything?"""
        fits_bytes = self._bytes + nbytes <= self.max_bytes
        fits_count = self.max_count is None or self._count + 1 <= self.max_count
        return fits_bytes and fits_count

    def append(self, key: bytes, value: bytes, *, force: bool = False) -> None:
        """Append one record at the tail.

        Full and ``block``: raises :class:`SpoolFull` and stores nothing. Full and
        ``drop-oldest``: removes the oldest records until it fits (counted in ``dropped``).
        ``force`` stores past the bound (used once at shutdown, so the snapshots in hand are
        not lost when the broker is still down; the overshoot is at most one round).
        """
        size = len(key) + len(value)
        if size > self.max_bytes:
            raise SpoolFull(f"a {size}-byte record can never fit a {self.max_bytes}-byte spool")
        if not force and not self.has_room(size) and self.full_policy == "block":
            raise SpoolFull(f"spool {self.directory} is full ({self._count} snapshots, {self._bytes} bytes)")
        upto, dropped, dropped_bytes = (None, 0, 0) if force else self._oldest_to_drop(size)
        with self._tx():
            if upto is not None:
                self._db.execute("DELETE FROM spool WHERE seq <= ?", (upto,))
            self._db.execute("INSERT INTO spool (key, value) VALUES (?, ?)", (key, value))
        self._count += 1 - dropped
        self._bytes += size - dropped_bytes
        if dropped:
            self.dropped += dropped
            log.warning(
                "spool %s full: dropped the %d oldest snapshots (%d bytes); %d dropped since start",
                self.directory, dropped, dropped_bytes, self.dropped,
            )

    def peek(self, limit: int) -> list[SpooledRecord]:
        """The oldest ``limit`` records, oldest first, without removing them."""
        rows = self._db.execute("SELECT seq, key, value FROM spool ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [SpooledRecord(int(s), bytes(k), bytes(v)) for s, k, v in rows]

    def commit(self, upto_seq: int) -> int:
        """Remove every record with ``seq <= upto_seq`` (they were delivered); returns how many."""
        with self._tx():
            n, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(key) + LENGTH(value)), 0) FROM spool WHERE seq <= ?",
                (upto_seq,),
            ).fetchone()
            self._db.execute("DELETE FROM spool WHERE seq <= ?", (upto_seq,))
        self._count -= int(n)
        self._bytes -= int(size)
        return int(n)

    def close(self) -> None:
        """Close the database and release the directory lock (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._db.close()
        finally:
            os.close(self._lock_fd)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _oldest_to_drop(self, size: int) -> tuple[int | None, int, int]:
        """The shortest prefix of the FIFO whose removal makes room for ``size`` bytes:
        (last seq to delete or None, how many, their bytes)."""
        need_bytes = self._bytes + size - self.max_bytes
        need_count = 0 if self.max_count is None else self._count + 1 - self.max_count
        upto: int | None = None
        n = 0
        freed = 0
        # The cursor streams rows, so a long spool is not read into memory to drop a few.
        cursor = self._db.execute("SELECT seq, LENGTH(key) + LENGTH(value) FROM spool ORDER BY seq")
        try:
            for seq, nbytes in cursor:
                if freed >= need_bytes and n >= need_count:
                    break
                upto, n, freed = int(seq), n + 1, freed + int(nbytes)
        finally:
            cursor.close()
        return upto, n, freed

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error: each spool call is all or nothing."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolLocked(f"spool {path.parent} is in use by another collector (lock {path})") from None
    return fd
