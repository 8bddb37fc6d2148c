"""The hostable/stranded split of one GPU-hour without a database."""

from __future__ import annotations

from datetime import datetime, timezone

from warehouse import stranded

H100 = "NVIDIA H100 80GB HBM3"


def _hour(profiles: list[str], slices: list[int], free: float, starts: list[int | None] | None = None
          ) -> stranded.FreeHour:
    return stranded.FreeHour(datetime(2025, 11, 10, tzinfo=timezone.utc), "c1", "G", H100, 7, free, profiles, slices,
                             [None] * len(profiles) if starts is None else starts, None, None)


def test_an_empty_mig_gpu_hosts_three_2g_of_its_seven_slices() -> None:
    # 2g may start at 0, 2, 4: three fit, 6 of 7 free slices -> 6/7 of 7 slice-hours hostable, 1 stranded
    hostable, strand, exact = stranded.split_hour(_hour([], [], 7.0), "2g.20gb", 2)
    assert (round(hostable, 9), round(strand, 9), exact) == (6.0, 1.0, True)  # nothing placed: nothing to guess


def test_no_free_compute_slice_in_the_layout_counts_as_stranded() -> None:
    # a layout change inside the hour: the instances seen fill the GPU, yet 0.5 slice-hours were free
    assert stranded.split_hour(_hour(["7g.80gb"], [7], 0.5), "1g.10gb", 1) == (0.0, 0.5, False)


def test_no_demand_means_nothing_is_hostable() -> None:
    assert stranded.split_hour(_hour([], [], 7.0), None, None) == (0.0, 7.0, True)


def test_the_real_placement_decides_where_it_is_known() -> None:
    # Two 1g.10gb (1 memory slot each) on an H100; the wanted 2g.20gb takes 2 slots at 0, 2 or 4.
    # At starts 1 and 3 they block 0-1 and 2-3: one 2g fits (at 4) -> 2 of the 5 free compute slices,
    # 5 slice-hours x 2/5 = 2 hostable, 3 stranded, exact. Without starts the best case packs them
    # into 0 and 1: two 2g fit (2, 4) -> 5 x 4/5 = 4 hostable, 1 stranded, an estimate.
    real = _hour(["1g.10gb", "1g.10gb"], [1, 1], 5.0, [1, 3])
    assert tuple(round(v, 9) for v in stranded.split_hour(real, "2g.20gb", 2)[:2]) == (2.0, 3.0)
    assert stranded.split_hour(real, "2g.20gb", 2)[2] is True
    guess = stranded.split_hour(_hour(["1g.10gb", "1g.10gb"], [1, 1], 5.0), "2g.20gb", 2)
    assert (round(guess[0], 9), round(guess[1], 9), guess[2]) == (4.0, 1.0, False)
    # one start unknown, or two instances on one slot (two layouts in one hour): the estimate
    assert stranded.split_hour(_hour(["1g.10gb", "1g.10gb"], [1, 1], 5.0, [1, None]), "2g.20gb", 2)[2] is False
    assert stranded.split_hour(_hour(["1g.10gb", "1g.10gb"], [1, 1], 5.0, [3, 3]), "2g.20gb", 2)[2] is False
