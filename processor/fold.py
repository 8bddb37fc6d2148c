"""One micro-batch folded in memory: the pure part of the processor, no I/O.

The consumer feeds records in offset order per partition; :class:`BatchFold` decides for
each one whether it is merged, a duplicate, or a dead letter, folds merged snapshots into
1-minute partials, diffs layouts, and tracks per-partition progress. :meth:`BatchFold.finish`
returns a :class:`FoldedBatch` that the sink writes in one transaction.

Ordering, clock and time rules (applied per GPU, in this order):

1. A record that does not decode into a valid v1 snapshot is a dead letter (reason from
   ``BadSnapshot``); so is one whose Kafka key is not its ``gpu_uuid`` (``key_mismatch``): a
   producer not keyed by GPU spreads a GPU over partitions, and the warehouse must say so.
2. A snapshot whose ts is more than ``max_future_skew_s`` (default 300 s) ahead of the
   processor's clock is a dead letter: merging it would put usage into a future bucket (a
   future month of chargeback) and make every real snapshot after it look like a duplicate.
3. A snapshot whose ts is more than ``max_age_s`` (default 10 years; 0 = no limit) behind the
   processor's clock is a dead letter: a GPU node whose clock was reset (to 1970, or to a
   firmware build date) would otherwise open its history, or a brand-new GPU's, in a month
   that was billed long ago.
4. History or live: a snapshot from a history source (:data:`HISTORY_SOURCES`, the
   Prometheus backfill) is history; any other is live. A live snapshot whose ts is more
   than ``max_backward_skew_s`` (default 3600 s) behind its GPU's last ts is a dead letter
   (``clock_backward``): a collector clock that jumped back. History is never
   ``clock_backward``: it may reach any distance back (rule 3 still applies).
5. Covered interval: ``(last_ts, ts]`` when ts is newer than the GPU's last ts by at most
   the gap limit (``max_gap_s``; 0 = 3 × the snapshot's ``interval_s``); otherwise (the
   GPU's first snapshot, one after a longer gap, history, a late or re-sent one)
   ``(ts - interval_s, ts]``.
6. Seconds of the covered interval already billed for the GPU are trimmed (never billed
   twice, whatever stream brought them: processor.timeline); the rest is billed, split at
   1-minute bucket edges in proportion to time, and fills holes (unmetered time) when it
   lies inside the GPU's life. A snapshot that bills nothing is a duplicate; one that bills
   part of its interval is counted as trimmed; one billed whole as merged.
7. Only a snapshot newer than the GPU's last ts moves the GPU's state on (last ts, layout,
   layout events and intervals); older ones bill their time and leave the state's clock and
   layout alone, so ``last_ts`` never moves backward.
8. A GPU whose snapshots come from a second feed (``source@host``) that overlaps the first
   (trimmed, or arriving sooner than its own interval) is reported in ``multi_fed`` so the
   processor can log it once with both names.
9. A record the database refused for a data reason (found by bisecting a refused batch, see
   ``processor.refusals``) is a dead letter ``db_refused`` with the server's message and
   SQLSTATE: :meth:`BatchFold.refuse`.

Every consumed record is counted exactly once, so per partition:
records consumed = merged + trimmed + duplicates + dead letters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from collector.snapshot import Snapshot, format_ts
from migmeter.errors import BadSnapshot
from processor.aggregate import GRAINS, Aggregates, add_unmetered, fold_snapshot
from processor.grains import FOLD_GRAIN
from processor.layout import GpuState, IntervalBook, LayoutEvent, diff_layout, signature_of
from processor.timeline import US, bill, split, to_us

__all__ = [
    "DEFAULT_MAX_FUTURE_SKEW_S",
    "DEFAULT_MAX_BACKWARD_SKEW_S",
    "DEFAULT_MAX_AGE_S",
    "DEFAULT_GAP_FACTOR",
    "HISTORY_SOURCES",
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
# A snapshot that follows its GPU's previous one within this many of its own intervals covers
# the whole time since: rounds that overrun and skip a slot, or a collector restart, still
# bill every second. A longer silence is an outage: the time is unmetered, not billed.
DEFAULT_GAP_FACTOR = 3.0
# Sources that replay the past (`migmeter collect --source prometheus`): their snapshots fill
# holes in a GPU's billed time at any age instead of being rejected as a clock that jumped back.
HISTORY_SOURCES = frozenset({"prometheus"})

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
    kind: str  # decode | key_mismatch | clock_future | clock_past | clock_backward | db_refused: a metric label


@dataclass(slots=True)
class PartitionProgress:
    """Where a partition's batch started (the stored offset, None = no row yet) and what it consumed."""

    expected: int | None
    next_offset: int
    snapshots: int = 0  # billed whole
    duplicates: int = 0  # billed nothing: all of its time was billed already
    dead_letters: int = 0
    trimmed: int = 0  # billed in part
    trimmed_seconds: float = 0.0  # seconds not billed again (of trimmed records and duplicates)
    instance_samples: int = 0  # of the snapshots that billed time (whole or in part)

    @property
    def records(self) -> int:
        return self.snapshots + self.trimmed + self.duplicates + self.dead_letters


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

    aggregates: Aggregates  # 1-minute partials (the sink rolls 1h and 1d up from them)
    events: list[LayoutEvent]
    intervals: IntervalBook
    gpus: dict[str, GpuSeen]
    states: dict[str, GpuState]  # new state of every GPU merged in this batch (version = base + 1)
    dead_letters: list[DeadLetter]
    progress: dict[tuple[str, int], PartitionProgress]
    multi_fed: dict[str, tuple[str, str]] = field(default_factory=dict)  # GPU -> (feed before, new feed)
    # GPU -> the partitions its billed snapshots came from (one, unless a producer is not keyed
    # by GPU or the topic's partitions grew): what :meth:`split` keeps together.
    gpu_partitions: dict[str, set[tuple[str, int]]] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(p.records for p in self.progress.values())

    @property
    def instance_samples(self) -> int:
        return sum(p.instance_samples for p in self.progress.values())

    def split(self, n: int) -> list[FoldedBatch]:
        """This batch as at most ``n`` batches over disjoint partitions and disjoint GPUs, each
        one transaction of its own (``processor.sink``): offsets, GPU states and usage rows are
        all per partition or per GPU, so each part is exactly-once by itself and parts can be
        written at once on separate connections.

        1. Partitions that share a GPU (one billed from two partitions) form one group.
        2. Groups go to the part with the fewest records so far, largest group first.
        3. Every row, event, interval, state and dead letter goes to its GPU's (or its
           record's) part; nothing is copied but the containers.
        """
        parent = {tp: tp for tp in self.progress}

        def root(tp: tuple[str, int]) -> tuple[str, int]:
            while parent[tp] != tp:
                parent[tp] = parent[parent[tp]]
                tp = parent[tp]
            return tp

        for tps in self.gpu_partitions.values():
            if len(tps) > 1:
                first, *rest = tps
                for tp in rest:
                    parent[root(tp)] = root(first)
        groups: dict[tuple[str, int], list[tuple[str, int]]] = {}
        for tp in self.progress:
            groups.setdefault(root(tp), []).append(tp)
        if n <= 1 or len(groups) <= 1:
            return [self]
        sized = sorted(((sum(self.progress[tp].records for tp in m), m) for m in groups.values()),
                       key=lambda sm: -sm[0])
        loads = [0] * min(n, len(groups))
        part_of: dict[tuple[str, int], int] = {}
        for size, members in sized:
            i = loads.index(min(loads))
            loads[i] += size
            part_of.update(dict.fromkeys(members, i))
        of_gpu = {uuid: part_of[next(iter(tps))] for uuid, tps in self.gpu_partitions.items()}
        parts = [FoldedBatch(Aggregates.empty(), [], IntervalBook(), {}, {}, [], {}) for _ in loads]
        for tp, prog in self.progress.items():
            parts[part_of[tp]].progress[tp] = prog
        for attr in ("instances", "tenants", "gpus"):
            for key, sums in getattr(self.aggregates, attr).items():
                getattr(parts[of_gpu[key[1]]].aggregates, attr)[key] = sums
        for e in self.events:
            parts[of_gpu[e.gpu_uuid]].events.append(e)
        for (uuid, gi), ts in self.intervals.closes.items():
            parts[of_gpu[uuid]].intervals.closes[(uuid, gi)] = ts
        for iv in self.intervals.opened:
            parts[of_gpu[iv.gpu_uuid]].intervals.opened.append(iv)
        for name in ("gpus", "states", "multi_fed", "gpu_partitions"):
            for uuid, value in getattr(self, name).items():
                getattr(parts[of_gpu[uuid]], name)[uuid] = value
        for d in self.dead_letters:
            parts[part_of[(d.topic, d.partition)]].dead_letters.append(d)
        return parts


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
    max_gap_s: float = 0.0  # 0 = DEFAULT_GAP_FACTOR × the snapshot's interval_s
    _agg: Aggregates = field(default_factory=Aggregates.empty)
    _events: list[LayoutEvent] = field(default_factory=list)
    _book: IntervalBook = field(default_factory=IntervalBook)
    _gpus: dict[str, GpuSeen] = field(default_factory=dict)
    _new_states: dict[str, GpuState] = field(default_factory=dict)
    _dead: list[DeadLetter] = field(default_factory=list)
    _progress: dict[tuple[str, int], PartitionProgress] = field(default_factory=dict)
    _multi_fed: dict[str, tuple[str, str]] = field(default_factory=dict)
    _feeds: dict[tuple[str, str], str] = field(default_factory=dict)
    _gpu_partitions: dict[str, set[tuple[str, int]]] = field(default_factory=dict)

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
        if key != snap.key:
            shown = "none" if key is None else repr(key[:80])
            return self._reject(prog, topic, partition, offset, key, value,
                                f"record key {shown} is not the snapshot's gpu_uuid {snap.gpu_uuid!r}: "
                                f"the producer must key records by GPU UUID", "key_mismatch")
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
        uuid = snap.gpu_uuid
        state = self.state_of(uuid)
        last = state.last_ts.timestamp() if state is not None else None
        if state is not None and last is not None and snap.source not in HISTORY_SOURCES:
            behind = last - ts
            if behind > self.max_backward_skew_s:
                return self._reject(prog, topic, partition, offset, key, value,
                                    f"ts {format_ts(snap.ts)} is {behind:.0f} s behind the GPU's last ts "
                                    f"{format_ts(state.last_ts)} (limit {self.max_backward_skew_s:g} s)",
                                    "clock_backward")
        tps = self._gpu_partitions.get(uuid)
        if tps is None:
            self._gpu_partitions[uuid] = {(topic, partition)}
        else:
            tps.add((topic, partition))
        return self._bill(prog, snap, state, ts, last, partition, offset)

    def _bill(self, prog: PartitionProgress, snap: Snapshot, state: GpuState | None, ts: float,
              last: float | None, partition: int, offset: int) -> str:
        """Rules 5-8: bill the snapshot's uncovered time and move the GPU's state on."""
        uuid = snap.gpu_uuid
        new = self._new_states.get(uuid)
        if new is None:
            # First touch in this batch: a private copy of the billed set (the input is read-only).
            # A state written before billing was recorded (no set): everything up to its last
            # ts counts as billed, since nothing says which of those seconds were.
            spans = [list(p) for p in state.billed] if state is not None and state.billed else (
                [[0, to_us(last)]] if last is not None else [])
            version = state.version + 1 if state is not None else 1
        else:
            spans, version = new.billed, new.version
        ts_us = to_us(ts)
        newer = last is None or ts > last
        gap = self.max_gap_s or DEFAULT_GAP_FACTOR * snap.interval_s
        start_us = to_us(last) if last is not None and newer and ts - last <= gap else ts_us - to_us(snap.interval_s)
        billed, trimmed_us, unmetered = bill(spans, start_us, ts_us)
        if trimmed_us:
            prog.trimmed_seconds += trimmed_us / US
        feed = self._feed(snap.source, snap.host)
        before = new.feed if new is not None else state.feed if state is not None else ""
        if before != feed and before and (trimmed_us or (last is not None and 0 < ts - last < snap.interval_s)):
            self._multi_fed.setdefault(uuid, (before, feed))
        if not billed:
            prog.duplicates += 1
            return DUPLICATE
        if trimmed_us:
            prog.trimmed += 1
        else:
            prog.snapshots += 1
        prog.instance_samples += len(snap.instances)
        width = GRAINS[FOLD_GRAIN]
        if len(billed) == 1:
            parts = split(billed[0][0], billed[0][1], width)
        else:
            parts = [p for a, b in billed for p in split(a, b, width)]
        sig = signature_of(snap)  # the layout, for the fold's rows and the layout diff alike
        fold_snapshot(snap, self._agg, parts, sig)
        for a, b, sign in unmetered:
            add_unmetered(snap, self._agg, split(a, b, width), sign)
        if state is None or newer:
            events, new_state = diff_layout(state, snap, self._book, partition, offset, sig)
            if events:
                self._events.extend(events)
            new_state.feed = feed
        else:
            new_state = GpuState(state.last_ts, state.mig_enabled, state.layout, state.source_partition,
                                 state.source_offset, state.signature)
            new_state.feed = before
        new_state.billed, new_state.version = spans, version
        self._new_states[uuid] = new_state
        seen = self._gpus.get(uuid)
        if seen is None:
            self._gpus[uuid] = GpuSeen(snap.cluster, snap.host, snap.gpu_index, snap.gpu_model,
                                       snap.total_slices, snap.mig_enabled, snap.ts, snap.ts)
        elif ts >= seen.last_seen.timestamp():
            seen.cluster, seen.host, seen.gpu_index = snap.cluster, snap.host, snap.gpu_index
            seen.gpu_model, seen.total_slices, seen.mig_enabled = snap.gpu_model, snap.total_slices, snap.mig_enabled
            seen.last_seen = snap.ts
        else:
            seen.first_seen = min(seen.first_seen, snap.ts)
        return MERGED

    def _feed(self, source: str, host: str) -> str:
        """``source@host``, made once per pair and batch (the hot path compares it per snapshot)."""
        feed = self._feeds.get((source, host))
        if feed is None:
            feed = self._feeds[(source, host)] = f"{source}@{host}"
        return feed

    def refuse(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
               reason: str) -> str:
        """Account for a record the database refused (rule 9); returns DEAD_LETTER."""
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
        return sum(p.records for p in self._progress.values())

    def finish(self) -> FoldedBatch:
        """The batch: its 1-minute partials, layout, states, dead letters and progress."""
        return FoldedBatch(self._agg, self._events, self._book, self._gpus, self._new_states, self._dead,
                           self._progress, self._multi_fed, self._gpu_partitions)
