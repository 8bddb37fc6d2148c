"""The rules file shipped for the compose pipeline is exactly what `migmeter promql rules` prints."""

from __future__ import annotations

from pathlib import Path

from collector.promql import RuleOptions, rules_yaml

SHIPPED = Path(__file__).resolve().parents[3] / "compose" / "prometheus" / "migmeter.rules.yml"


def test_shipped_rules_match_the_generator() -> None:
    assert SHIPPED.read_text() == rules_yaml(RuleOptions()), (
        "compose/prometheus/migmeter.rules.yml is stale: regenerate it with "
        "`migmeter promql rules > compose/prometheus/migmeter.rules.yml`"
    )
