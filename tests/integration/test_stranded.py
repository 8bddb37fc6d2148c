"""Stranded capacity on a hand-built month through the processor's fold and sink.

Two H100s ('NVIDIA H100 80GB HBM3', 7 compute / 8 memory slices), Nov 10 2025, 4 hourly
snapshots each (01:00-04:00, 4 h), GPU price 7.00 USD/GPU-hour = 1.00 per slice-hour:
- GPU-S1: 1g.20gb x 4 (team-a): 4 compute slices used, 3 free, but each 1g.20gb holds 2 of the
  8 memory slices, so all memory is taken.
- GPU-S2: 2g.20gb x 2 (team-c, team-d): 3 compute slices free.
Most requested profile: 1g.20gb (4 instances x 4 h = 16 instance-hours; 2g.20gb 8).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import date, datetime, timezone
from decimal import Decimal

import psycopg
import pytest

from warehouse import stranded
from tests.integration.feed import feed_priced
from tests.processor.build import inst, mig

pytestmark = pytest.mark.integration

H100 = "NVIDIA H100 80GB HBM3"
NOV = date(2025, 11, 1)


@pytest.fixture
def fleet_db(fresh_db: str) -> str:
    snaps = []
    for h in range(1, 5):
        ts = datetime(2025, 11, 10, h, tzinfo=timezone.utc)
        snaps.append(mig(ts, [inst(gi, "1g.20gb", 0.5, "team-a", f"a{gi}") for gi in (9, 10, 11, 12)],
                         gpu="GPU-S1", model=H100, interval_s=3600))
        snaps.append(mig(ts, [inst(3, "2g.20gb", 0.5, "team-c", "c"), inst(4, "2g.20gb", 0.5, "team-d", "d")],
                         gpu="GPU-S2", model=H100, interval_s=3600))
    return feed_priced(fresh_db, snaps, [(H100, "7.00", NOV)])


def test_unallocated_slices_split_into_hostable_and_stranded(fleet_db: str) -> None:
    with psycopg.connect(fleet_db, autocommit=True) as conn:
        conn.execute("SET ROLE migmeter_reader")  # reads the reader views only
        report = stranded.stranded(conn, NOV)
    (row,) = report.as_dicts()
    # S1: no memory slice left, so no 1g.20gb fits wherever the four sit -> 3 slices x 4 h = 12 stranded.
    # S2: 2g at 0 and 2 leave memory slices 4-7 -> two 1g.20gb (starts 4, 6) = 2 of its 3 free compute
    #     slices hostable -> 8 hostable, 4 stranded.
    # unallocated 12 + 12 = 24 slice-hours (cost 24 x 1.00), stranded 12 + 4 = 16 (cost 16.00), 16/24 = 66.7 %
    assert (row["cluster"], row["gpu_model"], row["gpus"], row["most_requested_profile"]) == ("c1", H100, 2, "1g.20gb")
    assert row["unallocated_slice_hours"] == pytest.approx(24.0)
    assert row["hostable_slice_hours"] == pytest.approx(8.0)
    assert row["stranded_slice_hours"] == pytest.approx(16.0)
    assert row["stranded_pct"] == pytest.approx(100 * 16 / 24)
    assert row["unallocated_cost"] == Decimal("24.000000") and row["stranded_cost"] == Decimal("16.000000")
    # the fixture's snapshots carry no placement_start (as from dcgm-exporter): every hour is an estimate
    assert row["placement"] == "estimated" and row["estimated_slice_hours"] == pytest.approx(24.0)
    assert report.notes[0].startswith("split estimated where the source gives no placement_start")


def test_cli_table(fleet_db: str) -> None:
    r = subprocess.run([sys.executable, "-m", "migmeter.cli", "report", "stranded", "--month", "2025-11", "--format",
                        "table", "--database-url", fleet_db], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Stranded MIG capacity 2025-11" in r.stdout and "16.000" in r.stdout and "estimated" in r.stdout
