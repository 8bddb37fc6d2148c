"""Compute slices: how much of a GPU a MIG instance is, without any table of profile names.

Real exporters report profile names a lookup table would miss (``7g.79gb``, ``1g.18gb+me``,
``1c.3g.40gb``, ``<<<NULL>>>``), and pipelines decorate them (``MIG 1g.10gb``,
``nvidia.com/mig-3g.40gb``, ``[2g.20gb]``, upper case), so the slice count comes from the
``Ng.Mgb`` token wherever it stands in the name, and the GPU's total from its model (A30 and RTX PRO 6000 Blackwell: 4; every other MIG GPU: 7),
overridable per model because new boards appear faster than releases.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["DEFAULT_TOTAL_SLICES", "profile_slices", "total_slices_for_model"]

DEFAULT_TOTAL_SLICES = 7
# Substrings of a model name (upper-cased, spaces/dashes ignored) whose GPUs have 4 compute slices.
_FOUR_SLICE_MODELS = ("A30", "RTXPRO6000", "RTXPRO5000", "RTXPRO4500")

# The "Ng.Mgb" token anywhere in the name: "3g.40gb", "1g.18gb+me", "1g.23.5gb", "MIG 1g.10gb",
# "mig-3g.40gb", "[2g.20gb]", "1C.3G.40GB" (compute-instance profile: the first token is the GI's
# "3g", the "1c." before it is not one). Not preceded by a digit, so "11g.10gb" is not read as 1g.
_PROFILE_RE = re.compile(r"(?<![0-9])([0-9]+)g\.[0-9]+(?:\.[0-9]+)?gb", re.IGNORECASE)


def profile_slices(profile: str) -> int | None:
    """Compute slices of a GI profile name, or None when the name carries none (``<<<NULL>>>``)."""
    m = _PROFILE_RE.search(profile)
    if not m:
        return None
    n = int(m.group(1))
    return n if 1 <= n <= 8 else None


def total_slices_for_model(model: str, overrides: Mapping[str, int] | None = None) -> int:
    """Compute slices of a whole GPU of this model; ``overrides`` maps a model substring to a total."""
    if overrides:
        for key, total in overrides.items():
            if key.upper() in model.upper():
                return total
    squashed = re.sub(r"[\s_-]", "", model.upper())
    if any(k in squashed for k in _FOUR_SLICE_MODELS):
        return 4
    return DEFAULT_TOTAL_SLICES
