"""Whose sample is it: tenant label spellings in order, the scrape target's pod, lower-cased names."""

from __future__ import annotations

import re

import pytest

from collector.snapshot import Tenant
from collector.sources.labels import LabelCase, TargetFilter, tenant_of

EXPORTER = {"namespace": "gpu-operator", "pod": "nvidia-dcgm-exporter-7xk2p", "container": "nvidia-dcgm-exporter"}
SCRAPE = {"job": "gpu-metrics", "instance": "10.0.0.7:9400"}


@pytest.mark.parametrize("labels,tenant", [
    ({}, Tenant()),
    ({"pod": "", "namespace": "", "container": ""}, Tenant()),  # empty labels: unassigned
    ({"namespace": "team-a"}, Tenant()),  # a namespace alone names no pod
    ({"pod": "p", "namespace": "n", "container": "c"}, Tenant("n", "p", "c")),
    ({"pod_name": "p", "pod_namespace": "n", "container_name": "c"}, Tenant("n", "p", "c")),
    ({"exported_pod": "p", "exported_namespace": "n", **EXPORTER}, Tenant("n", "p", "")),
    ({"pod_name": "p", "pod_namespace": "n", **EXPORTER}, Tenant("n", "p", "")),
])
def test_first_group_naming_a_pod_wins(labels: dict[str, str], tenant: Tenant) -> None:
    assert tenant_of(labels, None) == tenant


def test_up_labels_mark_the_exporter_pod_whichever_honor_labels() -> None:
    filt = TargetFilter(targets={("gpu-metrics", "10.0.0.7:9400"): [{**SCRAPE, **EXPORTER}]})
    # honor_labels false, GI with a workload: exported_* read, target's plain labels beside them.
    assert tenant_of({**SCRAPE, **EXPORTER, "exported_pod": "bert-0", "exported_namespace": "a"}, filt) == \
        Tenant("a", "bert-0", "")
    # Either setting, GI without a workload: only the target's labels: unassigned.
    assert tenant_of({**SCRAPE, **EXPORTER}, filt) == Tenant()
    # The same pod name in another namespace is somebody else.
    assert tenant_of({**SCRAPE, **EXPORTER, "namespace": "team-a"}, filt) == \
        Tenant("team-a", "nvidia-dcgm-exporter-7xk2p", "nvidia-dcgm-exporter")


def test_exporter_pod_pattern_matches_whole_names_only() -> None:
    filt = TargetFilter(exporter_pod=re.compile(r"dcgm-exporter-[a-z0-9]+"))
    assert tenant_of({"pod": "dcgm-exporter-x7k2p", "namespace": "mon"}, filt) == Tenant()
    assert tenant_of({"pod": "my-dcgm-exporter-x7k2p", "namespace": "mon"}, filt) == Tenant("mon", "my-dcgm-exporter-x7k2p")


def test_label_case_lowers_names_not_values_once_per_object() -> None:
    case = LabelCase()
    labels = {"UUID": "GPU-ABC", "Hostname": "Node-1", "GPU_I_ID": "3"}
    low = case.lowered(labels)
    assert low == {"uuid": "GPU-ABC", "hostname": "Node-1", "gpu_i_id": "3"}
    assert case.lowered(labels) is low  # one series' labels are lowered once
    assert case.lowered(dict(labels)) is not low
