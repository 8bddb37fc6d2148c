"""What the chart carries from the rest of the repository is exactly that: the PrometheusRule is
`migmeter promql rules` with the chart's selectors (and passes `promtool check rules`), and the
Grafana ConfigMaps are compose/grafana/*.json with the sidecar label."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.helm.chart_kit import CHART, render

GRAFANA = CHART.parents[2] / "compose" / "grafana"


def _chart_files() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_files", CHART.parent / "chart_files.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_chart_files_are_current() -> None:
    module = _chart_files()
    expected = module.expected_files()
    assert set(expected) == {Path("files/migmeter.rules.yml"), Path("files/dashboards/migmeter-prometheus.json"),
                             Path("files/dashboards/migmeter-timescaledb.json")}
    for rel, text in expected.items():
        assert (CHART / rel).read_text() == text, (
            f"compose/helm/migmeter/{rel} is stale: regenerate with `python compose/helm/chart_files.py`")


def test_the_rules_select_the_charts_scrape_jobs() -> None:
    text = (CHART / "files" / "migmeter.rules.yml").read_text()
    assert 'DCGM_FI_PROF_GR_ENGINE_ACTIVE{job="nvidia-dcgm-exporter"}' in text
    assert 'migmeter_instance_slices{job="migmeter-collector"}' in text


def _rule(objects: list[dict[str, Any]]) -> dict[str, Any]:
    rules = [o for o in objects if o["kind"] == "PrometheusRule"]
    assert len(rules) == 1
    return rules[0]


def test_the_prometheus_rule_is_the_generated_rules_and_promtool_accepts_it(tmp_path: Path) -> None:
    rule = _rule(render("ci/dcgm-values.yaml"))
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    generated = yaml.safe_load(_chart_files().expected_files()[Path("files/migmeter.rules.yml")])
    assert rule["spec"] == generated
    # 3 alerts named in the README, plus the recording rules
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert alerts == ["MigGpuWeightedUtilizationHigh", "MigAllocatedInstanceIdle", "MigLayoutChanged"]
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing (Debian package `prometheus`, installed by .ci/run)")
    path = tmp_path / "rendered.rules.yml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_would_catch_a_broken_rule(tmp_path: Path) -> None:
    """The check above can fail: the same rendering with one expression broken is refused."""
    spec = _rule(render())["spec"]
    spec["groups"][0]["rules"][0]["expr"] = "sum by (UUID ("
    path = tmp_path / "broken.rules.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    promtool = shutil.which("promtool") or pytest.fail("promtool is missing")
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode != 0


def test_both_dashboards_are_configmaps_for_the_grafana_sidecar() -> None:
    objects = render("ci/dcgm-values.yaml")  # DS_PROMETHEUS -> prometheus, DS_MIGMETER -> migmeter-timescaledb
    maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"
            and o["metadata"]["labels"].get("app.kubernetes.io/component") == "dashboards"}
    assert sorted(maps) == ["mm-migmeter-prometheus-dashboard", "mm-migmeter-timescaledb-dashboard"]
    uids = {"DS_PROMETHEUS": "prometheus", "DS_MIGMETER": "migmeter-timescaledb"}
    for cm in maps.values():
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, text),) = cm["data"].items()
        source = (GRAFANA / name).read_text()
        for placeholder, uid in uids.items():
            source = source.replace("${" + placeholder + "}", uid)
        assert "${DS_" not in text
        assert json.loads(text) == json.loads(source)


def test_an_empty_datasource_uid_leaves_the_dashboard_as_exported() -> None:
    objects = render()  # DS_MIGMETER is "" by default
    cm = next(o for o in objects if o["metadata"]["name"] == "mm-migmeter-timescaledb-dashboard")
    assert json.loads(cm["data"]["migmeter-timescaledb.json"]) == json.loads(
        (GRAFANA / "migmeter-timescaledb.json").read_text())


def test_the_bi_login_job_runs_the_tested_script_with_its_secret() -> None:
    objects = render("ci/dcgm-values.yaml")  # biReader.enabled
    cm = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "mm-migmeter-bi-reader")
    assert cm["data"]["bi_reader.py"] == (CHART / "files" / "bi_reader.py").read_text().rstrip("\n")
    job = next(o for o in objects if o["kind"] == "Job" and o["metadata"]["name"] == "mm-migmeter-bi-reader")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"  # after the migrations
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    mount = next(m for m in c["volumeMounts"] if c["args"][0].startswith(m["mountPath"] + "/"))
    assert next(v for v in pod["volumes"] if v["name"] == mount["name"])["configMap"] == {"name": cm["metadata"]["name"]}
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    assert refs == {"MIGMETER_DATABASE_URL": {"name": "migmeter-db-owner", "key": "url"},
                    "MIGMETER_BI_USERNAME": {"name": "migmeter-bi-reader", "key": "username"},
                    "MIGMETER_BI_PASSWORD": {"name": "migmeter-bi-reader", "key": "password"}}
