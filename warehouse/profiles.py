"""The MIG profile table as the warehouse reads it: compute and memory shares of a profile.

The table itself (which profiles a model offers) is :mod:`collector.profiles`, the one loader.

Memory slices: MIG splits memory into 8 slices on 7-compute-slice GPUs and 4 on 4-slice GPUs
(A30, RTX PRO 6000). A profile's memory share is its GB over the full GPU's GB, rounded to
whole memory slices (``1g.20gb`` on an 80 GB H100 = 2/8; ``1g.18gb`` on a 141 GB H200 = 1/8).
"""

from __future__ import annotations

from fractions import Fraction

from collector.profiles import Profile, find_profile, memory_slices_total, profiles_for, table_model

__all__ = ["Profile", "table_model", "profiles_for", "find_profile", "memory_slices_total", "memory_share",
           "compute_share"]


def compute_share(slices: int, total_slices: int) -> Fraction:
    return Fraction(slices, total_slices)


def memory_share(reported_model: str, profile: str) -> Fraction | None:
    """The profile's share of the GPU's memory in whole memory slices, or None when unknown."""
    known = profiles_for(reported_model)
    if not known:
        return None
    full = max(p.memory_gb for p in known)
    total = known[0].total_compute_slices
    p = find_profile(reported_model, profile)
    gb = p.memory_gb if p else _gb_of(profile)
    if gb is None:
        return None
    slices_total = memory_slices_total(total)
    n = max(1, min(slices_total, round(gb / full * slices_total)))
    return Fraction(n, slices_total)


def _gb_of(profile: str) -> float | None:
    # "1g.20gb", "1g.18gb+me": the number before "gb" in the second dot-part.
    try:
        return float(profile.split(".")[1].split("gb")[0])
    except (IndexError, ValueError):
        return None
