"""Option validation of ``migmeter promql rules``: hostile --by / --selector values never reach
the rules file (exit 2), and the text is valid YAML without needing promtool."""

from __future__ import annotations

import pytest

from collector.promql import (
    PromqlOptionError,
    RuleOptions,
    record_names,
    rules_yaml,
    validate_by,
    validate_selector,
)
from migmeter.cli import main

HOSTILE_SELECTORS = [
    '{a="b"} or vector(1)',
    '{a="b"}) or (vector(1)',
    '{a="b"\n}',
    '{a="b\nc"}',
    '{a="b"} # comment',
    "{a='b'}",
    "{a=b}",
    '{a="b"}}',
    '{{a="b"}',
    'up{a="b"}',
    '{__name__="up"}',
    '{1a="b"}',
    '{a=="b"}',
    '{a="b\\"}',
    "vector(1)",
]


@pytest.mark.parametrize("sel", HOSTILE_SELECTORS)
def test_hostile_selector_refused(sel: str) -> None:
    with pytest.raises(PromqlOptionError):
        validate_selector(sel)


@pytest.mark.parametrize(
    ("sel", "inner"),
    [
        ("", ""),
        ("{}", ""),
        ('{namespace="ml"}', 'namespace="ml"'),
        (' { job = "dcgm" , namespace=~"ml|web", pod!~"x.*", a!="q\\"uote",} ', 'job="dcgm", namespace=~"ml|web", pod!~"x.*", a!="q\\"uote"'),
    ],
)
def test_good_selector(sel: str, inner: str) -> None:
    assert validate_selector(sel) == inner


@pytest.mark.parametrize("by", ["pod) or vector(1", "instance", "UUID", "", "pod,namespace", "namespace\n"])
def test_hostile_by_refused(by: str) -> None:
    with pytest.raises(PromqlOptionError):
        validate_by([by])


@pytest.mark.parametrize(
    "argv",
    [
        ["--by", "pod) or vector(1"],
        ["--selector", '{a="b"} or vector(1)'],
        ["--util-threshold", "90"],
        ["--idle-threshold", "-0.1"],
        ["--for", "15 minutes"],
        ["--for", "5m\n"],
        ["--util-threshold", "nan"],
        ["--for", "5m\n  labels: {x: y}"],
        ["--idle-for", "1h; rm"],
        ["--layout-window", "0.5h"],
    ],
)
def test_cli_refuses_with_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["promql", "rules", *argv]) == 2
    assert capsys.readouterr().out == ""


def test_cli_prints_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["promql", "rules", "--by", "pod", "--by", "Hostname", "--selector", '{job="dcgm"}']) == 0
    out = capsys.readouterr().out
    assert 'DCGM_FI_PROF_GR_ENGINE_ACTIVE{job="dcgm"}' in out
    for name in record_names(("pod", "Hostname")):
        assert f"record: {name}\n" in out


def test_check_without_promtool(monkeypatch: pytest.MonkeyPatch, tmp_path, caplog) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["promql", "check", str(tmp_path / "x.yml")]) == 2
    assert "apt-get install prometheus" in caplog.text


def test_valid_yaml_structure() -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(rules_yaml(RuleOptions(by=("pod", "namespace"))))
    rules = doc["groups"][0]["rules"]
    records = [r["record"] for r in rules if "record" in r]
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert records == record_names(("pod", "namespace"))
    assert set(alerts) == {"MigGpuWeightedUtilizationHigh", "MigAllocatedInstanceIdle", "MigLayoutChanged"}
    assert alerts["MigGpuWeightedUtilizationHigh"]["for"] == "15m"
    assert "{{ $labels.UUID }}" in alerts["MigLayoutChanged"]["annotations"]["summary"]
    # the join never uses the host label
    for r in rules:
        assert "Hostname" not in r["expr"].split("on (")[-1].split(")")[0]


def test_weights_never_by_profile_name() -> None:
    text = rules_yaml(RuleOptions())
    assert "label_replace" not in text
    assert "0.143" not in text
