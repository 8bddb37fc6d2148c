"""MIG placement: where on a GPU a profile may start, and how instances pack.

Why: a free slice is only usable by a profile that may *start* there. The driver lists the
allowed starts per profile (``nvidia-smi mig -lgipp``, e.g. on an H100 NVL
``{0,2,4}:2`` for 2g.24gb), in memory slices (8 on 7-slice GPUs, 4 on 4-slice GPUs). They
follow one rule, checked against that real output in ``tests/processor/test_placement.py``:
a profile of ``c`` compute slices and ``m`` memory slices may start at every multiple of
``m`` with ``start + m <= memory slices`` and ``start + c <= compute slices``.

Where the source reports where an instance sits (``placement_start``, stored in the layout
history since migration 033), :func:`placed` rebuilds the real occupancy. Where it does not,
:func:`best_fit` estimates the best case: of every valid placement of the instances present,
the one leaving room for the most instances of a wanted profile (a 3g at start 4 instead of 0
frees a slice for a 1g). What even that placement cannot use is stranded by the layout
itself, whatever the driver did. :func:`pack` is the simple largest-first, lowest-start
placement. Results built on them are labelled estimates.
"""

from __future__ import annotations

from collections.abc import Sequence

from warehouse import profiles

__all__ = ["memory_slots", "allowed_starts", "pack", "placed", "fits", "best_fit"]

# Memory slices of a profile when the profile table does not know the model: the size the
# placement tables give each compute size (3g and 4g both take half the memory).
_FALLBACK_SLOTS = {1: 1, 2: 2, 3: 4, 4: 4, 7: 8, 8: 8}


def memory_slots(gpu_model: str, profile: str, compute: int, total: int) -> int:
    """Memory slices the profile occupies (its placement size)."""
    slots = profiles.memory_slices_total(total)
    if compute >= total:
        return slots
    share = profiles.memory_share(gpu_model, profile)
    if share is not None:
        return max(1, int(share * slots))
    return min(slots, _FALLBACK_SLOTS.get(compute, compute))


def allowed_starts(compute: int, size: int, total: int) -> list[int]:
    """Start slots (in memory slices) of a profile of ``compute`` slices and placement ``size``."""
    slots = profiles.memory_slices_total(total)
    return [s for s in range(0, slots, size) if s + size <= slots and s + compute <= total]


def _place(occupied: list[bool], compute: int, size: int, total: int) -> bool:
    for s in allowed_starts(compute, size, total):
        if not any(occupied[s:s + size]):
            occupied[s:s + size] = [True] * size
            return True
    return False


def pack(gpu_model: str, total: int, instances: Sequence[tuple[str, int]]) -> list[bool]:
    """Occupied memory slices after placing ``(profile, compute slices)`` largest first (an estimate)."""
    occupied = [False] * profiles.memory_slices_total(total)
    for profile, compute in sorted(instances, key=lambda i: -i[1]):
        _place(occupied, compute, memory_slots(gpu_model, profile, compute, total), total)
    return occupied


def placed(gpu_model: str, total: int, instances: Sequence[tuple[str, int, int]]) -> list[bool] | None:
    """Occupied memory slices of ``(profile, compute slices, placement start)`` as reported, or None
    when they cannot be where they say (a start MIG does not allow, two instances on one slice:
    e.g. two layouts seen in one hour)."""
    occupied = [False] * profiles.memory_slices_total(total)
    for profile, compute, start in instances:
        size = memory_slots(gpu_model, profile, compute, total)
        if start not in allowed_starts(compute, size, total) or any(occupied[start:start + size]):
            return None
        occupied[start:start + size] = [True] * size
    return occupied


def fits(gpu_model: str, total: int, occupied: Sequence[bool], profile: str, compute: int) -> int:
    """How many more instances of ``profile`` the free slices can host."""
    free = list(occupied)
    size = memory_slots(gpu_model, profile, compute, total)
    n = 0
    while _place(free, compute, size, total):
        n += 1
    return n


def best_fit(gpu_model: str, total: int, instances: Sequence[tuple[str, int]], profile: str, compute: int) -> int:
    """Most instances of ``profile`` that fit beside ``instances`` over all their valid placements.

    A GPU has at most 8 memory slices and instances, so trying every placement (largest first,
    backtracking) is a few hundred steps. If the instances have no valid placement together
    (two layouts seen in one hour), the largest-first packing is used instead.
    """
    items = sorted(((compute_i, memory_slots(gpu_model, name, compute_i, total)) for name, compute_i in instances),
                   key=lambda i: (-i[1], -i[0]))
    occupied = [False] * profiles.memory_slices_total(total)
    best = -1

    def place(k: int) -> None:
        nonlocal best
        if k == len(items):
            best = max(best, fits(gpu_model, total, occupied, profile, compute))
            return
        c, size = items[k]
        for s in allowed_starts(c, size, total):
            if not any(occupied[s:s + size]):
                occupied[s:s + size] = [True] * size
                place(k + 1)
                occupied[s:s + size] = [False] * size

    place(0)
    if best < 0:
        return fits(gpu_model, total, pack(gpu_model, total, instances), profile, compute)
    return best
