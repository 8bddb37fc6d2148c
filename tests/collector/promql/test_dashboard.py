"""The Grafana dashboard reads only what the generated rules and the collector provide, through
the ``${DS_PROMETHEUS}`` input, and every query is valid PromQL (checked by promtool)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from collector.promql import GPU_TOTAL_SLICES_METRIC, INSTANCE_SLICES_METRIC, record_names
from tests.collector.promql.test_promql_rules import _run, promtool  # noqa: F401  (fixture)

DASHBOARD = Path(__file__).parents[3] / "compose" / "grafana" / "migmeter-prometheus.json"


def _exprs(d: dict) -> list[str]:
    out = [t["expr"] for p in d["panels"] for t in p["targets"]]
    out += [a["expr"] for a in d["annotations"]["list"]]
    return out


def test_dashboard_uses_input_datasource() -> None:
    d = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in d["__inputs"]] == ["DS_PROMETHEUS"]
    for p in d["panels"]:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"])


def test_dashboard_reads_only_known_series() -> None:
    d = json.loads(DASHBOARD.read_text())
    known = set(record_names(("namespace",))) | {INSTANCE_SLICES_METRIC, GPU_TOTAL_SLICES_METRIC, "ALERTS"}
    for expr in _exprs(d):
        for name in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*(?=\{|$)", expr):
            assert name in known, (name, expr)


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:  # noqa: F811
    d = json.loads(DASHBOARD.read_text())
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(_exprs(d)):
        lines += [f"      - record: dashboard_query_{i}", f"        expr: {json.dumps(expr.replace('$gpu', '.*'))}"]
    (tmp_path / "q.yml").write_text("\n".join(lines) + "\n")
    proc = _run(promtool, "check", "rules", "q.yml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
