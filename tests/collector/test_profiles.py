"""The one MIG profile table (``collector.profiles``) and its users: the simulator, the NVML fake."""

from __future__ import annotations

import pytest

from collector import profiles
from collector.sources import simulate
from tests.collector.sources.fake_pynvml import a30_profiles


@pytest.mark.parametrize(("reported", "table"), [
    ("NVIDIA H100 80GB HBM3", "H100-80GB-SXM5"),
    ("NVIDIA H100 PCIe", "H100-80GB-PCIe"),
    ("NVIDIA H100 NVL", "H100-94GB (H100 NVL)"),
    ("NVIDIA GH200 480GB", "GH200 (H100-96GB)"),  # contains "H200": GH200 is matched first
    ("NVIDIA A100-SXM4-40GB", "A100-SXM4-40GB"),
    ("NVIDIA A100 80GB PCIe", "A100-80GB (SXM4/PCIe)"),
    ("Tesla T4", None),
])
def test_reported_models_match_one_table_model(reported: str, table: str | None) -> None:
    assert profiles.table_model(reported) == table


def test_a_profile_row_as_lgip_lists_it() -> None:
    # A30 2g.12gb: 2 of 4 compute slices, 12 GB, 28 SMs, 2 instances at most.
    p = profiles.find_profile("NVIDIA A30", "2g.12gb")
    assert p is not None
    assert (p.compute_slices, p.total_compute_slices, p.memory_gb, p.sm_count, p.max_instances) == (2, 4, 12.0, 28, 2)


def test_the_simulator_plays_the_tables_profiles() -> None:
    # H100 NVL: 1g.12gb with 16 SMs; 12 GB x 1024 x 0.97 usable = 11,919.36 -> 11,919 MiB.
    fam = simulate._family_for("NVIDIA H100 NVL")
    assert (fam.profiles[1].name, fam.profiles[1].sm_count, fam.profiles[1].mem_mib) == ("1g.12gb", 16, 11_919.0)
    assert sorted(fam.profiles) == [1, 2, 3, 4, 7]
    # A30: no 3g profile; +me variants are never a default layout's.
    a30 = simulate._family_for("A30")
    assert {s: p.name for s, p in a30.profiles.items()} == {1: "1g.6gb", 2: "2g.12gb", 4: "4g.24gb"}


def test_a_model_the_simulator_cannot_play_is_refused() -> None:
    from migmeter.errors import ConfigError

    with pytest.raises(ConfigError, match="RTX PRO 6000"):
        simulate._family_for("NVIDIA RTX PRO 6000")  # in the table, but its whole-GPU SMs are not


def test_the_nvml_fake_takes_slices_and_sms_from_the_table() -> None:
    rows = {name: (slices, sms) for slices, _, name, sms, _ in a30_profiles().values()}
    assert rows == {"MIG 1g.6gb": (1, 14), "MIG 1g.6gb+me": (1, 14), "MIG 2g.12gb": (2, 28), "MIG 4g.24gb": (4, 56)}
