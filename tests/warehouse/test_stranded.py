"""The hostable/stranded split of one GPU-hour without a database."""

from __future__ import annotations

from datetime import datetime, timezone

from warehouse import stranded

H100 = "NVIDIA H100 80GB HBM3"


def _hour(profiles: list[str], slices: list[int], free: float) -> stranded.FreeHour:
    return stranded.FreeHour(datetime(2025, 11, 10, tzinfo=timezone.utc), "c1", "G", H100, 7, free, profiles, slices,
                             None, None)


def test_an_empty_mig_gpu_hosts_three_2g_of_its_seven_slices() -> None:
    # 2g may start at 0, 2, 4: three fit, 6 of 7 free slices -> 6/7 of 7 slice-hours hostable, 1 stranded
    hostable, strand = stranded.split_hour(_hour([], [], 7.0), "2g.20gb", 2)
    assert (round(hostable, 9), round(strand, 9)) == (6.0, 1.0)


def test_no_free_compute_slice_in_the_layout_counts_as_stranded() -> None:
    # a layout change inside the hour: the instances seen fill the GPU, yet 0.5 slice-hours were free
    assert stranded.split_hour(_hour(["7g.80gb"], [7], 0.5), "1g.10gb", 1) == (0.0, 0.5)


def test_no_demand_means_nothing_is_hostable() -> None:
    assert stranded.split_hour(_hour([], [], 7.0), None, None) == (0.0, 7.0)
