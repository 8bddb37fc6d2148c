"""Stranded capacity from the real placement (``placement_start`` stored in the layout history).

Two H100s ('NVIDIA H100 80GB HBM3', 7 compute / 8 memory slices), Nov 10 2025, 4 hourly snapshots
each (01:00-04:00 = 4 h), 7.00 USD/GPU-hour = 1.00 per slice-hour, every instance with the
placement_start the driver reported (as NVML and the simulator send it):
- GPU-P1: 1g.10gb (1 memory slot) at slots 1 and 3 (team-a): 5 compute slices free.
- GPU-P2: 2g.20gb (2 slots) at 0, 2 and 4 (team-b): 1 compute slice and slots 6-7 free.
Most requested profile: 2g.20gb (3 x 4 h = 12 instance-hours; 1g.10gb 8); it starts at 0, 2 or 4.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

import psycopg
import pytest
from msgspec.structs import replace

from tests.integration.feed import feed_priced
from tests.processor.build import inst, mig
from warehouse import stranded

pytestmark = pytest.mark.integration

H100 = "NVIDIA H100 80GB HBM3"
NOV = date(2025, 11, 1)


def _placed(gi: int, profile: str, ns: str, start: int):  # type: ignore[no-untyped-def]
    return replace(inst(gi, profile, 0.5, ns, f"{ns}-{gi}"), placement_start=start)


@pytest.fixture
def placed_db(fresh_db: str) -> str:
    snaps = []
    for h in range(1, 5):
        ts = datetime(2025, 11, 10, h, tzinfo=timezone.utc)
        snaps.append(mig(ts, [_placed(11, "1g.10gb", "team-a", 1), _placed(12, "1g.10gb", "team-a", 3)],
                         gpu="GPU-P1", model=H100, interval_s=3600))
        snaps.append(mig(ts, [_placed(gi, "2g.20gb", "team-b", s) for gi, s in ((3, 0), (4, 2), (5, 4))],
                         gpu="GPU-P2", model=H100, interval_s=3600))
    return feed_priced(fresh_db, snaps, [(H100, "7.00", NOV)])


def test_the_split_is_exact_where_every_placement_is_known(placed_db: str) -> None:
    with psycopg.connect(placed_db, autocommit=True) as conn:
        conn.execute("SET ROLE migmeter_reader")
        report = stranded.stranded(conn, NOV)
        starts = sorted(conn.execute("SELECT gpu_uuid, gi_id, placement_start FROM layout_at('GPU-P1',"
                                     " '2025-11-10 02:00+00')").fetchall())
    assert starts == [("GPU-P1", 11, 1), ("GPU-P1", 12, 3)]  # stored, and readable by the reader role
    (row,) = report.as_dicts()
    # P1: slots 1 and 3 taken -> a 2g fits only at 4: 2 of 5 free compute slices -> 5 x 4 h x 2/5 = 8
    #     hostable, 12 stranded (the best case would have packed the 1g's into 0-1 and hosted two 2g: 16).
    # P2: slots 6-7 free but a 2g may not start at 6 -> 1 slice x 4 h = 4 stranded.
    # unallocated 20 + 4 = 24 slice-hours, hostable 8, stranded 16 (16.00 USD), all exact.
    assert row["most_requested_profile"] == "2g.20gb"
    assert row["unallocated_slice_hours"] == pytest.approx(24.0)
    assert row["hostable_slice_hours"] == pytest.approx(8.0)
    assert row["stranded_slice_hours"] == pytest.approx(16.0)
    assert row["stranded_cost"] == Decimal("16.000000")
    assert (row["placement"], row["estimated_slice_hours"]) == ("exact", pytest.approx(0.0))
    assert report.notes[0] == "split exact: every instance's placement_start is known"


def test_hours_without_a_placement_are_estimated_and_counted(placed_db: str) -> None:
    with psycopg.connect(placed_db) as conn:
        # as if P1's collector had been dcgm-exporter: no placement_start for its instances
        conn.execute("UPDATE instance_intervals SET placement_start = NULL WHERE gpu_uuid = 'GPU-P1'")
        report = stranded.stranded(conn, NOV)
        conn.rollback()
    (row,) = report.as_dicts()
    # P1 by the best case: two 2g fit -> 20 x 4/5 = 16 hostable, 4 stranded (its 20 slice-hours estimated);
    # P2 exact as before: 4 stranded. Total hostable 16, stranded 8.
    assert row["hostable_slice_hours"] == pytest.approx(16.0)
    assert row["stranded_slice_hours"] == pytest.approx(8.0)
    assert (row["placement"], row["estimated_slice_hours"]) == ("partly estimated", pytest.approx(20.0))
    assert report.notes[0].startswith("split estimated where the source gives no placement_start")
