"""`migmeter demo --short` end to end on the real stack, and its report reconciles."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import date
from pathlib import Path

import psycopg
import pytest

from warehouse import reports

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_short_demo_runs_end_to_end_and_reconciles(fresh_db: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cluster = f"demo-test-{uuid.uuid4().hex[:8]}"  # its topic name too: never reuse one being deleted
    r = subprocess.run(
        [sys.executable, "-m", "migmeter.cli", "demo", "--short", "--cluster", cluster, "--database-url", fresh_db,
         "--bootstrap", kafka_bootstrap, "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[demo] simulated" in r.stdout  # progress was shown while it ran
    assert "-> reconciles" in r.stdout and "Chargeback 2025-01" in r.stdout
    assert "published 2,304, processed 2,304 records (0 dead letters)" in r.stdout
    assert "[demo] FOCUS 1.2 2025-01:" in r.stdout and "= chargeback total" in r.stdout
    assert "Right-sizing 2025-01 (UTC)" in r.stdout and "recommended" in r.stdout
    assert "Stranded MIG capacity 2025-01 (UTC)" in r.stdout
    # the simulator reports placement_start, so the split uses the real placement (all or most hours)
    assert "split exact" in r.stdout or "partly estimated" in r.stdout
    assert "Trend per week 2025-01 .. 2025-01" in r.stdout
    for name in ("chargeback-2025-01.csv", "chargeback-2025-01.png", "utilization-hourly.csv",
                 "utilization-hourly.png", "focus-2025-01.csv", "rightsize-2025-01.csv",
                 "statement-2025-01.html"):
        assert (out / name).stat().st_size > 0, name
    # Independently of the demo's own check: the warehouse's month reconciles, every line has a
    # price (the demo priced its models), and the simulated fleet was re-partitioned.
    with psycopg.connect(fresh_db) as conn:
        cb = reports.chargeback(conn, date(2025, 1, 1), cluster=cluster)
        start, end = reports.month_range(date(2025, 1, 1))
        rec = reports.reconciliation(conn, start, end, cluster=cluster)
        changes = conn.execute("SELECT count(*) FROM layout_changes WHERE cluster = %s "
                               "AND event IN ('created', 'destroyed', 'profile_changed')", (cluster,)).fetchone()[0]
        models = {m for (m,) in conn.execute("SELECT DISTINCT gpu_model FROM gpus")}
    assert rec.ok and rec.physical_gpu_hours == pytest.approx(4 * 48.0)  # 4 GPUs x 2 days
    assert sum(r["alloc_gpu_hours"] for r in cb.as_dicts()) == pytest.approx(rec.physical_gpu_hours)
    assert all(r["currency"] == "USD" for r in cb.as_dicts())
    assert changes >= 1
    assert "A30" in models and len(models) >= 3
