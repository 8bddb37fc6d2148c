"""Who a labelled exporter sample belongs to: label-name spellings, and the scrape target's own pod.

dcgm-exporter has shipped the pod labels as ``pod``/``namespace``/``container`` and as
``pod_name``/``pod_namespace``/``container_name``; pipelines lower-case names; and a
Prometheus that attaches target labels puts the exporter pod's own ``namespace``/``pod``/
``container`` on every series, renaming the exporter's labels to ``exported_*`` unless
``honor_labels`` is set. :func:`tenant_of` reads the workload pod of one sample through all of
that; :class:`TargetFilter` is how it recognises the exporter's own pod.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from collector.snapshot import Tenant

__all__ = ["TENANT_LABEL_GROUPS", "TargetFilter", "tenant_of", "LabelCase"]

# (namespace, pod, container) label names, first group with a workload pod wins. exported_*
# first: behind a Prometheus without honor_labels they are the exporter's own labels, and the
# plain names are the scrape target's. The old exporter names (pod_name, ...) come before the
# plain ones for the same reason: a target label is never spelled pod_name by kube-prometheus.
TENANT_LABEL_GROUPS = (
    ("exported_namespace", "exported_pod", "exported_container"),
    ("exported_pod_namespace", "exported_pod_name", "exported_container_name"),
    ("pod_namespace", "pod_name", "container_name"),
    ("namespace", "pod", "container"),
)


@dataclass(frozen=True)
class TargetFilter:
    """Tells the pod of the scrape target (the exporter itself) from a workload's pod.

    Behind a Prometheus whose scrape config attaches target labels (kube-prometheus
    ServiceMonitor/PodMonitor), every series carries the exporter pod's ``namespace``/``pod``/
    ``container``: beside the workload's ``exported_*`` labels (``honor_labels: false``) or on
    their own when the instance has no workload (both settings). ``targets`` maps a series'
    (``job``, ``instance``) to the label sets of that target's ``up`` series, which carry
    exactly the target's labels: a pod label equal to the target's is the exporter's, not a
    tenant. ``exporter_pod`` is for sites whose relabelling differs: a pod name it matches in
    full is the exporter's.
    """

    targets: Mapping[tuple[str, str], Sequence[Mapping[str, str]]] = field(default_factory=dict)
    exporter_pod: re.Pattern[str] | None = None

    def is_exporter(self, labels: Mapping[str, str], ns_label: str, pod_label: str) -> bool:
        """Whether ``labels[pod_label]`` (label names lower-cased) names the scrape target's pod."""
        pod = labels.get(pod_label, "")
        if self.exporter_pod is not None and self.exporter_pod.fullmatch(pod):
            return True
        ns = labels.get(ns_label, "")
        for target in self.targets.get((labels.get("job", ""), labels.get("instance", "")), ()):
            if target.get(pod_label) == pod and target.get(ns_label, ns) == ns:
                return True
        return False


def tenant_of(labels: Mapping[str, str], targets: TargetFilter | None) -> Tenant:
    """The workload pod a sample names (label names lower-cased), or unassigned."""
    for ns_label, pod_label, container_label in TENANT_LABEL_GROUPS:
        if not labels.get(pod_label):
            continue
        if targets is not None and targets.is_exporter(labels, ns_label, pod_label):
            continue
        return Tenant(namespace=labels.get(ns_label, ""), pod=labels[pod_label],
                      container=labels.get(container_label, ""))
    return Tenant()


class LabelCase:
    """Label names lower-cased, once per labels object: a Prometheus series shares one object
    across its points. The cache holds each object, so its id cannot be reused while cached;
    use one per parse."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[Mapping[str, str], dict[str, str]]] = {}

    def lowered(self, labels: Mapping[str, str]) -> dict[str, str]:
        hit = self._cache.get(id(labels))
        if hit is not None:
            return hit[1]
        low = {k.lower(): v for k, v in labels.items()}
        self._cache[id(labels)] = (labels, low)
        return low
