"""A warehouse written before the v2 time model migrates forward (013, 014) and reads as the
README says: old rows keep their numbers, their coverage is unknown (NULL), a GPU's stored
state counts everything up to its last ts as billed, and the month still reconciles.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from warehouse.migrate import migrate
from warehouse import reports
from tests.integration.feed import feed
from tests.integration.test_migrate import empty_db, migrate_before  # noqa: F401 - fixture
from tests.processor.build import T0, at, inst, mig

pytestmark = pytest.mark.integration

_GPU_COLS = ("bucket, gpu_uuid, cluster, host, gpu_model, total_slices, seconds, mig_seconds, alloc_gpu_seconds, "
             "util_alloc_gpu_seconds, busy_gpu_seconds, simple_util_seconds, simple_seconds, instance_samples, "
             "snapshots, alloc_min, alloc_max, whole_util_min, whole_util_max")
_TENANT_COLS = ("bucket, gpu_uuid, namespace, pod, cluster, gpu_model, seconds, alloc_gpu_seconds, "
                "util_alloc_gpu_seconds, busy_gpu_seconds, samples")


def _old_warehouse(url: str, tmp_path: Path) -> None:
    """Migrations 001-012 only, then what the v1 processor wrote for GPU-a: one 7g instance
    (tenant t/p, 50 % busy) scraped at 15, 30, 45 and 60 s, 15 s each into the bucket of ts:
    minute T0 holds 15, 30, 45 (45 s), minute T0+60 holds 60 (15 s)."""
    migrate_before(url, tmp_path, "013")
    with psycopg.connect(url) as conn:
        for grain, rows in (("1m", ((T0, 45.0, 3), (at(60), 15.0, 1))), ("1h", ((T0, 60.0, 4),)),
                            ("1d", ((T0, 60.0, 4),))):
            for bucket, s, n in rows:
                conn.execute(f"INSERT INTO gpu_usage_{grain} ({_GPU_COLS}) VALUES "  # noqa: S608 - fixed grain
                             "(%s, 'GPU-a', 'c1', 'h1', 'A100', 7, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1, 1, .5, .5)",
                             (bucket, s, s, s, s, s / 2, s / 2, s, n, n))
                conn.execute(f"INSERT INTO tenant_usage_{grain} ({_TENANT_COLS}) VALUES "  # noqa: S608
                             "(%s, 'GPU-a', 't', 'p', 'c1', 'A100', %s, %s, %s, %s, %s)", (bucket, s, s, s, s / 2, n))
        conn.execute("INSERT INTO gpu_state (gpu_uuid, last_ts, mig_enabled, layout) VALUES ('GPU-a', %s, true, %s)",
                     (at(60), Jsonb({"0": {"profile": "7g.80gb", "slices": 7, "namespace": "t", "pod": "p"}})))


def test_old_rows_read_with_unknown_coverage_and_old_state_counts_as_billed(empty_db, tmp_path):  # type: ignore[no-untyped-def]  # noqa: F811
    _old_warehouse(empty_db, tmp_path)
    applied = migrate(empty_db)
    # the billing migrations come first; later files (other features) may follow
    assert applied[:2] == ["013_billing_time", "014_billing_views"] and all(a > "014" for a in applied[2:])
    with psycopg.connect(empty_db) as conn:
        state = conn.execute("SELECT billed, version, feed FROM gpu_state").fetchone()
        old = conn.execute("SELECT gpu_hours, unmetered_gpu_hours, capacity_gpu_hours, coverage_pct, whole_util_pct "
                           "FROM gpu_utilization_1h").fetchone()
    assert state == ([], 0, "")
    # 60 s metered, unmetered unknown (NULL): capacity = metered, coverage NULL; whole GPU 50 %.
    assert old == (pytest.approx(60 / 3600), None, pytest.approx(60 / 3600), None, pytest.approx(50.0))

    # The processor goes on: 75 covers (60, 75]; 150, after a 75 s silence (> 3 x 15 s), covers
    # (135, 150]; (75, 135] is unmetered: 45 s in minute T0+60, whose pre-migration row stays
    # NULL (unknown), and 15 s in T0+120. A backfill of 30 (inside the old time) bills
    # nothing: everything up to 60 counts as billed.
    hist = mig(at(30), [inst(0, "7g.80gb", 0.5, "t", "p")])
    hist = type(hist)(hist.ts, hist.interval_s, "prometheus", hist.cluster, hist.host, hist.gpu_uuid, hist.gpu_index,
                      hist.gpu_model, hist.mig_enabled, hist.total_slices, hist.instances)
    feed(empty_db, [mig(at(t), [inst(0, "7g.80gb", 0.5, "t", "p")]) for t in (75, 150)] + [hist])
    with psycopg.connect(empty_db) as conn:
        minutes = conn.execute("SELECT bucket, seconds, unmetered_seconds FROM gpu_usage_1m ORDER BY bucket").fetchall()
        hour = conn.execute("SELECT gpu_hours * 3600, unmetered_gpu_hours, coverage_pct FROM gpu_utilization_1h"
                            ).fetchone()
        billed, version = conn.execute("SELECT billed, version FROM gpu_state").fetchone()
        rec = reports.reconciliation(conn, *reports.month_range(date(2025, 3, 1)))
    # T0: 45 (old); T0+60: 15 (old) + 15 (60, 75], its unmetered 45 s added to a NULL -> NULL;
    # T0+120: (135, 150] = 15 s, unmetered (120, 135] = 15 s.
    assert minutes == [(T0, 45.0, None), (at(60), 30.0, None), (at(120), 15.0, 15.0)]
    assert hour == (pytest.approx(90.0), None, None)  # the hour's row predates the migration: unknown
    assert version == 1 and billed[0][0] == 0 and len(billed) == 2  # [0, 75 s] (legacy) and [135 s, 150 s]
    assert rec.ok and rec.tenant_gpu_hours == pytest.approx(90 / 3600)
