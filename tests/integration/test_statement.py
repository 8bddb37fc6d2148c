"""The monthly HTML statement: its figures, its escaping, and a real render in headless Chromium.

Data: the month of tests/integration/test_focus.py (Σ cost by allocation 16.00 USD: team-a
12/7 h @2 + 2 h @3 = 9.43, team-b 8/7 h @2 + 2 h @1 = 4.29, unassigned 4/7 h @2 = 1.14,
unallocated 4/7 h @2 = 1.14).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from tests.fix_stack import missing_tool

from warehouse import statement
from warehouse.render import Column, Report
from tests.integration.feed import feed_priced
from tests.integration.test_focus import PRICES, _fleet

pytestmark = pytest.mark.integration

NOV = date(2025, 11, 1)
GENERATED = datetime(2025, 12, 1, 8, 0, tzinfo=timezone.utc)


@pytest.fixture
def month_db(fresh_db: str) -> str:
    return feed_priced(fresh_db, _fleet(), PRICES)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        missing_tool("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return path


def _render(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    """Open ``page`` in headless Chromium with the page's console copied to stderr."""
    return subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", f"--user-data-dir={tmp / 'profile'}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=180)


def _console(stderr: str) -> list[str]:
    # Chromium logs every console message (console.error, failed resource loads) as ...:CONSOLE:<line>] "..."
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_statement_has_the_bill_reconciliation_prices_and_no_external_resource(month_db: str) -> None:
    with psycopg.connect(month_db) as conn:
        doc = statement.statement(conn, NOV, now=GENERATED)
    assert "Total billed by allocation: <strong>16.00 USD</strong>" in doc
    for ns, cost in (("team-a", "9.43"), ("team-b", "4.29"), ("(unassigned)", "1.14"), ("(unallocated)", "1.14")):
        assert re.search(rf"<td>{re.escape(ns)}</td>(<td[^>]*>[^<]*</td>){{3}}<td class=\"n\">{cost}</td>", doc), ns
    assert '<tr class="total"><td>total</td><td></td><td class="n">8.000</td>' in doc  # 8 physical GPU-hours
    assert "-&gt; reconciles" in doc
    assert "<td>A100-SXM4-40GB</td><td class=\"n\">3</td><td>USD</td><td>2025-11-16</td>" in doc
    assert doc.count("<svg") == 2 and "<script" not in doc
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"""(src|href)\s*=|@import|url\(""", doc)


def test_hostile_names_are_escaped() -> None:
    evil = '<img src=x onerror=alert(1)>'
    cols = (Column("line"), Column("namespace"), Column("alloc_gpu_hours", "hours"), Column("used_gpu_hours", "hours"),
            Column("alloc_util_pct", "pct"), Column("cost_alloc", "money"), Column("cost_used", "money"),
            Column("currency"))
    bill = Report("", cols, (("tenant", evil, 1.0, 0.5, 50.0, Decimal("2"), Decimal("1"), "USD"),), ("ok",))
    daily = Report("", (Column("day", "day"), Column("namespace"), Column("alloc_gpu_hours", "hours")),
                   ((NOV, evil, 1.0),))
    empty = Report("", (Column("saving_per_month", "money"),), (), ("n",))
    doc = statement.render_html(NOV, None, GENERATED, bill, daily, Report("", (), ()), empty, Report("", (), ()))
    assert evil not in doc and "&lt;img src=x onerror=alert(1)&gt;" in doc


def test_renders_in_headless_chromium_without_console_errors(month_db: str, tmp_path: Path) -> None:
    page = tmp_path / "statement-2025-11.html"
    r = subprocess.run([sys.executable, "-m", "migmeter.cli", "report", "chargeback", "--month", "2025-11", "--format",
                        "html", "--output", str(page), "--database-url", month_db],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    dom = _render(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "16.00 USD" in dom.stdout and "Bill by namespace" in dom.stdout  # the browser parsed and laid it out
    assert _console(dom.stderr) == []
    shot = tmp_path / "statement.png"
    pic = _render(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,2400")
    assert pic.returncode == 0, pic.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a page of text and plots, not a blank
    assert _console(pic.stderr) == []


def test_the_console_check_catches_an_error(tmp_path: Path) -> None:
    # Control: the same check on a page that logs an error must see it, or the test above proves nothing.
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><script>console.error("control-error")</script></body></html>')
    r = _render(page, tmp_path, "--dump-dom")
    assert any("control-error" in line for line in _console(r.stderr))
