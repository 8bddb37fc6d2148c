"""The reader role (BI logins) can read the views and nothing else."""

from __future__ import annotations

import json
import re
from datetime import date
from decimal import Decimal

import psycopg
import pytest

from migmeter import settings
from warehouse import focus, prices, profile_pricing, reports, rightsize, statement, stranded, trend

pytestmark = pytest.mark.integration

READER_VIEWS = [
    "chargeback_pod_daily", "chargeback_namespace_daily", "chargeback_pod_monthly", "chargeback_namespace_monthly",
    "chargeback_reconciliation_daily", "chargeback_reconciliation_monthly", "gpu_usage_hours_1h",
    "gpu_usage_hours_1d", "gpu_utilization_1h", "gpu_utilization_1d", "layout_history", "layout_changes",
    "idle_capacity_daily", "idle_capacity_monthly", "gpu_prices", "focus_usage_daily",
    "gpu_profile_prices", "gpu_share_rules",
]
FORBIDDEN_TABLES = ["sink_offsets", "gpu_state", "dead_letters", "prices", "profile_prices", "share_rules", "tenant_usage_1d", "gpu_usage_1h",
                    "instance_intervals", "layout_events"]


def _as_reader(url: str) -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET ROLE migmeter_reader")
    return conn


# One database per test, several checks each: a migrated database costs a second or so.


def test_reader_can_select_every_view_and_no_table(fresh_db: str) -> None:
    with _as_reader(fresh_db) as conn:
        for view in READER_VIEWS:
            conn.execute(psycopg.sql.SQL("SELECT * FROM {} LIMIT 1").format(psycopg.sql.Identifier(view))).fetchall()
        for table in FORBIDDEN_TABLES:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(psycopg.sql.SQL("SELECT * FROM {}").format(psycopg.sql.Identifier(table)))


WRITES = [
        "INSERT INTO gpu_usage_hours_1h (bucket, cluster, host, gpu_uuid, gpu_model, total_slices) "
        "VALUES (now(), 'c', 'h', 'g', 'm', 7)",
        "UPDATE gpu_usage_hours_1d SET cluster = 'x'",
        "DELETE FROM gpu_usage_hours_1h",
        "DELETE FROM layout_history",
        "UPDATE chargeback_pod_daily SET namespace = 'x'",
        "INSERT INTO prices VALUES ('A30', 0, 'USD', '2025-01-01')",
        "UPDATE sink_offsets SET next_offset = 0",
        "DELETE FROM tenant_usage_1d",
        "CREATE TABLE mine (x int)",
        "CREATE VIEW mine AS SELECT 1",
]


def test_reader_cannot_write(fresh_db: str) -> None:
    # Views over one table (gpu_usage_hours_*) are automatically updatable in PostgreSQL: only
    # the missing privilege stops the reader. Views over joins refuse writes even earlier.
    with _as_reader(fresh_db) as conn:
        for statement in WRITES:
            expected: type[Exception] = psycopg.errors.InsufficientPrivilege
            if "layout_history" in statement or "chargeback_pod_daily" in statement:
                expected = psycopg.errors.ObjectNotInPrerequisiteState
            with pytest.raises(expected):
                conn.execute(statement)


def test_reports_run_as_the_reader(fresh_db: str) -> None:
    # `migmeter report` must work with a BI login: it reads only the views.
    with _as_reader(fresh_db) as conn:
        assert reports.chargeback(conn, date(2025, 11, 1)).rows == ()
        assert reports.idle_capacity(conn, date(2025, 11, 1)).rows == ()
        start, end = reports.month_range(date(2025, 11, 1))
        assert reports.utilization(conn, start, end).rows == ()
        assert reports.layout_at(conn, "GPU-x", start).rows == ()
        # issue 14's outputs read reader views only, too
        month = date(2025, 11, 1)
        assert focus.export(conn, month).rows == ()
        assert profile_pricing.chargeback(conn, month).rows == ()
        assert rightsize.rightsize(conn, month).rows == ()
        assert stranded.stranded(conn, month).rows == ()
        assert trend.trend(conn, month, month).rows == ()
        assert "GPU chargeback statement, November 2025" in statement.statement(conn, month)
        assert reports.layout_changes(conn, "GPU-x", start, end).rows == ()
        assert reports.reconciliation(conn, start, end).physical_gpu_hours == 0.0


def _grafana_sql(raw: str) -> str:
    """Expand the Grafana macros the dashboard uses the way Grafana's PostgreSQL source does."""
    raw = re.sub(r"\$__timeFilter\((\w+)\)",
                 r"\1 BETWEEN '2025-01-01T00:00:00Z' AND '2025-02-01T00:00:00Z'", raw)
    return raw.replace("$cluster", "'demo', 'c1'")


def test_grafana_dashboard_queries_run_as_the_reader(fresh_db: str) -> None:
    dashboard = json.loads((settings.PROJECT_ROOT / "compose" / "grafana" / "migmeter-timescaledb.json").read_text())
    queries = [t["rawSql"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["query"] for v in dashboard["templating"]["list"]]
    assert len(queries) >= 9
    with _as_reader(fresh_db) as conn:
        for q in queries:
            conn.execute(_grafana_sql(q)).fetchall()


def test_reader_lists_prices_but_cannot_set_them(fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as conn:
        prices.set_price(conn, prices.Price("A30", Decimal("1.5"), "EUR", date(2025, 1, 1)))
        prices.set_price(conn, prices.Price("A30", Decimal("1.5"), "EUR", date(2025, 1, 1)))  # idempotent
    with _as_reader(fresh_db) as conn:
        assert [(p.gpu_model, p.price_per_gpu_hour, p.currency) for p in prices.list_prices(conn)] == [
            ("A30", Decimal("1.500000"), "EUR")]
        assert prices.unpriced_models(conn) == []
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            prices.set_price(conn, prices.Price("A30", Decimal("0"), "EUR", date(2025, 2, 1)))
