"""MIG layout tracking: events and validity intervals from consecutive snapshots of one GPU.

A snapshot carries its GPU's whole layout, so a change is the diff of two consecutive
snapshots of the same GPU. Rules:

- The first snapshot of a GPU establishes its layout: intervals are opened, no events.
- An instance (keyed by GI id) present now but not before is ``created``; present before but
  not now is ``destroyed``; present in both with another profile or slice count is
  ``profile_changed``; with another tenant (namespace, pod) is ``tenant_changed`` (both
  events when both changed). A container change alone is not a tenant change.
- MIG mode switching on or off is ``mig_enabled`` / ``mig_disabled`` (gi_id None, before/after
  = the whole layouts), followed by the instance events it implies: the whole-GPU
  pseudo-instance (gi_id -1) is destroyed and the MIG instances created, or the reverse.
- An instance's validity interval closes at the ts of the first snapshot that no longer
  shows it as it was (destroyed, profile or tenant changed) and a new one opens there if it
  goes on. A GPU with MIG on and no instances simply has no open interval (allocation 0).
- An interval records where the instance sits (``placement_start``, in memory slices) as the
  snapshot that opened it reports it (NVML ``placement.start``, the simulator; None when the
  source does not say). The driver ties a GI id to its placement, so a move is a destroy and
  a create; a move that kept GI id, profile and tenant would go unseen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from collector.snapshot import Snapshot

__all__ = [
    "EVENTS",
    "Slot",
    "GpuState",
    "LayoutEvent",
    "Interval",
    "IntervalBook",
    "layout_of",
    "signature_of",
    "diff_layout",
]

# A GPU has at most 8 memory slices, so a placement start is 0..7.
_MEMORY_SLICES_MAX = 8

EVENTS = ("created", "destroyed", "profile_changed", "tenant_changed", "mig_enabled", "mig_disabled")

# A layout signature: what must be equal for two snapshots to have the same layout.
Signature = tuple[bool, tuple[tuple[int, str, int, str, str, str], ...]]


class Slot(NamedTuple):
    """One instance as the layout sees it (no metrics)."""

    gi_id: int
    profile: str
    slices: int
    namespace: str
    pod: str
    container: str

    def to_json(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_json(cls, gi_id: int, d: dict[str, Any]) -> Slot:
        return cls(gi_id, str(d["profile"]), int(d["slices"]), d.get("namespace", ""), d.get("pod", ""),
                   d.get("container", ""))


@dataclass(slots=True)
class GpuState:
    """What the processor remembers of a GPU between snapshots (table ``gpu_state``)."""

    last_ts: datetime
    mig_enabled: bool
    layout: dict[int, Slot]
    source_partition: int | None = None
    source_offset: int | None = None
    signature: Signature | None = field(default=None, compare=False)
    # Billing (processor.timeline): the GPU's billed time as [start, end] µs pairs; the stored
    # row's version (0 = no row yet), which the sink's fence compares; the last feed
    # ("source@host") that fed the GPU. Set by processor.fold, not by diff_layout.
    billed: list[list[int]] = field(default_factory=list, compare=False)
    version: int = field(default=0, compare=False)
    feed: str = field(default="", compare=False)

    def layout_json(self) -> dict[str, Any]:
        return {str(gi): slot.to_json() for gi, slot in sorted(self.layout.items())}

    @classmethod
    def from_row(cls, last_ts: datetime, mig_enabled: bool, layout: dict[str, Any],
                 partition: int | None = None, offset: int | None = None,
                 billed: list[list[int]] | None = None, version: int = 0, feed: str = "") -> GpuState:
        slots = {int(gi): Slot.from_json(int(gi), d) for gi, d in layout.items()}
        state = cls(last_ts, mig_enabled, slots, partition, offset)
        state.signature = (mig_enabled, tuple(sorted(slots.values())))
        state.billed = [[int(a), int(b)] for a, b in billed or ()]
        state.version = version
        state.feed = feed
        return state


class LayoutEvent(NamedTuple):
    """One row of ``layout_events``."""

    ts: datetime
    gpu_uuid: str
    cluster: str
    event: str
    gi_id: int | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    source_partition: int | None
    source_offset: int | None


@dataclass(slots=True)
class Interval:
    """One row of ``instance_intervals`` opened in this batch (``valid_to`` None = still open)."""

    gpu_uuid: str
    gi_id: int
    cluster: str
    profile: str
    slices: int
    total_slices: int
    namespace: str
    pod: str
    container: str
    valid_from: datetime
    valid_to: datetime | None = None
    placement_start: int | None = None


@dataclass(slots=True)
class IntervalBook:
    """Interval changes of one batch, composed in memory so the database sees few statements.

    ``closes`` ends intervals opened by earlier batches (rows already in the database);
    ``opened`` are this batch's new rows, some already closed again within the batch.
    """

    closes: dict[tuple[str, int], datetime] = field(default_factory=dict)
    opened: list[Interval] = field(default_factory=list)
    _open_now: dict[tuple[str, int], Interval] = field(default_factory=dict)

    def open(self, snap: Snapshot, slot: Slot) -> None:
        placement = next((i.placement_start for i in snap.instances if i.gi_id == slot.gi_id), None)
        if placement is not None and not 0 <= placement < _MEMORY_SLICES_MAX:
            placement = None  # a source's garbage is not a placement; the stranded report says "estimate"
        iv = Interval(snap.gpu_uuid, slot.gi_id, snap.cluster, slot.profile, slot.slices, snap.total_slices,
                      slot.namespace, slot.pod, slot.container, snap.ts, placement_start=placement)
        self.opened.append(iv)
        self._open_now[(snap.gpu_uuid, slot.gi_id)] = iv

    def close(self, gpu_uuid: str, gi_id: int, ts: datetime) -> None:
        iv = self._open_now.pop((gpu_uuid, gi_id), None)
        if iv is not None:
            iv.valid_to = ts
        else:
            self.closes[(gpu_uuid, gi_id)] = ts

    def __len__(self) -> int:
        return len(self.closes) + len(self.opened)


def layout_of(snap: Snapshot) -> dict[int, Slot]:
    return {
        i.gi_id: Slot(i.gi_id, i.profile, i.slices, i.tenant.namespace, i.tenant.pod, i.tenant.container)
        for i in snap.instances
    }


def signature_of(snap: Snapshot) -> Signature:
    """Cheap equality key of a snapshot's layout: the hot path compares this and nothing else.

    Instances in snapshot order (no sort: sources emit a stable order); a reordered but
    otherwise equal layout merely takes the slow path, which finds no change.
    """
    return (
        snap.mig_enabled,
        tuple([(i.gi_id, i.profile, i.slices, i.tenant.namespace, i.tenant.pod, i.tenant.container)
               for i in snap.instances]),
    )


def _whole(mig_enabled: bool, layout: dict[int, Slot]) -> dict[str, Any]:
    return {"mig_enabled": mig_enabled, "instances": [s.to_json() for _, s in sorted(layout.items())]}


def diff_layout(
    prev: GpuState | None,
    snap: Snapshot,
    book: IntervalBook,
    partition: int | None = None,
    offset: int | None = None,
    sig: Signature | None = None,
) -> tuple[list[LayoutEvent], GpuState]:
    """Events between ``prev`` and ``snap`` (appending interval changes to ``book``) and the new state.

    ``snap`` must be newer than ``prev.last_ts`` (duplicates are filtered before this). ``sig``:
    ``snap``'s :func:`signature_of`, when the caller has it already.
    """
    if sig is None:
        sig = signature_of(snap)
    if prev is not None and prev.signature == sig:
        # Hot path: nothing changed, only the clock moved on.
        return [], GpuState(snap.ts, snap.mig_enabled, prev.layout, partition, offset, sig)
    now = layout_of(snap)
    state = GpuState(snap.ts, snap.mig_enabled, now, partition, offset, sig)
    if prev is None:
        for slot in now.values():
            book.open(snap, slot)
        return [], state

    events: list[LayoutEvent] = []

    def emit(event: str, gi_id: int | None, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        events.append(LayoutEvent(snap.ts, snap.gpu_uuid, snap.cluster, event, gi_id, before, after, partition, offset))

    before_layout = prev.layout
    if prev.mig_enabled != snap.mig_enabled:
        emit("mig_enabled" if snap.mig_enabled else "mig_disabled", None,
             _whole(prev.mig_enabled, before_layout), _whole(snap.mig_enabled, now))
    for gi, old in sorted(before_layout.items()):
        new = now.get(gi)
        if new is None:
            emit("destroyed", gi, old.to_json(), None)
            book.close(snap.gpu_uuid, gi, snap.ts)
            continue
        profile_changed = (old.profile, old.slices) != (new.profile, new.slices)
        tenant_changed = (old.namespace, old.pod) != (new.namespace, new.pod)
        if profile_changed:
            emit("profile_changed", gi, old.to_json(), new.to_json())
        if tenant_changed:
            emit("tenant_changed", gi, old.to_json(), new.to_json())
        if profile_changed or tenant_changed:
            book.close(snap.gpu_uuid, gi, snap.ts)
            book.open(snap, new)
    for gi, new in sorted(now.items()):
        if gi not in before_layout:
            emit("created", gi, None, new.to_json())
            book.open(snap, new)
    return events, state
