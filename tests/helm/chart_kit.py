"""Rendering the Helm chart with the real `helm` binary, and walking what it renders.

`helm` is found as ``$MIGMETER_HELM``, else on ``PATH`` (``.ci/run`` builds a pinned one). Without
it the chart tests skip on a developer machine and fail with CI=true, like the stack fixtures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any


from tests.fix_stack import missing_tool
import yaml

__all__ = [
    "CHART",
    "VALUES_FILES",
    "KUBE_VERSIONS",
    "RELEASE",
    "NAMESPACE",
    "MONITORING_API",
    "helm_binary",
    "render",
    "render_error",
    "pod_templates",
    "containers",
]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "compose" / "helm" / "migmeter"
# None = the chart's defaults; the others are realistic sites (see each file's header).
VALUES_FILES: tuple[str | None, ...] = (None, "ci/dcgm-values.yaml", "ci/nvml-values.yaml",
                                        "ci/kafka-tls-sasl-values.yaml")
# The chart's minimum (Chart.yaml kubeVersion) and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.25.0", "1.37.0")
RELEASE = "mm"
NAMESPACE = "gpu-metering"
_HELM_TIMEOUT_S = 120


def helm_binary() -> str:
    """Path of helm; skips (or fails in CI) when there is none."""
    found = os.environ.get("MIGMETER_HELM") or shutil.which("helm")
    if not found:
        missing_tool("helm is not installed (.ci/run builds it: go install helm.sh/helm/v3/cmd/helm@<pinned>)")
    return found


# The Prometheus Operator's API: the chart renders ServiceMonitors and the PrometheusRule only
# where the cluster serves it.
MONITORING_API = "monitoring.coreos.com/v1"


def _template_cmd(values: str | None, kube_version: str, extra: tuple[str, ...]) -> list[str]:
    cmd = [helm_binary(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
           "--kube-version", kube_version, "--api-versions", MONITORING_API]
    if values:
        cmd += ["-f", str(CHART / values)]
    return cmd + list(extra)


def render(values: str | None = None, *extra: str, kube_version: str = KUBE_VERSIONS[-1],
           monitoring: bool = True) -> list[dict[str, Any]]:
    """Every object ``helm template`` renders (hooks included), as dicts; ``monitoring=False``
    renders for a cluster without the Prometheus Operator."""
    cmd = _template_cmd(values, kube_version, extra)
    if not monitoring:
        cmd.remove("--api-versions")
        cmd.remove(MONITORING_API)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_HELM_TIMEOUT_S, check=False)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render_error(values: str | None = None, *extra: str) -> str:
    """stderr of a ``helm template`` that must fail."""
    proc = subprocess.run(_template_cmd(values, KUBE_VERSIONS[-1], extra), capture_output=True, text=True,
                          timeout=_HELM_TIMEOUT_S, check=False)
    assert proc.returncode != 0, "helm template succeeded but should have failed"
    return proc.stderr


def pod_templates(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(owning object, pod template) for every workload, CronJobs included."""
    for obj in objects:
        kind = obj["kind"]
        if kind in ("DaemonSet", "StatefulSet", "Deployment", "Job"):
            yield obj, obj["spec"]["template"]
        elif kind == "CronJob":
            yield obj, obj["spec"]["jobTemplate"]["spec"]["template"]


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(owning object, pod spec, container) for every container and init container."""
    for obj, template in pod_templates(objects):
        spec = template["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield obj, spec, c
