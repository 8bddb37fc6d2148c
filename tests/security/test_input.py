"""Hostile values in flags are refused before any SQL or PromQL exists (exit 2), and no SQL
statement in the package is built by string formatting.

Values (filters such as ``--cluster``) are bound parameters, which
``tests/integration/test_chargeback.py`` exercises with a hostile filter; here: identifiers
and fragments that come from flags (``report --by``, ``promql rules --by/--selector``,
durations, retention intervals), and a scan of the source for f-string or %-built SQL.
"""

from __future__ import annotations

import ast
import re

import pytest

from migmeter import settings
from migmeter.cli import main

PACKAGES = ("migmeter", "collector", "processor")

HOSTILE = [
    # report: identifiers (grouping) are argparse choices mapped to a whitelist
    ["report", "chargeback", "--month", "2025-01", "--by", "namespace; DROP TABLE gpus; --"],
    ["report", "chargeback", "--month", "2025-01", "--by", "pod\" OR 1=1 --"],
    ["report", "utilization", "--from", "2025-01-01", "--to", "2025-01-02", "--by", "hour'"],
    ["report", "chargeback", "--month", "2025-01", "--format", "xml"],  # html is the statement (issue 14)
    # promql: label names and selectors end up inside generated PromQL
    ["promql", "rules", "--by", "namespace) or vector(1"],
    ["promql", "rules", "--by", "__name__"],
    ["promql", "rules", "--selector", '{namespace="a"} or up'],
    ["promql", "rules", "--selector", '{namespace="a"}) or vector(1) #'],
    ["promql", "rules", "--selector", '{__name__=~".+"}'],
    ["promql", "rules", "--selector", 'namespace="a"'],
    ["promql", "rules", "--weights-selector", '{job="x"} unless up'],
    ["promql", "rules", "--selector", '{namespace="a\n- record: evil"}'],
    ["promql", "rules", "--for", "5m) or vector(1"],
    ["promql", "rules", "--idle-for", "1h\n  labels: {severity: none}"],
    ["promql", "rules", "--layout-window", "1h]"],
    ["promql", "rules", "--util-threshold", "nan"],
    # db retention: intervals
    ["db", "retention", "--keep-1m", "30 days'; DROP TABLE gpus; --"],
    ["db", "retention", "--keep-1h", "-1d"],
    ["db", "retention", "--keep-1d", "0d"],
    ["db", "retention", "--keep-1m", "999999y"],
    ["db", "retention", "--keep-events", "1e9d"],
    ["db", "retention", "--keep-1m", "30d; DROP"],
]


@pytest.mark.parametrize("argv", HOSTILE, ids=lambda a: " ".join(a)[:60])
def test_hostile_flag_values_exit_2(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    # A database that does not exist: a value that got as far as connecting would fail with 1, not 2.
    monkeypatch.setenv(settings.ENV_DATABASE_URL, "postgresql://nobody:pw@127.0.0.1:1/none")
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse refuses choices and types itself
        rc = exc.code
    out = capsys.readouterr()
    assert rc == 2, f"{argv} -> {rc}\n{out.out}{out.err}"
    assert "Traceback" not in out.err


# ---------------------------------------------------------------------------- source scan

_SQL_SINKS = {"execute", "executemany", "copy", "SQL", "stream"}


def _string_built(node: ast.AST) -> str | None:
    """Why ``node`` is a string built at run time from parts, or None."""
    if isinstance(node, ast.JoinedStr):
        return "f-string"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and isinstance(node.left, (ast.Constant, ast.JoinedStr)):
        return "%-formatting"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        parts = (node.left, node.right)
        if any(isinstance(p, (ast.Constant, ast.JoinedStr)) and isinstance(getattr(p, "value", ""), str) for p in parts) \
                and not all(isinstance(p, ast.Constant) for p in parts):
            return "concatenation"
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"
            and isinstance(node.func.value, (ast.Constant, ast.JoinedStr))):
        return "str.format"
    return None


def sql_built_from_strings(source: str, filename: str = "<src>") -> list[str]:
    """Calls of execute/executemany/copy/stream/sql.SQL whose first argument is a string built
    with f-strings, %, + or str.format (identifiers must go through sql.Identifier instead)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name not in _SQL_SINKS:
            continue
        why = _string_built(node.args[0])
        if why:
            found.append(f"{filename}:{node.lineno}: {name}() of a {why}")
    return found


def test_the_scan_finds_what_it_is_for() -> None:
    bad = '''
conn.execute(f"SELECT * FROM {table}")
cur.execute("DELETE FROM t WHERE x = '%s'" % value)
conn.execute("SELECT " + column + " FROM t")
sql.SQL("SELECT {} FROM t".format(column))
cur.copy(f"COPY {t} FROM STDIN")
'''
    good = '''
conn.execute("SELECT * FROM t WHERE x = %s", (value,))
conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
conn.execute(QUERY, params)
'''
    assert len(sql_built_from_strings(bad)) == 5
    assert sql_built_from_strings(good) == []


def test_no_sql_built_by_string_formatting_in_the_package() -> None:
    found: list[str] = []
    for package in PACKAGES:
        for path in sorted((settings.PROJECT_ROOT / package).rglob("*.py")):
            found += sql_built_from_strings(path.read_text(), str(path.relative_to(settings.PROJECT_ROOT)))
    assert found == [], "SQL built from strings:\n" + "\n".join(found)


def test_report_query_slots_are_identifiers_only() -> None:
    """Report .sql files are formatted with psycopg.sql, and only these slots exist, each filled
    with sql.Identifier by warehouse.reports; a new slot must be reviewed (and added here)."""
    slots = {path.name: set(re.findall(r"\{(\w*)\}", path.read_text()))
             for path in sorted((settings.PROJECT_ROOT / "sql" / "reports").glob("*.sql"))}
    assert {name: s for name, s in slots.items() if s} == {"chargeback.sql": {"keys"}, "utilization.sql": {"usage"}}


# Values (dates, months) are validated after connecting; against a live database they are
# refused with exit 2 like the identifiers above, and never reach SQL.
@pytest.mark.integration
@pytest.mark.parametrize("argv", [
    ["report", "chargeback", "--month", "2025-01'; DROP TABLE gpus; --"],
    ["report", "chargeback", "--month", "2025-13"],
    ["report", "utilization", "--from", "2025-01-01'); DROP TABLE gpus; --", "--to", "2025-01-02"],
    ["report", "layout", "--gpu", "x", "--at", "now'); DROP TABLE gpus; --"],
], ids=lambda a: " ".join(a)[:60])
def test_hostile_values_against_a_live_database_exit_2(argv: list[str], fresh_db: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([*argv, "--database-url", fresh_db])
    out = capsys.readouterr()
    assert rc == 2, f"{argv} -> {rc}\n{out.out}{out.err}"
