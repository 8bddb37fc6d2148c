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

The disk as the bound: when the file system fills up (``database or disk is full``) or the
directory turns read-only, the same policy applies instead of a crash. A full disk leaves
sqlite unable even to delete (every write, a DELETE too, needs room in the WAL), so the spool
keeps a small reserve file (``spool.reserve``) and releases it at the first full-disk error:
that room lets it drop its oldest records (``drop-oldest``) or lets the drain remove what the
broker took (``block``). From then on the spool's size at that moment is its bound, until
it has drained empty and the reserve can be made again. What still cannot be written raises
:class:`SpoolUnwritable` (a :class:`SpoolFull`), and the publisher applies its policy.

One spool belongs to one collector: an exclusive ``flock`` on ``spool.lock`` stops a second
collector from draining the same records (duplicates) or interleaving (reordering).
"""

from __future__ import annotations

import contextlib
import errno
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
    "SpoolUnwritable",
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
# Room kept free for the spool itself: released when the disk fills, it holds the WAL pages
# of the deletes that make room again (a transaction touches a few 4 KiB pages).
DEFAULT_RESERVE_BYTES = 1024 * 1024
# Checkpoint the WAL every 64 pages (256 KiB, sqlite's default is 4 MiB): the records live in
# the database file, whose freed pages are reused, and the WAL stays small and is recycled,
# so a full disk is not also holding a WAL-sized second copy of the spool.
_WAL_AUTOCHECKPOINT_PAGES = 64
# PRAGMAs take no bound parameters: the statement is a constant, spelled out once.
_WAL_AUTOCHECKPOINT = f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES:d}"
# Records per transaction when deleting on a full disk (see Spool._delete_in_steps).
_DELETE_STEP = 16
_DB_NAME = "spool.sqlite3"
_LOCK_NAME = "spool.lock"
_RESERVE_NAME = "spool.reserve"


class SpoolFull(MigmeterError):
    """The spool is at its bound and its policy is ``block``: drain it, then append again."""


class SpoolUnwritable(SpoolFull):
    """The spool's disk is full or its directory read-only: the record was not stored."""


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
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
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
        self.reserve_bytes = reserve_bytes
        self.dropped = 0
        # Set when the disk, not max_bytes, became the limit: the spool's size at that moment.
        self.disk_limit: int | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create spool directory {self.directory}: {exc}") from exc
        self._lock_fd = _lock(self.directory / _LOCK_NAME)
        try:
            self._db = sqlite3.connect(self.directory / _DB_NAME, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_WAL_AUTOCHECKPOINT)
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
        self._make_reserve()
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

    @property
    def limit_bytes(self) -> int:
        """The bound in force: ``max_bytes``, or less while the disk is the limit."""
        return self.max_bytes if self.disk_limit is None else min(self.max_bytes, self.disk_limit)

    def has_room(self, nbytes: int) -> bool:
        """Would a record of ``nbytes`` fit without dropping anything?"""
        fits_bytes = self._bytes + nbytes <= self.limit_bytes
        fits_count = self.max_count is None or self._count + 1 <= self.max_count
        return fits_bytes and fits_count

    def append(self, key: bytes, value: bytes, *, force: bool = False) -> None:
        """Append one record at the tail.

        Full and ``block``: raises :class:`SpoolFull` and stores nothing. Full and
        ``drop-oldest``: removes the oldest records until it fits (counted in ``dropped``).
        ``force`` stores past the bound (used once at shutdown, so the snapshots in hand are
        not lost when the broker is still down; the overshoot is at most one round).

        The disk full or read-only: the reserve is released and the current size becomes the
        bound (see the module doc); raises :class:`SpoolUnwritable` when nothing can be stored.
        """
        size = len(key) + len(value)
        if size > self.max_bytes:
            raise SpoolFull(f"a {size}-byte record can never fit a {self.max_bytes}-byte spool")
        if not force and not self.has_room(size) and self.full_policy == "block":
            raise SpoolFull(f"spool {self.directory} is full ({self._count} snapshots, {self._bytes} bytes)")
        upto, dropped, dropped_bytes = (None, 0, 0) if force else self._oldest_to_drop(size)
        try:
            self._insert(key, value, upto)
        except sqlite3.OperationalError as exc:
            self._disk_is_limit(exc)
            if self.full_policy == "block" and not force:
                # Block: room comes from the drain (its deletes use the released reserve).
                raise SpoolUnwritable(f"spool {self.directory} cannot grow: {exc}") from None
            if not force:
                upto, dropped, dropped_bytes = self._oldest_to_drop(size)
            try:
                self._insert(key, value, upto)
            except sqlite3.OperationalError as again:
                raise SpoolUnwritable(f"spool {self.directory} cannot store a snapshot: {again}") from None
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
        """Remove every record with ``seq <= upto_seq`` (they were delivered); returns how many.

        Raises :class:`SpoolUnwritable` when even a delete cannot be written (read-only, or a
        full disk with the reserve already spent): the records stay and are sent again later.
        """
        n = -1
        if self.disk_limit is None:
            try:
                n, _ = self._delete_upto(upto_seq)
            except sqlite3.OperationalError as exc:
                self._disk_is_limit(exc)
        if n < 0:
            n, _ = self._delete_in_steps(upto_seq)
        if self.disk_limit is not None and self._count == 0 and self._make_reserve():
            self.disk_limit = None
            log.info("spool %s drained on a disk with room again: back to its %d-byte bound",
                     self.directory, self.max_bytes)
        return n

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
        need_bytes = self._bytes + size - self.limit_bytes
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

    def _insert(self, key: bytes, value: bytes, drop_upto: int | None) -> None:
        with self._tx():
            if drop_upto is not None:
                self._db.execute("DELETE FROM spool WHERE seq <= ?", (drop_upto,))
            self._db.execute("INSERT INTO spool (key, value) VALUES (?, ?)", (key, value))

    def _delete_upto(self, upto_seq: int) -> tuple[int, int]:
        """One transaction; the counters follow only once it committed."""
        with self._tx():
            n, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(key) + LENGTH(value)), 0) FROM spool WHERE seq <= ?",
                (upto_seq,),
            ).fetchone()
            self._db.execute("DELETE FROM spool WHERE seq <= ?", (upto_seq,))
        self._count -= int(n)
        self._bytes -= int(size)
        return int(n), int(size)

    def _delete_in_steps(self, upto_seq: int) -> tuple[int, int]:
        """Delete oldest first, a few records per transaction, checkpointing between steps: on
        a full disk each step's WAL frames then fit the room the reserve left, and the WAL is
        recycled instead of grown. Raises SpoolUnwritable if not even one step can be written."""
        n = size = 0
        while True:
            row = self._db.execute("SELECT seq FROM spool WHERE seq <= ? ORDER BY seq LIMIT 1 OFFSET ?",
                                   (upto_seq, _DELETE_STEP - 1)).fetchone()
            step_upto = upto_seq if row is None else int(row[0])
            try:
                got, got_size = self._delete_upto(step_upto)
            except sqlite3.OperationalError as exc:
                if n:
                    return n, size  # progress made; the rest stays and is re-sent later
                raise SpoolUnwritable(f"spool {self.directory} cannot remove delivered snapshots: {exc}") from None
            n, size = n + got, size + got_size
            self._checkpoint()
            if step_upto >= upto_seq or got == 0:
                return n, size

    def _disk_is_limit(self, exc: sqlite3.OperationalError) -> None:
        """A write failed for want of room (or of write access): spend the reserve, and bound
        the spool at its present size until it drains empty."""
        if self.disk_limit is None:
            log.warning("spool %s cannot grow (%s) at %d snapshots, %d bytes: applying --spool-full=%s "
                        "at this size until it drains", self.directory, exc, self._count, self._bytes,
                        self.full_policy)
        self.disk_limit = self._bytes if self.disk_limit is None else min(self.disk_limit, self._bytes)
        with contextlib.suppress(OSError):
            (self.directory / _RESERVE_NAME).unlink()
        # First use of the freed room: move the WAL's pages into the database file (it may
        # have to grow for the newest records), so later small transactions recycle the WAL.
        self._checkpoint()

    def _checkpoint(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()

    def _make_reserve(self) -> bool:
        """(Re)create the reserve file with real blocks; False when the disk has no room for it."""
        path = self.directory / _RESERVE_NAME
        if self.reserve_bytes <= 0:
            return True
        with contextlib.suppress(OSError):
            if path.stat().st_size == self.reserve_bytes:
                return True
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError:
            return False  # read-only: nothing to reserve on
        try:
            os.posix_fallocate(fd, 0, self.reserve_bytes)
            return True
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EOPNOTSUPP, errno.EINVAL):
                log.warning("spool %s: cannot make its reserve file: %s", self.directory, exc)
            os.close(fd)
            fd = -1
            with contextlib.suppress(OSError):
                path.unlink()
            return False
        finally:
            if fd >= 0:
                os.close(fd)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error: each spool call is all or nothing."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        # After SQLITE_FULL sqlite may have rolled back already ("no transaction is active").
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")


def _lock(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise MigmeterError(f"cannot use spool directory {path.parent}: {exc.strerror} "
                            f"(it must be writable; free space or remount it, or pick another --spool-dir)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolLocked(f"spool {path.parent} is in use by another collector (lock {path})") from None
    return fd
