"""The chart's generated files: the PromQL rules and copies of the Grafana dashboards.

Helm can only package files inside the chart, so ``migmeter/files/`` holds what the rest of the
repository generates or owns: ``migmeter.rules.yml`` is exactly ``migmeter promql rules`` with
the chart's selectors, and ``dashboards/*.json`` are ``compose/grafana/*.json``. Regenerate
after changing either (``tests/helm/test_chart_files.py`` fails while they differ)::

    python compose/helm/chart_files.py
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

__all__ = ["CHART_DIR", "RULE_ARGS", "expected_files", "main"]

CHART_DIR = Path(__file__).resolve().parent / "migmeter"
_REPO = CHART_DIR.parents[2]
_DASHBOARDS = _REPO / "compose" / "grafana"

# The selectors that match this chart's scrape jobs: the GPU Operator's dcgm-exporter
# ServiceMonitor gives job="nvidia-dcgm-exporter"; the chart's collector ServiceMonitor sets
# job="migmeter-collector" (jobLabel migmeter.io/job) whatever the release is called.
# Tenants are dcgm-exporter's pod attribution labels (namespace, pod).
RULE_ARGS = (
    "--selector", '{job="nvidia-dcgm-exporter"}',
    "--weights-selector", '{job="migmeter-collector"}',
    "--by", "namespace", "--by", "pod",
)


def _rules_text() -> str:
    from migmeter.cli import main as migmeter_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = migmeter_main(["promql", "rules", *RULE_ARGS])
    if rc != 0:
        raise SystemExit(f"migmeter promql rules {' '.join(RULE_ARGS)} failed with exit {rc}")
    return out.getvalue()


def expected_files() -> dict[Path, str]:
    """Path inside the chart -> the text it must hold."""
    files = {Path("files/migmeter.rules.yml"): _rules_text()}
    for src in sorted(_DASHBOARDS.glob("*.json")):
        files[Path("files/dashboards") / src.name] = src.read_text()
    return files


def main() -> int:
    for rel, text in expected_files().items():
        path = CHART_DIR / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(_REPO)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(_REPO))
    sys.exit(main())
