"""The Helm chart, tested with the real tools: `helm lint`, `helm template` with the defaults and
three realistic sites (ci/*.yaml), every rendered object validated against the Kubernetes API
schemas of the chart's oldest and of a recent release (kubernetes-validate, offline), every
container's command line parsed by migmeter's own argparse parser, and the rules the chart
refuses to render."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from migmeter.cli import build_parser
from warehouse.retention import parse_keep
from tests.helm.chart_kit import (
    CHART,
    KUBE_VERSIONS,
    MONITORING_API,
    NAMESPACE,
    RELEASE,
    VALUES_FILES,
    containers,
    helm_binary,
    pod_templates,
    render,
    render_error,
)

# What the kubelet substitutes for the downward-API variables the chart's args use.
_FIELD_SAMPLES = {"status.hostIP": "10.0.3.17", "metadata.name": f"{RELEASE}-migmeter-processor-0"}
_REF = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _values(values: str | None) -> dict[str, Any]:
    merged = yaml.safe_load((CHART / "values.yaml").read_text())
    if values:
        _deep_merge(merged, yaml.safe_load((CHART / values).read_text()))
    return merged


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> None:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = v


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _one(objects: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    found = [o for o in _by_kind(objects, kind)
             if o["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"expected one {kind} of {component}, got {len(found)}"
    return found[0]


# --------------------------------------------------------------------------- helm itself


@pytest.mark.parametrize("values", VALUES_FILES)
def test_helm_lint_is_clean(values: str | None) -> None:
    cmd = [helm_binary(), "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSIONS[-1]]
    if values:
        cmd += ["-f", str(CHART / values)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", VALUES_FILES)
def test_every_object_matches_the_kubernetes_api_schema(values: str | None, kube_version: str) -> None:
    objects = render(values, kube_version=kube_version)
    validated = 0
    for obj in objects:
        if obj["apiVersion"] == MONITORING_API:
            continue  # a CRD: no schema offline; checked structurally below and by promtool
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{obj['kind']} {obj['metadata']['name']} is invalid for Kubernetes "
                                 f"{kube_version}: {exc.message} at {list(exc.path)}") from None
        validated += 1
    # defaults: 3 NetworkPolicies, PDB, 2 dashboard ConfigMaps, 2 Services, DaemonSet, StatefulSet,
    # CronJob, migration Job = 12; +ConfigMap and Job of the BI login where biReader is on (dcgm).
    expected = {None: 12, "ci/dcgm-values.yaml": 14, "ci/nvml-values.yaml": 12, "ci/kafka-tls-sasl-values.yaml": 12}
    assert validated == expected[values]


def test_the_schema_check_rejects_a_misspelt_field() -> None:
    """The validation above can fail: strict mode refuses a field Kubernetes does not know."""
    daemonset = _one(render(), "DaemonSet", "collector")
    daemonset["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True  # 'S', not 's'
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBE_VERSIONS[-1], strict=True)


# --------------------------------------------------------------------------- command lines


def _expanded_args(container: dict[str, Any]) -> list[str]:
    """The container's args as the kubelet passes them: $(VAR) of a downward-API variable
    substituted; a reference to anything else is an error (a typo stays literal in Kubernetes)."""
    field_of = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container.get("env", [])
                if "fieldRef" in e.get("valueFrom", {})}

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        assert name in field_of, f"{container['name']}: $({name}) is not a downward-API variable of the container"
        return _FIELD_SAMPLES[field_of[name]]

    return [_REF.sub(sub, str(a)) for a in container.get("args", [])]


def _parse(argv: list[str]) -> Any:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"migmeter {' '.join(argv)} does not parse: {err.getvalue()}") from None


def _port(container: dict[str, Any], name: str) -> int:
    return next(int(p["containerPort"]) for p in container["ports"] if p["name"] == name)


@pytest.mark.parametrize("values", VALUES_FILES)
def test_every_command_line_parses_with_migmeters_own_parser(values: str | None) -> None:
    v = _values(values)
    seen = set()
    for obj, spec, c in containers(render(values)):
        if c["command"] == ["python"]:
            # The BI login job runs the chart's own script (tests/helm/test_bi_reader.py).
            assert c["args"] == ["/opt/migmeter-chart/bi_reader.py"] and c["name"] == "bi-reader"
            seen.add("bi-reader")
            continue
        assert c["command"] == ["migmeter"], f"{c['name']}: unexpected command {c['command']}"
        args = _parse(_expanded_args(c))
        seen.add(c["name"])
        if c["name"] == "collector":
            assert args.command == "collect" and args.source == v["collector"]["source"]
            assert args.cluster == v["cluster"] and args.interval == float(v["collector"]["interval"])
            assert args.metrics_addr == "0.0.0.0" and args.metrics_port == _port(c, "metrics")
            assert args.spool_dir == next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "spool")
            if args.source == "dcgm":
                assert args.url == ["http://10.0.3.17:9400/metrics"]  # the node's IP from status.hostIP
            else:
                assert not args.url and spec["runtimeClassName"] == "nvidia"
        elif c["name"] == "processor":
            assert args.command == "process"
            assert args.instance_id == f"{RELEASE}-migmeter-processor-0"  # the pod's name: static membership
            assert args.group == v["processor"]["group"] and args.topic == v["kafka"]["topic"]
            assert args.metrics_addr == "0.0.0.0" and args.metrics_port == _port(c, "metrics")
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        elif c["name"] == "migrations":
            assert (args.command, args.db_action) == ("db", "migrate")
            assert obj["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
        elif c["name"] == "retention":
            assert (args.command, args.db_action) == ("db", "retention")
            r = v["retention"]
            assert (args.keep_1m, args.keep_1h, args.keep_1d, args.keep_events) == (
                r["keep1m"], r["keep1h"], r["keep1d"], r["keepEvents"])
            for age in (args.keep_1m, args.keep_1h, args.keep_1d, args.keep_events):
                parse_keep(age)  # raises on an age `db retention` would refuse
        else:
            raise AssertionError(f"unexpected container {c['name']}")
    expected = {"collector", "processor", "migrations", "retention"} | ({"bi-reader"} if v["biReader"]["enabled"]
                                                                      else set())
    assert seen == expected


def test_a_wrong_flag_fails_the_parse() -> None:
    """The check above can fail: a flag migmeter does not have is refused."""
    collector = next(c for _, _, c in containers(render()) if c["name"] == "collector")
    with pytest.raises(AssertionError, match="does not parse"):
        _parse(_expanded_args(collector) + ["--metrics-address", "0.0.0.0"])


# --------------------------------------------------------------------------- secrets


def _secret_env_names(c: dict[str, Any]) -> set[str]:
    return {e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}


@pytest.mark.parametrize("values", VALUES_FILES)
def test_credentials_come_only_from_secrets(values: str | None) -> None:
    objects = render(values)
    assert _by_kind(objects, "Secret") == [], "the chart must not carry credentials itself"
    for _, spec, c in containers(objects):
        secret_env = _secret_env_names(c)
        for a in c.get("args", []):
            refs = set(_REF.findall(str(a)))
            assert not refs & secret_env, f"{c['name']}: argument {a!r} expands a secret"
            assert not re.search(r"://[^/@\s]*:[^/@\s]*@", str(a)), f"{c['name']}: a password in {a!r}"
            assert "password" not in str(a).lower() or str(a) == "--sasl-password-file"
        for e in c.get("env", []):
            if "value" in e:
                assert not re.search(r"://[^/@\s]*:[^/@\s]*@", e["value"]), f"{c['name']}: password in env {e}"
                assert "PASSWORD" not in e["name"] or e["name"].endswith("_FILE")
        db_url = next((e for e in c.get("env", []) if e["name"] == "MIGMETER_DATABASE_URL"), None)
        if db_url is not None and "value" in db_url:
            # password-less URL: the password is in a libpq passfile mounted from a Secret
            passfile = next(e["value"] for e in c["env"] if e["name"] == "PGPASSFILE")
            mount = next(m for m in c["volumeMounts"] if passfile.startswith(m["mountPath"] + "/"))
            volume = next(vol for vol in spec["volumes"] if vol["name"] == mount["name"])
            assert "secret" in volume and mount["readOnly"] is True
            assert volume["secret"]["defaultMode"] == 0o440  # libpq accepts root-owned 0640 or less


def test_every_secret_file_the_kafka_settings_name_is_mounted() -> None:
    objects = render("ci/kafka-tls-sasl-values.yaml")
    checked = 0
    for _, spec, c in containers(objects):
        env = {e["name"]: e for e in c.get("env", [])}
        if "MIGMETER_KAFKA_BOOTSTRAP" not in env:
            continue
        assert env["MIGMETER_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
        assert env["MIGMETER_KAFKA_SASL_MECHANISM"]["value"] == "SCRAM-SHA-512"
        assert env["MIGMETER_KAFKA_SASL_USERNAME"]["valueFrom"]["secretKeyRef"] == {
            "name": "migmeter-kafka-sasl", "key": "username"}
        volumes = {vol["name"]: vol for vol in spec["volumes"]}
        for var, secret, key in (("MIGMETER_KAFKA_SASL_PASSWORD_FILE", "migmeter-kafka-sasl", "password"),
                                 ("MIGMETER_KAFKA_SSL_CAFILE", "migmeter-kafka-ca", "ca.pem")):
            path = env[var]["value"]
            mount = next(m for m in c["volumeMounts"] if path == f"{m['mountPath']}/{key}")
            assert volumes[mount["name"]]["secret"]["secretName"] == secret
            assert {"key": key, "path": key} in volumes[mount["name"]]["secret"]["items"]
        checked += 1
    assert checked == 2  # collector and processor


def test_a_password_in_values_is_refused() -> None:
    err = render_error(None, "--set", "database.writer.url=postgresql://proc:hunter2@tsdb:5432/migmeter",
                       "--set", "database.writer.passfileKey=pgpass")
    assert "database.writer.url holds a password" in err
    assert "hunter2" not in err.split("holds a password")[1]


# --------------------------------------------------------------------------- scaling and placement


def test_more_processors_than_partitions_is_refused() -> None:
    err = render_error(None, "--set", "processor.replicas=5", "--set", "kafka.partitions=4")
    assert "processor.replicas (5) exceeds kafka.partitions (4)" in err
    assert _one(render(None, "--set", "processor.replicas=4"), "StatefulSet", "processor")["spec"]["replicas"] == 4


def test_values_are_checked_against_the_charts_schema() -> None:
    assert "at '/collector/source': value must be one of 'dcgm', 'nvml'" in render_error(
        None, "--set", "collector.source=prometheus")
    # a misspelt key is an error, not a silently ignored setting
    assert "at '/processor': additional properties 'replica' not allowed" in render_error(
        None, "--set", "processor.replica=3")
    assert "at '/kafka/securityProtocol': value must be one of" in render_error(
        None, "--set", "kafka.securityProtocol=TLS")


def test_collectors_run_on_gpu_operator_nodes() -> None:
    ds = _one(render(), "DaemonSet", "collector")["spec"]["template"]["spec"]
    assert ds["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in ds["tolerations"]
    host_ip = next(e for e in ds["containers"][0]["env"] if e["name"] == "HOST_IP")
    assert host_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    # NVML: the NVIDIA runtime makes every GPU visible without requesting one.
    nv = _one(render("ci/nvml-values.yaml"), "DaemonSet", "collector")["spec"]["template"]["spec"]
    assert nv["runtimeClassName"] == "nvidia"
    assert "nvidia.com/gpu" not in str(nv["containers"][0]["resources"])
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"} in nv["containers"][0]["env"]


# --------------------------------------------------------------------------- pod security


@pytest.mark.parametrize("values", VALUES_FILES)
def test_pods_run_restricted(values: str | None) -> None:
    objects = render(values)
    for obj, template in pod_templates(objects):
        spec = template["spec"]
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, obj["metadata"]["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            csc = c["securityContext"]
            assert csc["readOnlyRootFilesystem"] is True, c["name"]
            assert csc["allowPrivilegeEscalation"] is False
            assert csc["capabilities"] == {"drop": ["ALL"]}
            for kind in ("requests", "limits"):
                assert set(c["resources"][kind]) == {"cpu", "memory"}, f"{c['name']} {kind}"


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    sel = policy["spec"]["podSelector"]
    if any(labels.get(k) != val for k, val in sel.get("matchLabels", {}).items()):
        return False
    return all(labels.get(e["key"]) in e["values"] for e in sel.get("matchExpressions", []))


def _egress_ports(policy: dict[str, Any]) -> set[int]:
    return {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"] if p["port"] != 53}


@pytest.mark.parametrize("values", VALUES_FILES)
def test_network_policies_cover_every_pod_and_allow_only_what_it_needs(values: str | None) -> None:
    objects = render(values)
    v = _values(values)
    kafka, db = set(v["kafka"]["ports"]), set(v["database"]["ports"])
    policies = _by_kind(objects, "NetworkPolicy")
    for obj, template in pod_templates(objects):
        labels = template["metadata"]["labels"]
        mine = [p for p in policies if _selects(p, labels)]
        assert len(mine) == 1, f"{obj['metadata']['name']} is selected by {len(mine)} NetworkPolicies"
        policy = mine[0]
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        component = labels["app.kubernetes.io/component"]
        wanted = {"collector": kafka | ({9400} if v["collector"]["source"] == "dcgm" else set()),
                  "processor": kafka | db}.get(component, db)
        assert _egress_ports(policy) == wanted, component
        ingress = policy["spec"].get("ingress", [])
        if component in ("collector", "processor"):
            assert [p["port"] for rule in ingress for p in rule["ports"]] == ["metrics"]
        else:
            assert ingress == []


# --------------------------------------------------------------------------- Prometheus objects


def test_service_monitors_scrape_the_metrics_port_of_their_component() -> None:
    objects = render("ci/dcgm-values.yaml")
    for component in ("collector", "processor"):
        sm = _one(objects, "ServiceMonitor", component)
        svc = _one(objects, "Service", component)
        assert sm["apiVersion"] == MONITORING_API
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        assert [e["port"] for e in sm["spec"]["endpoints"]] == ["metrics"]
        assert "metrics" in [p["name"] for p in svc["spec"]["ports"]]
        # Prometheus' job label = the Service's jobLabel value, which the shipped rules select on.
        assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == f"migmeter-{component}"
        pods = _one(objects, "DaemonSet" if component == "collector" else "StatefulSet", component)
        assert svc["spec"]["selector"].items() <= pods["spec"]["template"]["metadata"]["labels"].items()


def test_without_the_prometheus_operator_no_monitoring_objects_are_rendered() -> None:
    """A cluster without the operator's CRDs would refuse the whole install over them."""
    kinds = sorted(o["kind"] for o in render(monitoring=False))
    with_operator = sorted(o["kind"] for o in render())
    assert "ServiceMonitor" not in kinds and "PrometheusRule" not in kinds
    assert with_operator == sorted(kinds + ["PrometheusRule", "ServiceMonitor", "ServiceMonitor"])
