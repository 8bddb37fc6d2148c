"""The collector's /metrics: weight series with dcgm-exporter's labels, removal on layout change, health counters."""

from __future__ import annotations

import urllib.request

import pytest

from collector.metrics import CollectorMetrics, serve
from collector.publish import PublishStats
from migmeter.stack import free_port
from tests.processor.build import T0, TWO_GIS, inst, mig, whole


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _inst(m: CollectorMetrics, uuid: str, gi: str, profile: str, *, host: str = "h1", gpu: str = "0",
          model: str = "A100-SXM4-40GB") -> float | None:
    return m.registry.get_sample_value("migmeter_instance_slices", {
        "Hostname": host, "UUID": uuid, "gpu": gpu, "GPU_I_ID": gi, "GPU_I_PROFILE": profile, "modelName": model})


def _series(m: CollectorMetrics, name: str) -> list[dict[str, str]]:
    return [s.labels for fam in m.registry.collect() for s in fam.samples if s.name == name]


def test_mig_instances_export_their_slices_and_the_gpu_total() -> None:
    m = CollectorMetrics()
    m.observe_layout(mig(T0, TWO_GIS, gpu="GPU-a"))
    assert _inst(m, "GPU-a", "1", "3g.40gb") == 3
    assert _inst(m, "GPU-a", "2", "2g.20gb") == 2
    assert m.registry.get_sample_value(
        "migmeter_gpu_total_slices", {"Hostname": "h1", "UUID": "GPU-a", "gpu": "0", "modelName": "A100-SXM4-40GB"}
    ) == 7


def test_gpu_without_mig_is_one_series_with_empty_instance_labels() -> None:
    m = CollectorMetrics()
    m.observe_layout(whole(T0, 0.25, gpu="GPU-b", total=4, model="A30", index=1))
    assert _inst(m, "GPU-b", "", "", gpu="1", model="A30") == 4
    assert len(_series(m, "migmeter_instance_slices")) == 1


def test_destroyed_instances_are_removed_after_a_layout_change() -> None:
    m = CollectorMetrics()
    m.observe_layout(mig(T0, TWO_GIS, gpu="GPU-a"))
    m.observe_layout(mig(T0, [inst(gi, "1g.10gb", 0.5) for gi in (1, 5, 6)], gpu="GPU-a"))
    assert _inst(m, "GPU-a", "2", "2g.20gb") is None
    assert _inst(m, "GPU-a", "1", "3g.40gb") is None  # same GI id, new profile: old series gone
    assert _inst(m, "GPU-a", "1", "1g.10gb") == 1
    assert sorted(lab["GPU_I_ID"] for lab in _series(m, "migmeter_instance_slices")) == ["1", "5", "6"]


def test_mig_switched_off_leaves_only_the_whole_gpu_series() -> None:
    m = CollectorMetrics()
    m.observe_layout(mig(T0, TWO_GIS, gpu="GPU-a"))
    m.observe_layout(whole(T0, 0.5, gpu="GPU-a"))
    assert [lab["GPU_I_ID"] for lab in _series(m, "migmeter_instance_slices")] == [""]
    assert _inst(m, "GPU-a", "", "") == 7


def test_gpu_not_seen_for_five_intervals_disappears() -> None:
    clock = _Clock()
    m = CollectorMetrics(clock=clock)
    m.observe_layout(mig(T0, TWO_GIS, gpu="GPU-a"))
    m.observe_layout(whole(T0, 0.25, gpu="GPU-b", total=4, model="A30", index=1))
    clock.t += 60.0
    m.observe_layout(whole(T0, 0.25, gpu="GPU-b", total=4, model="A30", index=1))
    clock.t += 30.0  # GPU-a last seen 90 s ago > 5 x 15 s
    uuids = {lab["UUID"] for lab in _series(m, "migmeter_gpu_total_slices")}
    assert uuids == {"GPU-b"}


def test_sync_advances_counters_by_the_change_only() -> None:
    m = CollectorMetrics()
    stats = PublishStats(delivered=5, spooled=2, dropped=1, send_failures=1, spool_depth=2, spool_bytes=300)
    m.sync("dcgm", {"bad_value": 3}, stats)
    stats.delivered, stats.spool_depth = 9, 0
    m.sync("dcgm", {"bad_value": 4, "endpoint_error": 1}, stats)
    get = m.registry.get_sample_value
    assert get("migmeter_collector_snapshots_published_total") == 9
    assert get("migmeter_collector_snapshots_spooled_total") == 2
    assert get("migmeter_collector_snapshots_dropped_total") == 1
    assert get("migmeter_collector_skipped_values_total", {"source": "dcgm", "reason": "bad_value"}) == 4
    assert get("migmeter_collector_skipped_values_total", {"source": "dcgm", "reason": "endpoint_error"}) == 1
    assert get("migmeter_collector_spool_depth") == 0
    assert get("migmeter_collector_spool_bytes") == 300


def test_latency_histogram() -> None:
    m = CollectorMetrics()
    m.observe_latency(0.003)
    m.observe_latency(2.0)
    get = m.registry.get_sample_value
    assert get("migmeter_collector_send_latency_seconds_count") == 2
    assert get("migmeter_collector_send_latency_seconds_bucket", {"le": "0.005"}) == 1


def test_registries_are_independent() -> None:
    a, b = CollectorMetrics(), CollectorMetrics()
    a.observe_layout(mig(T0, TWO_GIS, gpu="GPU-a"))
    assert _series(b, "migmeter_instance_slices") == []


def test_served_over_http() -> None:
    m = CollectorMetrics()
    m.observe_layout(mig(T0, TWO_GIS, gpu="GPU-a"))
    port = free_port()  # port 0 means "disabled" in serve()
    stop = serve(m, port, "127.0.0.1")
    assert stop is not None
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        stop()
    assert (
        'migmeter_instance_slices{GPU_I_ID="1",GPU_I_PROFILE="3g.40gb",Hostname="h1",UUID="GPU-a",'
        'gpu="0",modelName="A100-SXM4-40GB"} 3.0'
    ) in body.splitlines()  # labels sorted by the exposition


def test_port_zero_disables_the_server() -> None:
    assert serve(CollectorMetrics(), 0) is None


@pytest.mark.parametrize("name", ["migmeter_instance_slices", "migmeter_gpu_total_slices"])
def test_weight_series_have_help_and_gauge_type(name: str) -> None:
    m = CollectorMetrics()
    fams = {f.name: f for f in m.registry.collect()}
    assert fams[name].type == "gauge"
    assert fams[name].documentation
