"""Share rules and the profile table without a database."""

from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal
from fractions import Fraction

import pytest

from warehouse import profile_pricing, profiles
from warehouse.focus import DailyLine

H100 = "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize(("rule", "profile", "slices", "expected"), [
    ("compute", "1g.20gb", 1, Fraction(1, 7)),
    ("memory", "1g.20gb", 1, Fraction(2, 8)),   # 20 GB of 80 = 2 of 8 memory slices
    ("max", "1g.20gb", 1, Fraction(1, 4)),      # max(1/7, 2/8)
    ("memory", "1g.10gb", 1, Fraction(1, 8)),
    ("max", "1g.10gb", 1, Fraction(1, 7)),      # max(1/7, 1/8)
    ("max", "3g.40gb", 3, Fraction(1, 2)),      # max(3/7, 4/8)
    ("max", "4g.40gb", 4, Fraction(4, 7)),      # max(4/7, 4/8)
    ("memory", "7g.80gb", 7, Fraction(1)),
])
def test_share_rules_on_an_h100(rule: str, profile: str, slices: int, expected: Fraction) -> None:
    assert profile_pricing.share(rule, H100, profile, slices, 7) == (expected, True)


def test_memory_share_of_an_unknown_model_falls_back_to_compute() -> None:
    assert profile_pricing.share("memory", "Some Future GPU", "1g.20gb", 1, 7) == (Fraction(1, 7), False)


def test_profile_table_matches_reported_model_names() -> None:
    assert profiles.table_model("NVIDIA H100 PCIe") == "H100-80GB-PCIe"
    assert profiles.table_model("NVIDIA GH200 480GB") == "GH200 (H100-96GB)"  # not the H200
    assert profiles.table_model("NVIDIA A100-SXM4-40GB") == "A100-SXM4-40GB"
    assert profiles.memory_share("NVIDIA A30", "1g.6gb") == Fraction(1, 4)  # 4 memory slices on an A30
    assert profiles.memory_share("NVIDIA H200", "1g.18gb") == Fraction(1, 8)  # 18/141 rounds to 1 of 8
    assert [p.name for p in profiles.profiles_for("A30") if "+" not in p.name] == ["1g.6gb", "2g.12gb", "4g.24gb"]


def _line(gi: int, profile: str, slices: int, hours_instance: float) -> DailyLine:
    return DailyLine(datetime(2025, 11, 10, tzinfo=timezone.utc), "c1", "GPU-H", H100, gi, profile, slices, 7,
                     "tenant", f"ns{gi}", "p", "", hours_instance * slices / 7, 0.0, Decimal("14"), "USD")


def test_over_recovery_shows_as_a_negative_remainder() -> None:
    # max rule, 1 h of 3g.40gb (1/2) and 4g.40gb (4/7) on a 14.00 GPU: 7.00 + 8.00 = 15.00 charged,
    # the GPU cost 1 h x 14.00 = 14.00 -> not covered = -1.00.
    rule = profile_pricing.ShareRule(H100, "max", date(2025, 1, 1), None)
    totals, gpu_cost, _ = profile_pricing.price_lines([_line(1, "3g.40gb", 3, 1.0), _line(2, "4g.40gb", 4, 1.0)],
                                                      [], [rule])
    charged = sum(t.charge for t in totals.values())
    assert float(charged) == pytest.approx(15.0) and float(gpu_cost["USD"]) == pytest.approx(14.0)
