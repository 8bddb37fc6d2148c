"""Right-sizing rules without a database."""

from __future__ import annotations

from warehouse import rightsize


def _w(model: str = "NVIDIA H100 80GB HBM3", profile: str = "7g.80gb", slices: int = 7, p95: float | None = 20.0,
       peak: float | None = 1000.0, minutes: int = 600) -> rightsize.Workload:
    return rightsize.Workload("ns", "pod", model, profile, slices, 7, 1, 10.0, minutes, p95, p95, p95, peak, None, None)


def test_memory_bound_workload_gets_a_profile_without_headroom_flagged() -> None:
    # 75000 MiB peak: x 1.2 = 90000 > 7g.80gb's 81920, so no profile leaves headroom; bare 75000 fits 7g.80gb
    rec = rightsize.recommend(_w(peak=75000.0))
    assert (rec.profile, rec.headroom_ok) == ("7g.80gb", False)


def test_never_a_profile_the_model_lacks() -> None:
    # A30: 4 slices, profiles 1g.6gb, 2g.12gb, 4g.24gb (no 3g): 2.4 slices x 1.2 = 2.88 -> 4g.24gb
    rec = rightsize.recommend(_w(model="NVIDIA A30", profile="4g.24gb", slices=4, p95=60.0, peak=None))
    assert rec.profile == "4g.24gb" and "compute only" in rec.reason
    assert rightsize.recommend(_w(model="Tesla T4")).profile is None


def test_too_little_data() -> None:
    rec = rightsize.recommend(_w(minutes=59))
    assert rec.profile is None and rec.reason == "too little data: 59 minutes with utilization (needs 60)"


def test_whole_gpu_workload_can_move_to_a_mig_profile() -> None:
    # 20 % of 7 slices = 1.4 x 1.2 = 1.68 -> 2 slices; 1000 MiB fits -> 2g.20gb
    assert rightsize.recommend(_w()).profile == "2g.20gb"
