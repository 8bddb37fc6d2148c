"""The contract every collector source implements: read one round of snapshots.

A source is polled by ``collector.run``; it returns whatever it could read and reports
partial failures through its counters rather than raising, so one bad GPU or endpoint never
stops the others. ``SourceUnavailable`` is for a source that could read nothing at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from collector.snapshot import Snapshot

__all__ = ["Source", "ReadStats"]


@dataclass
class ReadStats:
    """What a source skipped, by reason, so every dropped value can be accounted for."""

    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n


class Source(Protocol):
    name: str
    stats: ReadStats

    def read(self) -> list[Snapshot]:
        """One round: a snapshot per physical GPU the source can see right now."""
        ...

    def close(self) -> None: ...

    @property
    def exhausted(self) -> bool:
        """True once a finite source (a backfill) has returned everything; the loop then ends.
        A live source is never exhausted."""
        ...
