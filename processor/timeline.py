"""A GPU's billed time: interval arithmetic in integer microseconds, pure, no I/O.

Each GPU keeps the set of time it has been billed for, as a short sorted list of disjoint
``[start, end]`` pairs (epoch microseconds; an interval stands for ``(start, end]``,
adjacent ones are merged). :func:`bill` adds one snapshot's covered interval to that set and
says what was new, what was already billed (trimmed) and how the GPU's unmetered time
changed. :func:`split` divides an interval among the buckets it spans, in proportion to time.

Rules (DESIGN.md "Time model"):

1. A GPU's life is the hull of its billed set: from its first covered second to its last
   snapshot's ts (every covered interval ends at a snapshot's ts).
2. Time inside the life that is not billed is unmetered. Billing a piece inside the old hull
   fills a hole (unmetered goes down by that piece); extending the hull adds the part of the
   extension that the new interval does not cover (unmetered goes up).
3. Seconds already billed are never billed again: the new interval minus the billed set is
   what is billed; the rest is trimmed.
4. At most :data:`MAX_INTERVALS` pairs are kept per GPU: beyond that the oldest hole is closed
   (it stays unmetered in the tables; history later offered for it is trimmed). Integer
   microseconds keep the set exact: no float drift however many snapshots extend it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["US", "MAX_INTERVALS", "Billing", "bill", "split", "to_us"]

US = 1_000_000
# A GPU with a hole a day keeps two months of holes open for backfill; the state row stays
# a few KiB (it is rewritten with every batch that touches the GPU).
MAX_INTERVALS = 64


def to_us(epoch_s: float) -> int:
    """Epoch seconds -> integer microseconds (snapshots carry ms precision; rounding is exact)."""
    return round(epoch_s * US)


class Billing(NamedTuple):
    """What one covered interval did to a GPU's billed set (all in microseconds). A NamedTuple:
    one is made per snapshot on the processor's hot path."""

    billed: Sequence[tuple[int, int]]  # newly billed pieces
    trimmed_us: int  # part of the covered interval that was billed already
    unmetered: Sequence[tuple[int, int, int]]  # (start, end, +1 | -1)

    @property
    def billed_us(self) -> int:
        return sum(b - a for a, b in self.billed)


_NOTHING = Billing((), 0, ())


def bill(spans: list[list[int]], a: int, b: int) -> Billing:
    """Bill ``(a, b]`` against ``spans`` (modified in place: the new pieces are added)."""
    if b <= a:
        return _NOTHING
    if not spans:
        spans.append([a, b])
        return Billing([(a, b)], 0, ())
    last = spans[-1]
    if a >= last[1]:
        # Hot path: the next interval of a live stream, at or after the GPU's last ts.
        if a == last[1]:
            last[1] = b
            return Billing([(a, b)], 0, ())
        hole = last[1]
        spans.append([a, b])
        _cap(spans)
        return Billing([(a, b)], 0, ((hole, a, 1),))
    lo, hi = spans[0][0], last[1]
    # Pieces of (a, b] not in any span.
    pieces: list[tuple[int, int]] = []
    cursor = a
    for s, e in spans:
        if e <= cursor:
            continue
        if s >= b:
            break
        if s > cursor:
            pieces.append((cursor, s))
        cursor = max(cursor, e)
        if cursor >= b:
            break
    if cursor < b:
        pieces.append((cursor, b))
    unmetered: list[tuple[int, int, int]] = []
    for pa, pb in pieces:
        # Inside the old hull: a hole is filled.
        ia, ib = max(pa, lo), min(pb, hi)
        if ib > ia:
            unmetered.append((ia, ib, -1))
    if b < lo:  # history before the GPU's life: the life now starts at a
        unmetered.append((b, lo, 1))
    if pieces:
        _insert(spans, pieces)
    return Billing(pieces, (b - a) - sum(pb - pa for pa, pb in pieces), unmetered)


def _insert(spans: list[list[int]], pieces: list[tuple[int, int]]) -> None:
    merged = sorted([list(p) for p in pieces] + spans)
    spans.clear()
    for s, e in merged:
        if spans and s <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], e)
        else:
            spans.append([s, e])
    _cap(spans)


def _cap(spans: list[list[int]]) -> None:
    while len(spans) > MAX_INTERVALS:
        first = spans.pop(0)
        spans[0][0] = first[0]


def split(a: int, b: int, width_s: int) -> list[tuple[int, float]]:
    """``(a, b]`` (microseconds) as (bucket start in epoch seconds, seconds) per bucket of ``width_s``.

    Only buckets that get a positive share are listed; the last one holds ``b``.
    """
    width = width_s * US
    out: list[tuple[int, float]] = []
    k = a // width
    while True:
        end = (k + 1) * width
        if end >= b:
            out.append((k * width_s, (b - max(a, k * width)) / US))
            return out
        if end > a:
            out.append((k * width_s, (end - max(a, k * width)) / US))
        k += 1
