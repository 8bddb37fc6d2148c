"""Placement rules against the real `nvidia-smi mig -lgipp` output of an H100 NVL."""

from __future__ import annotations

import re
from pathlib import Path


from warehouse import placement

# a copy of shared/reference/nvidia-smi/04-H100-NVL-94GB-mig-lgipp.txt (its .source.txt says where it is from)
LGIPP = Path(__file__).parent / "nvidia_smi_reference" / "04-H100-NVL-94GB-mig-lgipp.txt"
H100_NVL = "NVIDIA H100 NVL"
# profile IDs of that output (its -lgip, 03-H100-NVL-94GB-mig-lgip.txt) -> (name, compute slices)
IDS = {19: ("1g.12gb", 1), 20: ("1g.12gb+me", 1), 15: ("1g.24gb", 1), 14: ("2g.24gb", 2), 9: ("3g.47gb", 3),
       5: ("4g.47gb", 4), 0: ("7g.94gb", 7)}


def _lgipp() -> dict[int, tuple[list[int], int]]:
    text = LGIPP.read_text()
    out = {}
    for m in re.finditer(r"Profile ID\s+(\d+) Placements?\s*: \{([\d,]+)\}:(\d+)", text):
        out[int(m.group(1))] = ([int(s) for s in m.group(2).split(",")], int(m.group(3)))
    return out


def test_rule_reproduces_the_driver_placements() -> None:
    real = _lgipp()
    assert set(real) == set(IDS)
    for pid, (starts, size) in real.items():
        name, compute = IDS[pid]
        assert placement.memory_slots(H100_NVL, name, compute, 7) == size, name
        assert placement.allowed_starts(compute, size, 7) == starts, name


def test_fragmented_free_slices_cannot_host_a_2g() -> None:
    # 3g.47gb at 0 (slots 0-3), 1g.12gb at 4: 3 compute slices free (5, 6 + slot 7), but a 2g may start
    # only at 0, 2 or 4 -> none fits; two 2g.24gb at 0 and 2 leave 4-7 -> one more 2g fits.
    occ = placement.pack(H100_NVL, 7, [("3g.47gb", 3), ("1g.12gb", 1)])
    assert occ == [True] * 5 + [False] * 3
    assert placement.fits(H100_NVL, 7, occ, "2g.24gb", 2) == 0
    assert placement.fits(H100_NVL, 7, occ, "1g.12gb", 1) == 2
    assert placement.fits(H100_NVL, 7, placement.pack(H100_NVL, 7, [("2g.24gb", 2)] * 2), "2g.24gb", 2) == 1


def test_best_fit_moves_a_3g_to_start_4_to_free_a_slice() -> None:
    # A100-40GB: 3g.20gb + 2g.10gb + 1g.5gb. Largest first at the lowest start (3g at 0, 2g at 4, 1g at 6)
    # leaves no room for another 1g.5gb; 3g at 4, 2g at 0, 1g at 2 leaves start 3 free: the valid
    # 3g+2g+1g+1g layout of NVIDIA's MIG user guide.
    layout = [("3g.20gb", 3), ("2g.10gb", 2), ("1g.5gb", 1)]
    a100 = "NVIDIA A100-SXM4-40GB"
    assert placement.fits(a100, 7, placement.pack(a100, 7, layout), "1g.5gb", 1) == 0
    assert placement.best_fit(a100, 7, layout, "1g.5gb", 1) == 1
    assert placement.best_fit(a100, 7, layout, "2g.10gb", 2) == 0
