"""One micro-batch folded in memory: the pure part of the processor, no I/O.

The consumer feeds records in offset order per partition; :class:`BatchFold` decides for
each one whether it is merged, a duplicate, or a dead letter, folds merged snapshots into
1-minute partials, diffs layouts, and tracks per-partition progress. :meth:`BatchFold.finish`
returns a :class:`FoldedBatch` that the sink writes in one transaction.

Ordering and clock rules (applied per GPU, in this order):

1. A record that does not decode into a valid v1 snapshot is a dead letter (reason from
   ``BadSnapshot``).
2. A snapshot whose ts is more than ``max_future_skew_s`` (default 300 s) ahead of the
   processor's clock is a dead letter: merging it would put usage into a future bucket (a
   future month of chargeback) and make every real snapshot after it look like a duplicate.
3. A snapshot whose ts is more than ``max_backward_skew_s`` (default 3600 s) behind its
   GPU's last ts is a dead letter: a collector clock that jumped back, or a replay far too
   old to be a plain retry; never silently dropped as a duplicate nor merged.
4. A snapshot whose ts is more than ``max_age_s`` (default 10 years; 0 = no limit) behind the
   processor's clock is a dead letter: a GPU node whose clock was reset (to 1970, or to a
   firmware build date) would otherwise open its history, or a brand-new GPU's, in a month
   that was billed long ago. The limit is generous so Prometheus backfills of past months
   and the simulated fleet's fixed 2025 calendar still merge.
5. Otherwise a snapshot whose ts is not newer than its GPU's last ts is a duplicate: dropped
   and counted. A late snapshot that is still newer merges into its (old) buckets.

6. A record the database refused for a data reason (found by bisecting a refused batch, see
   ``processor.refusals``) is a dead letter ``db_refused`` with the server's message and
   SQLSTATE: :meth:`BatchFold.refuse`.

Every consumed record is counted exactly once, so per partition:
records consumed = snapshots merged + duplicates + dead letters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from collector.snapshot import Snapshot, format_ts
from migmeter.errors import BadSnapshot
from processor.aggregate import GRAINS, Aggregates, fold_snapshot, rollup
from processor.layout import GpuState, IntervalBook, LayoutEvent, diff_layout

__all__ = [
    "DEFAULT_MAX_FUTURE_SKEW_S",
    "DEFAULT_MAX_BACKWARD_SKEW_S",
    "DEFAULT_MAX_AGE_S",
    "MERGED",
    "DUPLICATE",
    "DEAD_LETTER",
    "DeadLetter",
    "PartitionProgress",
    "GpuSeen",
    "FoldedBatch",
    "BatchFold",
]

# Collectors run NTP-synced clocks; five minutes ahead is already a broken clock, and anything
# further would put usage into buckets (or a month) that have not happened yet.
DEFAULT_MAX_FUTURE_SKEW_S = 300.0
# One hour back covers a collector spool replaying after an outage of its own partition, but
# not a clock reset to an old date.
DEFAULT_MAX_BACKWARD_SKEW_S = 3600.0
# Ten years: no real backfill reaches that far; a reset clock (1970, a firmware date) does.
DEFAULT_MAX_AGE_S = 10 * 365 * 86400.0

MERGED = "merged"
DUPLICATE = "duplicate"
DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected record: goes to the dead-letter topic and the ``dead_letters`` table."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    payload: bytes
    reason: str
    kind: str  # decode | clock_future | clock_past | clock_backward | db_refused: a small set, usable as a metric label


@dataclass(slots=True)
class PartitionProgress:
    """Where a partition's batch started (the stored offset, None = no row yet) and what it consumed."""

    expected: int | None
    next_offset: int
    snapshots: int = 0
    duplicates: int = 0
    dead_letters: int = 0


@dataclass(slots=True)
class GpuSeen:
    """Last-seen attributes of a GPU in this batch, for the ``gpus`` table."""

    cluster: str
    host: str
    gpu_index: int
    gpu_model: str
    total_slices: int
    mig_enabled: bool
    first_seen: datetime
    last_seen: datetime


@dataclass(slots=True)
class FoldedBatch:
    """Everything one transaction writes."""

    aggregates: dict[str, Aggregates]  # grain -> partials
    events: list[LayoutEvent]
    intervals: IntervalBook
    gpus: dict[str, GpuSeen]
    states: dict[str, GpuState]  # new state of every GPU merged in this batch
    dead_letters: list[DeadLetter]
    progress: dict[tuple[str, int], PartitionProgress]
    instance_samples: int

    @property
    def records(self) -> int:
        return sum(p.snapshots + p.duplicates + p.dead_letters for p in self.progress.values())


@dataclass
class BatchFold:
    """Fold records into one batch. ``states`` holds the GPU state from the database (None =
    never seen) for every GPU this batch touches; it is read, never written."""

    states: Mapping[str, GpuState | None]
    stored_offsets: Mapping[tuple[str, int], int | None]
    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S
    max_backward_skew_s: float = DEFAULT_MAX_BACKWARD_SKEW_S
    clock: Callable[[], float] = time.time
    max_age_s: float = DEFAULT_MAX_AGE_S
    _agg: Aggregates = field(default_factory=Aggregates.empty)
    _events: list[LayoutEvent] = field(default_factory=list)
    _book: IntervalBook = field(default_factory=IntervalBook)
    _gpus: dict[str, GpuSeen] = field(default_factory=dict)
    _new_states: dict[str, GpuState] = field(default_factory=dict)
    _dead: list[DeadLetter] = field(default_factory=list)
    _progress: dict[tuple[str, int], PartitionProgress] = field(default_factory=dict)
    _instance_samples: int = 0

    def state_of(self, gpu_uuid: str) -> GpuState | None:
        """The GPU's state as of the records folded so far."""
        state = self._new_states.get(gpu_uuid)
        return state if state is not None else self.states.get(gpu_uuid)

    def add(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
            snap: Snapshot | BadSnapshot) -> str:
        """Account for one record; returns MERGED, DUPLICATE or DEAD_LETTER."""
        prog = self._advance(topic, partition, offset)
        if isinstance(snap, BadSnapshot):
            return self._reject(prog, topic, partition, offset, key, value, snap.reason, "decode")
        ts = snap.ts.timestamp()
        ahead = ts - self.clock()
        if ahead > self.max_future_skew_s:
            return self._reject(prog, topic, partition, offset, key, value,
                                f"ts {format_ts(snap.ts)} is {ahead:.0f} s ahead of the processor clock "
                                f"(limit {self.max_future_skew_s:g} s)", "clock_future")
        if self.max_age_s and -ahead > self.max_age_s:
            return self._reject(prog, topic, partition, offset, key, value,
                                f"ts {format_ts(snap.ts)} is {-ahead / 86400:.0f} days behind the processor clock "
                                f"(limit {self.max_age_s / 86400:g} days): a reset clock", "clock_past")
        state = self.state_of(snap.gpu_uuid)
        if state is not None:
            behind = state.last_ts.timestamp() - ts
            if behind > self.max_backward_skew_s:
                return self._reject(prog, topic, partition, offset, key, value,
                                    f"ts {format_ts(snap.ts)} is {behind:.0f} s behind the GPU's last ts "
                                    f"{format_ts(state.last_ts)} (limit {self.max_backward_skew_s:g} s)",
                                    "clock_backward")
            if behind >= 0:
                prog.duplicates += 1
                return DUPLICATE
        prog.snapshots += 1
        self._instance_samples += len(snap.instances)
        fold_snapshot(snap, self._agg)
        events, new_state = diff_layout(state, snap, self._book, partition, offset)
        if events:
            self._events.extend(events)
        self._new_states[snap.gpu_uuid] = new_state
        seen = self._gpus.get(snap.gpu_uuid)
        if seen is None:
            self._gpus[snap.gpu_uuid] = GpuSeen(snap.cluster, snap.host, snap.gpu_index, snap.gpu_model,
                                               snap.total_slices, snap.mig_enabled, snap.ts, snap.ts)
        else:
            seen.cluster, seen.host, seen.gpu_index = snap.cluster, snap.host, snap.gpu_index
            seen.gpu_model, seen.total_slices, seen.mig_enabled = snap.gpu_model, snap.total_slices, snap.mig_enabled
            seen.last_seen = snap.ts  # ts only increases per GPU once duplicates are out
        return MERGED

    def refuse(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
               reason: str) -> str:
        """Account for a record the database refused (rule 6); returns DEAD_LETTER."""
        return self._reject(self._advance(topic, partition, offset), topic, partition, offset, key, value, reason,
                            "db_refused")

    def _advance(self, topic: str, partition: int, offset: int) -> PartitionProgress:
        tp = (topic, partition)
        prog = self._progress.get(tp)
        if prog is None:
            prog = self._progress[tp] = PartitionProgress(self.stored_offsets.get(tp), offset + 1)
        prog.next_offset = offset + 1
        return prog

    def _reject(self, prog: PartitionProgress, topic: str, partition: int, offset: int, key: bytes | None,
                value: bytes | None, reason: str, kind: str) -> str:
        prog.dead_letters += 1
        self._dead.append(DeadLetter(topic, partition, offset, key, value or b"", reason, kind))
        return DEAD_LETTER

    def __len__(self) -> int:
        return sum(p.snapshots + p.duplicates + p.dead_letters for p in self._progress.values())

    def finish(self) -> FoldedBatch:
        """The batch at every grain (1h and 1d rolled up from the 1-minute partials)."""
        aggs: dict[str, Aggregates] = {}
        finer = self._agg
        for grain, width in GRAINS.items():
            # Each grain from the next finer one: exact (merge is associative) and fewer rows to merge.
            finer = aggs[grain] = finer if not aggs else rollup(finer, width)
        return FoldedBatch(aggs, self._events, self._book, self._gpus, self._new_states, self._dead,
                           self._progress, self._instance_samples)
