"""The spool's DISK as the limit (issue 18 item 6): a real full file system, a real read-only one.

Each test mounts its own 1 MiB tmpfs (root only, which CI is; unmounted in teardown), so the
``database or disk is full`` and ``attempt to write a readonly database`` errors come from the
kernel and sqlite, not from a mock. Before the fix the collector died with a traceback on the
first of them, and again on every restart.

The account that must hold everywhere: every snapshot handed to ``send`` is delivered,
still in the spool, or counted in ``dropped`` (and drops only under ``drop-oldest``).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from prometheus_client import CollectorRegistry

from collector.metrics import CollectorMetrics
from collector.publish import KafkaPublisher
from collector.snapshot import Snapshot, from_json
from collector.spool import Spool, SpoolFull, SpoolUnwritable
from migmeter.errors import MigmeterError
from tests.processor.build import T0, TWO_GIS, mig

# Far above how long any step here takes; only keeps a broken test from hanging.
DEADLINE_S = 60.0
# Port 1 on loopback: nothing listens there, connecting is refused at once (broker down).
UNREACHABLE = "127.0.0.1:1"
FS_BYTES = 1024 * 1024
RESERVE = 96 * 1024
# ~1.5 KB records: 2,000 of them (3 MB) cannot fit a 1 MiB file system.
RECORDS = 2000


def _mount(target: Path, *options: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join((f"size={FS_BYTES}", "mode=0755", *options)),
                    "tmpfs", str(target)], check=True, capture_output=True)


@pytest.fixture
def tiny_fs() -> Iterator[Path]:
    """A fresh 1 MiB tmpfs of this test's own."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a 1 MiB tmpfs: run it as root (CI does)")
    mnt = Path(tempfile.mkdtemp(prefix="migmeter-spool-fs-"))
    _mount(mnt)
    try:
        yield mnt
    finally:
        res = subprocess.run(["umount", str(mnt)], capture_output=True)
        if res.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


def remount(mnt: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], check=True, capture_output=True)


def record(i: int) -> tuple[bytes, bytes]:
    """Record ``i``: its number first, then padding to ~1.5 KB."""
    return b"GPU-%d" % (i % 8), b"%08d:" % i + b"x" * 1500


def numbers(spool: Spool) -> list[int]:
    return [int(r.value[:8]) for r in spool.peek(RECORDS)]


def snapshots(n: int) -> list[Snapshot]:
    """n snapshots of 8 GPUs (~700 bytes each), a GPU's 15 s apart, in production order."""
    return [mig(T0 + timedelta(seconds=15 * (i // 8)), TWO_GIS, gpu=f"GPU-{i % 8}", index=i % 8) for i in range(n)]


def test_drop_oldest_keeps_the_newest_when_the_disk_fills(tiny_fs: Path) -> None:
    spool = Spool(tiny_fs / "spool", max_bytes=100 * FS_BYTES, full_policy="drop-oldest", reserve_bytes=RESERVE)
    for i in range(RECORDS):
        spool.append(*record(i))  # never sqlite3.OperationalError
    assert spool.disk_limit is not None, "the disk never filled: the test proved nothing"
    kept = numbers(spool)
    # Every append either stayed or pushed the oldest out: kept + dropped = 2,000, and what
    # stayed is the newest run, in order.
    assert len(kept) + spool.dropped == RECORDS
    assert kept == list(range(RECORDS - len(kept), RECORDS))
    assert spool.dropped > 0 and len(kept) > 100
    spool.close()


def test_block_refuses_then_takes_records_again_once_the_drain_removes_some(tiny_fs: Path) -> None:
    spool = Spool(tiny_fs / "spool", max_bytes=100 * FS_BYTES, full_policy="block", reserve_bytes=RESERVE)
    stored = 0
    with pytest.raises(SpoolFull):
        for i in range(RECORDS):
            spool.append(*record(i))
            stored += 1
    assert spool.disk_limit is not None and spool.dropped == 0
    assert numbers(spool) == list(range(stored))
    # The broker took the oldest 100: the delete is written in the reserve's room.
    assert spool.commit(spool.peek(100)[-1].seq) == 100
    spool.append(*record(stored))
    assert numbers(spool) == list(range(100, stored + 1))
    spool.close()


def read_only(spool: Spool, on: bool) -> None:
    """Make sqlite refuse every write on this spool's connection (SQLITE_READONLY, the error a
    read-only file system gives). A real ``mount -o remount,ro`` is refused by the kernel
    (EBUSY) while the spool's files are open for writing, so a running collector only meets
    a read-only disk when the kernel forces it after an I/O error; this is the same error."""
    spool._db.execute(f"PRAGMA query_only={1 if on else 0}")


def test_read_only_spool_is_unwritable_not_a_crash(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", full_policy="drop-oldest", reserve_bytes=RESERVE)
    for i in range(5):
        spool.append(*record(i))
    read_only(spool, True)
    with pytest.raises(SpoolUnwritable, match="readonly"):
        spool.append(*record(5))
    with pytest.raises(SpoolUnwritable, match="readonly"):
        spool.commit(spool.peek(3)[-1].seq)
    assert numbers(spool) == [0, 1, 2, 3, 4]  # still readable, nothing lost
    read_only(spool, False)
    assert spool.commit(spool.peek(3)[-1].seq) == 3
    spool.append(*record(5))
    assert numbers(spool) == [3, 4, 5]
    spool.close()


def test_restart_on_a_read_only_file_system_is_a_clear_error(tiny_fs: Path) -> None:
    with Spool(tiny_fs / "spool", reserve_bytes=RESERVE) as spool:
        spool.append(*record(0))
    remount(tiny_fs, "ro")  # nothing is open now: the kernel allows it
    try:
        with pytest.raises(MigmeterError, match=r"cannot use spool directory .*Read-only file system"):
            Spool(tiny_fs / "spool", reserve_bytes=RESERVE)
    finally:
        remount(tiny_fs, "rw")


def test_publisher_drop_oldest_on_a_full_disk_counts_every_loss_and_survives_a_restart(tiny_fs: Path) -> None:
    directory = tiny_fs / "spool"
    snaps = snapshots(RECORDS)
    metrics = CollectorMetrics(registry=CollectorRegistry())
    pub = KafkaPublisher(UNREACHABLE, "t", connect_timeout_s=0.3,
                         spool=Spool(directory, max_bytes=100 * FS_BYTES, full_policy="drop-oldest",
                                     reserve_bytes=RESERVE))
    for s in snaps:
        pub.send(s)
    pub.close(0.2)
    st = pub.stats
    metrics.sync("test", {}, st)
    assert st.dropped > 0, "the disk never filled: the test proved nothing"
    # Nothing silently lost: sent = still spooled + dropped (none delivered: no broker).
    assert (st.sent, st.delivered) == (RECORDS, 0)
    assert st.spool_depth + st.dropped == RECORDS
    assert metrics.registry.get_sample_value("migmeter_collector_snapshots_dropped_total") == st.dropped

    # Restart on the still-full disk: the first snapshot must not crash the collector.
    after = mig(T0 + timedelta(days=1), TWO_GIS, gpu="GPU-0")
    pub2 = KafkaPublisher(UNREACHABLE, "t", connect_timeout_s=0.3,
                          spool=Spool(directory, max_bytes=100 * FS_BYTES, full_policy="drop-oldest",
                                      reserve_bytes=RESERVE))
    depth_before = pub2.stats.spool_depth
    pub2.send(after)
    pub2.close(0.2)
    assert pub2.stats.sent == 1
    # Either stored (pushing some oldest out) or, with no room at all, counted as dropped.
    assert pub2.stats.spool_depth + pub2.stats.dropped == depth_before + 1
    with Spool(directory, max_bytes=100 * FS_BYTES, reserve_bytes=RESERVE) as spool:
        kept = [from_json(r.value) for r in spool.peek(RECORDS)]
    assert kept == sorted(kept, key=lambda s: s.ts)  # still in order
    assert (after in kept) == (pub2.stats.dropped == 0)


@pytest.mark.integration
def test_publisher_block_on_a_read_only_spool_loses_nothing(tmp_path: Path, kafka_bootstrap: str,
                                                            new_topic) -> None:  # type: ignore[no-untyped-def]
    """Spooled records from an outage, then the spool turns read-only: the publisher blocks
    (reads nothing more) instead of crashing, delivers the spool, and once the spool is
    writable again stores, then sends, the new snapshot behind them."""
    topic = new_topic(partitions=1)
    directory = tmp_path / "spool"
    old, new = snapshots(5), mig(T0 + timedelta(days=1), TWO_GIS, gpu="GPU-0")
    with Spool(directory, reserve_bytes=RESERVE) as spool:
        for s in old:
            spool.append(s.key, s.to_json())
    spool = Spool(directory, full_policy="block", reserve_bytes=RESERVE)
    waits = _WritableAgainOnWait(spool, lambda: pub.stats.resent >= len(old))
    pub = KafkaPublisher(kafka_bootstrap, topic, spool=spool, stop=waits)
    read_only(spool, True)
    # Behind the spool, the new snapshot must be stored there first, which cannot happen yet:
    # send() blocks, drains the five (delivered, not removable), waits; the disk comes back.
    pub.send(new)
    assert waits.flipped_after >= 1 and not waits.is_set()
    pub.close(10.0)
    assert pub.stats.dropped == 0 and pub.stats.spool_depth == 0, pub.stats

    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    got = [from_json(m.value) for m in consumer]
    consumer.close()
    # The spooled five may arrive more than once (re-sent after the failed delete); the new
    # one comes after every copy of them, once.
    assert got[-1] == new and got.count(new) == 1
    assert got[:-1] == old * (len(got[:-1]) // len(old)) and len(got[:-1]) >= len(old)


class _WritableAgainOnWait(threading.Event):
    """The publisher's stop event. Its ``wait`` is where a blocked ``send`` waits for room: once
    ``ready()`` (the spool was delivered), the spool becomes writable again, in the publisher's
    own thread (sqlite connections belong to one thread). Never stops the publisher."""

    def __init__(self, spool: Spool, ready: Callable[[], bool]) -> None:
        super().__init__()
        self.spool, self.ready = spool, ready
        self.waits = 0
        self.flipped_after = 0
        self.deadline = time.monotonic() + DEADLINE_S

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        assert time.monotonic() < self.deadline, "send() stayed blocked"
        if not self.flipped_after and self.ready():
            read_only(self.spool, False)
            self.flipped_after = self.waits
        time.sleep(min(timeout or 0.0, 0.2))
        return False
