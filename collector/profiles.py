"""The MIG profile table: which profiles a GPU model offers, their slices, memory and SMs.

One loader for everyone who needs it: the simulator (``collector.sources.simulate``) builds its
fleet from it, and the warehouse prices by memory share, right-sizes and finds stranded capacity
with it (``warehouse.profiles``): a profile a model does not offer must never be recommended.
The metering path itself needs no table (``collector/slices.py``). The rows are
``collector/data/mig_profiles.csv`` (a copy of the reference ``mig_profiles.csv``: real
``nvidia-smi mig -lgip`` output per model). Models are matched by substrings of the reported
name (``NVIDIA H100 80GB HBM3`` -> ``H100-80GB-SXM5``), first match wins; a model that matches
nothing has no table (callers say so).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = ["Profile", "table_model", "profiles_for", "find_profile", "memory_slices_total"]

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


def memory_slices_total(total_compute_slices: int) -> int:
    """Memory slices of a MIG GPU: 8 on 7-compute-slice GPUs, 4 on 4-slice GPUs (A30, RTX PRO 6000).
    NVML's GPU-instance placements (``start``/``size``) count in these."""
    return 8 if total_compute_slices == 7 else 4


def find_profile(reported_model: str, profile: str) -> Profile | None:
    for p in profiles_for(reported_model):
        if p.name == profile.strip():
            return p
    return None
