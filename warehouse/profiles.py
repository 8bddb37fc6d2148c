"""The MIG profile table: which profiles a GPU model offers, their compute and memory share.

Why a table here when the metering path avoids one (``collector/slices.py``): pricing by
memory share, right-sizing and stranded-capacity reports must know what a model *could* run
(a profile the model does not offer must never be recommended) and how much memory a profile
holds. The rows are ``collector/data/mig_profiles.csv`` (a copy of the reference
``mig_profiles.csv``: real ``nvidia-smi mig -lgip`` output per model). Models are matched by
substrings of the reported name (``NVIDIA H100 80GB HBM3`` -> ``H100-80GB-SXM5``), first match
wins, as the simulator does; a model that matches nothing has no table (callers say so).

Memory slices: MIG splits memory into 8 slices on 7-compute-slice GPUs and 4 on 4-slice GPUs
(A30, RTX PRO 6000). A profile's memory share is its GB over the full GPU's GB, rounded to
whole memory slices (``1g.20gb`` on an 80 GB H100 = 2/8; ``1g.18gb`` on a 141 GB H200 = 1/8).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from importlib import resources

__all__ = ["Profile", "table_model", "profiles_for", "find_profile", "memory_slices_total", "memory_share",
           "compute_share"]

# (upper-cased substrings that must all occur in the reported model, table model); order matters:
# GH200 before H200 (it contains "H200"), the NVL/PCIe variants before the plain H100.
_MODEL_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("GH200",), "GH200 (H100-96GB)"),
    (("H200",), "H200-141GB (SXM5/NVL)"),
    (("H100", "NVL"), "H100-94GB (H100 NVL)"),
    (("H100", "PCIE"), "H100-80GB-PCIe"),
    (("H100",), "H100-80GB-SXM5"),
    (("B200",), "B200-180GB"),
    (("A100", "40GB"), "A100-SXM4-40GB"),
    (("A100",), "A100-80GB (SXM4/PCIe)"),
    (("A30",), "A30-24GB"),
    (("RTX", "PRO", "6000"), "RTX-PRO-6000-Blackwell-96GB"),
)


@dataclass(frozen=True, slots=True)
class Profile:
    """One GPU-instance profile a model offers (a row of ``mig_profiles.csv``)."""

    model: str
    name: str
    compute_slices: int
    total_compute_slices: int
    memory_gb: float
    sm_count: int | None
    max_instances: int


@cache
def _table() -> dict[str, tuple[Profile, ...]]:
    text = resources.files("collector").joinpath("data/mig_profiles.csv").read_text()
    rows: dict[str, list[Profile]] = {}
    for r in csv.DictReader(io.StringIO(text)):
        rows.setdefault(r["gpu_model"], []).append(Profile(
            r["gpu_model"], r["profile"], int(r["compute_slices"]), int(r["total_compute_slices"]),
            float(r["memory_gb"]), int(r["sm_count"]) if r["sm_count"] else None, int(r["max_instances"])))
    return {m: tuple(p) for m, p in rows.items()}


def table_model(reported_model: str) -> str | None:
    """The profile table's model for a model name as collectors report it, or None."""
    up = reported_model.upper().replace(" ", "")
    for keys, model in _MODEL_RULES:
        if all(k in up for k in keys):
            return model
    return None


def profiles_for(reported_model: str) -> tuple[Profile, ...]:
    """Every profile the model offers (empty when the model is not in the table)."""
    model = table_model(reported_model)
    return _table().get(model, ()) if model else ()


def find_profile(reported_model: str, profile: str) -> Profile | None:
    for p in profiles_for(reported_model):
        if p.name == profile.strip():
            return p
    return None


def memory_slices_total(total_compute_slices: int) -> int:
    return 8 if total_compute_slices == 7 else 4


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
