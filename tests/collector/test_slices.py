"""Slices come from the name's Ng part and the model, never from a table of full profile names."""

from __future__ import annotations

import pytest

from collector.slices import profile_slices, total_slices_for_model


@pytest.mark.parametrize(
    "profile,slices",
    [
        ("1g.5gb", 1),
        ("7g.79gb", 7),
        ("1g.18gb+me", 1),
        ("1g.10gb+gfx", 1),
        ("3g.71gb", 3),
        ("1c.3g.40gb", 3),
        ("4g.24gb", 4),
        ("2g.35gb", 2),
        ("1g.23.5gb", 1),
        # The Ng token wherever it stands: prefixes, suffixes, wrapping characters, case.
        ("MIG 1g.10gb", 1),
        ("1g.12gb+me", 1),
        ("nvidia.com/mig-3g.40gb", 3),
        ("[2g.20gb]", 2),
        ('"4g.40gb"', 4),
        ("MIG-1G.10GB", 1),
        (" 7g.80gb ", 7),
        ("1g.10gb (GI 13)", 1),
    ],
)
def test_slices_from_ng_prefix(profile: str, slices: int) -> None:
    assert profile_slices(profile) == slices


@pytest.mark.parametrize("profile", ["<<<NULL>>>", "", "full", "9g.80gb", "ERROR - FAILED TO CONVERT TO STRING",
                                     "11g.10gb", "0g.5gb", "1g"])
def test_names_without_slices(profile: str) -> None:
    assert profile_slices(profile) is None


@pytest.mark.parametrize(
    "model,total",
    [
        ("NVIDIA A100-SXM4-40GB", 7),
        ("NVIDIA H100 80GB HBM3", 7),
        ("NVIDIA H200", 7),
        ("NVIDIA B200", 7),
        ("NVIDIA A30", 4),
        ("A30-24GB", 4),
        ("NVIDIA RTX PRO 6000 Blackwell Server Edition", 4),
        ("unknown", 7),
    ],
)
def test_total_slices_by_model(model: str, total: int) -> None:
    assert total_slices_for_model(model) == total


def test_override_wins() -> None:
    assert total_slices_for_model("NVIDIA Future-X", {"future-x": 4}) == 4
