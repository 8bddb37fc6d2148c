"""The on-disk spool: FIFO across restarts, bounds, and the two full policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.snapshot import MAX_MESSAGE_BYTES
from collector.spool import Spool, SpoolFull, SpoolLocked
from migmeter.errors import ConfigError

# Records of 100 KiB: a 300 KiB spool holds three, whatever the key sizes add.
_BIG = b"x" * (100 * 1024)
_BOUND = 3 * len(_BIG) + 64


def _fill(spool: Spool, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        spool.append(f"gpu-{i % 3}".encode(), f"{i}".encode())


def _values(spool: Spool) -> list[int]:
    return [int(r.value) for r in spool.peek(10_000)]


def test_fifo_order_survives_a_restart(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        _fill(spool, 10)
        head = spool.peek(4)
        assert spool.commit(head[-1].seq) == 4
    with Spool(tmp_path) as reopened:
        assert len(reopened) == 6
        assert _values(reopened) == list(range(4, 10))
        _fill(reopened, 3, start=10)
        assert _values(reopened) == list(range(4, 13))


def test_commit_counts_and_sizes(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append(b"k", b"12345")
        spool.append(b"k", b"67")
        assert (spool.depth, spool.size_bytes) == (2, 6 + 3)
        spool.commit(spool.peek(1)[0].seq)
        assert (spool.depth, spool.size_bytes) == (1, 3)
        assert spool.commit(10**9) == 1
        assert (spool.depth, spool.size_bytes) == (0, 0)
    with Spool(tmp_path) as reopened:
        assert (reopened.depth, reopened.size_bytes) == (0, 0)


def test_size_is_recomputed_from_disk_on_open(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append(b"abc", b"defgh")
    with Spool(tmp_path) as reopened:
        assert (reopened.depth, reopened.size_bytes) == (1, 8)


def test_block_policy_refuses_and_keeps_everything(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=_BOUND, full_policy="block") as spool:
        for i in range(3):
            spool.append(b"k", _BIG[:-1] + str(i).encode())
        with pytest.raises(SpoolFull):
            spool.append(b"k", _BIG)
        assert spool.depth == 3
        assert spool.dropped == 0
        assert [r.value[-1:] for r in spool.peek(5)] == [b"0", b"1", b"2"]


def test_drop_oldest_policy_drops_the_head_and_counts(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=_BOUND, full_policy="drop-oldest") as spool:
        for i in range(5):
            spool.append(b"k", _BIG[:-1] + str(i).encode())
        assert spool.dropped == 2
        assert spool.depth == 3
        assert spool.size_bytes <= _BOUND
        assert [r.value[-1:] for r in spool.peek(5)] == [b"2", b"3", b"4"]


def test_count_bound(tmp_path: Path) -> None:
    with Spool(tmp_path, max_count=4, full_policy="drop-oldest") as spool:
        _fill(spool, 6)
        assert _values(spool) == [2, 3, 4, 5]
        assert spool.dropped == 2
    with Spool(tmp_path, max_count=4) as blocking:
        with pytest.raises(SpoolFull):
            blocking.append(b"k", b"9")


def test_force_stores_past_the_bound(tmp_path: Path) -> None:
    with Spool(tmp_path, max_count=1) as spool:
        spool.append(b"k", b"1")
        spool.append(b"k", b"2", force=True)
        assert _values(spool) == [1, 2]
        assert spool.dropped == 0


def test_second_collector_cannot_open_the_same_spool(tmp_path: Path) -> None:
    with Spool(tmp_path):
        with pytest.raises(SpoolLocked):
            Spool(tmp_path)
    Spool(tmp_path).close()  # released on close


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_bytes": MAX_MESSAGE_BYTES - 1},
        {"max_count": 0},
        {"full_policy": "drop-newest"},
    ],
)
def test_bad_bounds_are_config_errors(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Spool(tmp_path, **kwargs)  # type: ignore[arg-type]
