"""dcgm-exporter parsing: the real reference scrape, then one small test per quirk of real exporters.

The hand-written scrapes copy the label style of the real files (``gpu``, ``UUID``, ``device``,
``modelName``, ``GPU_I_PROFILE``, ``GPU_I_ID``, ``Hostname``, and the Kubernetes pod labels).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from collector.snapshot import FULL_GPU_GI_ID, Metrics, Snapshot, Tenant, from_json
from collector.sources.base import ReadStats
from collector.sources.dcgm import DcgmSource, parse_scrape, snapshots_from_samples
from migmeter.errors import ConfigError, SourceUnavailable

REFERENCE = Path(__file__).parent / "dcgm_reference" / "01-a100-40gb-gpu-plus-gi-nvidia-docs.prom"
TS = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
UUID_A = "GPU-34319582-d595-d1c7-d1d2-179bcfa61660"
UUID_B = "GPU-66068b5a-84f7-e3c9-bc10-e21eae988090"
H100 = 'modelName="NVIDIA H100 80GB HBM3"'


def parse(text: str, stats: ReadStats | None = None, **kw: object) -> list[Snapshot]:
    """parse_scrape, plus the check that every snapshot it returns survives the wire unchanged."""
    snaps = parse_scrape(text, cluster="test", ts=TS, interval_s=15.0, stats=stats, **kw)  # type: ignore[arg-type]
    assert [from_json(s.to_json()) for s in snaps] == snaps
    return snaps


def gi_row(metric: str, value: str, gi: int, profile: str, *, uuid: str = UUID_A, extra: str = "") -> str:
    """One instance row in dcgm-exporter 3.x style (the label order it writes)."""
    return (f'{metric}{{gpu="0",UUID="{uuid}",pci_bus_id="00000000:09:00.0",device="nvidia0",{H100},'
            f'GPU_I_PROFILE="{profile}",GPU_I_ID="{gi}",Hostname="dcgm-exporter-x7k2p"{extra}}} {value}')


def gpu_row(metric: str, value: str, *, uuid: str = UUID_A, gpu: int = 0, model: str = H100, extra: str = "") -> str:
    return (f'{metric}{{gpu="{gpu}",UUID="{uuid}",pci_bus_id="00000000:09:00.0",device="nvidia{gpu}",{model},'
            f'Hostname="dcgm-exporter-x7k2p"{extra}}} {value}')


def lines(*rows: str) -> str:
    return "\n".join(rows) + "\n"


# --- the real reference scrape ---------------------------------------------------------------

def test_reference_a100_docs_scrape_reads_the_instance_row_only() -> None:
    stats = ReadStats()
    snaps = parse(REFERENCE.read_text(), stats)
    assert len(snaps) == 1
    s = snaps[0]
    assert (s.gpu_uuid, s.host, s.gpu_index, s.gpu_model) == (UUID_A, "ub20-a100-k8s", 0, "unknown")
    assert (s.mig_enabled, s.total_slices, s.source, s.cluster, s.interval_s) == (True, 7, "dcgm", "test", 15.0)
    assert s.ts == TS
    assert len(s.instances) == 1
    inst = s.instances[0]
    assert (inst.gi_id, inst.profile, inst.slices) == (13, "1g.5gb", 1)
    # The GI row's values, not the GPU-level row's (GR 0.995630, FB 4845/35690 MiB).
    assert inst.metrics == Metrics(gr_engine_active=0.995687, tensor_active=0.930433, dram_active=0.800339)
    assert inst.tenant == Tenant()
    assert stats.skipped == {}


def test_reference_snapshot_survives_the_wire() -> None:
    (s,) = parse(REFERENCE.read_text())
    assert from_json(s.to_json()) == s


def test_reference_file_url_is_read_by_the_source() -> None:
    src = DcgmSource([f"file:{REFERENCE}"], cluster="test", interval_s=15.0, clock=lambda: TS)
    (s,) = src.read()
    assert s.instances[0].gi_id == 13 and s.ts == TS
    assert src.stats.skipped == {}


# --- label names -----------------------------------------------------------------------------

def test_lowercase_hostname_and_uuid_labels() -> None:
    text = lines(f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="1",uuid="{UUID_B}",device="nvidia1",{H100},'
                 f'hostname="node-7"}} 0.25')
    (s,) = parse(text)
    assert (s.gpu_uuid, s.host, s.gpu_index) == (UUID_B, "node-7", 1)
    assert s.instances[0].metrics.gr_engine_active == 0.25


def test_old_pod_name_pod_namespace_container_name_labels() -> None:
    text = lines(gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.5", 1, "3g.40gb",
                        extra=',container_name="trainer",pod_name="bert-0",pod_namespace="team-a"'))
    (s,) = parse(text)
    assert s.instances[0].tenant == Tenant(namespace="team-a", pod="bert-0", container="trainer")


def test_current_pod_namespace_container_labels() -> None:
    text = lines(gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.5", 1, "3g.40gb",
                        extra=',container="trainer",namespace="team-a",pod="bert-0"'))
    (s,) = parse(text)
    assert s.instances[0].tenant == Tenant(namespace="team-a", pod="bert-0", container="trainer")


def test_exported_pod_labels_win_over_the_exporters_own_pod() -> None:
    # Prometheus without honor_labels renames the exporter's pod labels and sets pod= to its own pod.
    text = lines(gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.5", 1, "3g.40gb",
                        extra=',exported_namespace="team-a",exported_pod="bert-0",exported_container="trainer",'
                              'namespace="gpu-operator",pod="nvidia-dcgm-exporter-abcde",container="exporter"'))
    (s,) = parse(text)
    assert s.instances[0].tenant == Tenant(namespace="team-a", pod="bert-0", container="trainer")


def test_empty_pod_labels_mean_unassigned() -> None:
    text = lines(gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.1", 1, "3g.40gb", extra=',container="",namespace="",pod=""'),
                 gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.9", 2, "3g.40gb", extra=',container="c",namespace="ns",pod="p"'))
    (s,) = parse(text)
    assert [i.tenant.assigned for i in s.instances] == [False, True]


# --- MIG layouts -----------------------------------------------------------------------------

def test_mig_gpu_with_only_instance_rows() -> None:
    text = lines(gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.9", 1, "3g.40gb"),
                 gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.6", 5, "2g.20gb"),
                 gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.8", 13, "1g.10gb"))
    (s,) = parse(text)
    assert s.mig_enabled and s.total_slices == 7
    assert [(i.gi_id, i.slices, i.metrics.gr_engine_active) for i in s.instances] == [(1, 3, 0.9), (5, 2, 0.6), (13, 1, 0.8)]


def test_old_exporter_gpu_level_row_is_not_counted_twice() -> None:
    text = lines(gpu_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.7"),
                 gpu_row("DCGM_FI_DEV_FB_USED", "30000"),
                 gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.9", 1, "3g.40gb"),
                 gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.5", 2, "4g.40gb"))
    (s,) = parse(text)
    assert [i.gi_id for i in s.instances] == [1, 2]
    assert FULL_GPU_GI_ID not in [i.gi_id for i in s.instances]
    assert all(i.metrics.fb_used_mib is None for i in s.instances)


def test_gpu_i_id_repeats_across_gpus_instance_is_uuid_and_gi() -> None:
    text = lines(gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.9", 1, "3g.40gb", uuid=UUID_A),
                 gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.2", 1, "3g.40gb", uuid=UUID_B))
    a, b = parse(text)
    assert (a.gpu_uuid, a.instances[0].metrics.gr_engine_active) == (UUID_A, 0.9)
    assert (b.gpu_uuid, b.instances[0].metrics.gr_engine_active) == (UUID_B, 0.2)


def test_non_mig_gpu_beside_mig_gpu_on_the_same_node() -> None:
    text = lines(gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.9", 1, "7g.80gb", uuid=UUID_A),
                 gpu_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.4", uuid=UUID_B, gpu=1,
                         extra=',container="c",namespace="ns",pod="p"'),
                 gpu_row("DCGM_FI_DEV_FB_USED", "1000", uuid=UUID_B, gpu=1))
    mig, full = parse(text)
    assert mig.mig_enabled and mig.instances[0].slices == 7
    assert not full.mig_enabled and full.gpu_index == 1
    (pseudo,) = full.instances
    assert (pseudo.gi_id, pseudo.profile, pseudo.slices) == (FULL_GPU_GI_ID, "", 7)
    assert pseudo.metrics == Metrics(gr_engine_active=0.4, fb_used_mib=1000.0)
    assert pseudo.tenant == Tenant(namespace="ns", pod="p", container="c")


def test_mig_mode_metric_without_instances_is_an_empty_mig_gpu() -> None:
    text = lines(gpu_row("DCGM_FI_DEV_MIG_MODE", "1"), gpu_row("DCGM_FI_DEV_FB_USED", "0"))
    (s,) = parse(text)
    assert s.mig_enabled and s.instances == ()


def test_instance_row_without_a_metric_we_read_still_shows_the_layout() -> None:
    text = lines(gi_row("DCGM_FI_DEV_XID_ERRORS", "0", 3, "2g.20gb"))
    (s,) = parse(text)
    assert [(i.gi_id, i.slices, i.metrics) for i in s.instances] == [(3, 2, Metrics())]


# --- profiles and slices ---------------------------------------------------------------------

def test_profile_names_7g_79gb_and_media_extension() -> None:
    h200 = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
    text = lines(gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.5", 0, "7g.79gb", uuid=h200),
                 gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.5", 9, "1g.18gb+me", uuid=UUID_B))
    by_uuid = {s.gpu_uuid: s.instances[0] for s in parse(text)}
    assert (by_uuid[h200].profile, by_uuid[h200].slices) == ("7g.79gb", 7)
    assert (by_uuid[UUID_B].profile, by_uuid[UUID_B].slices) == ("1g.18gb+me", 1)


def test_null_profile_instance_is_skipped_and_counted() -> None:
    stats = ReadStats()
    text = lines(gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.5", 1, "<<<NULL>>>"),
                 gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.7", 2, "2g.20gb"))
    (s,) = parse(text, stats)
    assert [i.gi_id for i in s.instances] == [2]
    assert stats.skipped == {"unknown_profile": 1}


def test_a30_has_four_slices() -> None:
    text = lines(gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.5", 1, "2g.12gb").replace(H100, 'modelName="NVIDIA A30"'))
    (s,) = parse(text)
    assert (s.gpu_model, s.total_slices) == ("NVIDIA A30", 4)


def test_missing_model_name_means_seven_slices_unless_overridden() -> None:
    text = lines(f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="0",UUID="{UUID_A}",device="nvidia0",Hostname="h"}} 0.5')
    (s,) = parse(text)
    assert (s.gpu_model, s.total_slices, s.instances[0].slices) == ("unknown", 7, 7)
    (s,) = parse(text, total_slices_overrides={"unknown": 4})
    assert (s.total_slices, s.instances[0].slices) == (4, 4)


def test_instances_using_more_slices_than_the_gpu_drop_the_snapshot() -> None:
    stats = ReadStats()
    a30 = 'modelName="NVIDIA A30"'
    text = lines(gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.5", 1, "4g.24gb").replace(H100, a30),
                 gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.5", 2, "2g.12gb").replace(H100, a30),
                 gpu_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.3", uuid=UUID_B))
    (s,) = parse(text, stats)
    assert s.gpu_uuid == UUID_B
    assert stats.skipped == {"slices_exceed_total": 1}


# --- values ----------------------------------------------------------------------------------

def test_missing_fb_metrics_are_none() -> None:
    (s,) = parse(lines(gi_row("DCGM_FI_PROF_SM_ACTIVE", "0.4", 1, "3g.40gb")))
    m = s.instances[0].metrics
    assert (m.sm_active, m.fb_used_mib, m.fb_free_mib) == (0.4, None, None)


def test_all_six_fields_map_to_their_metrics() -> None:
    text = lines(*(gi_row(name, value, 1, "3g.40gb") for name, value in [
        ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.9"), ("DCGM_FI_PROF_SM_ACTIVE", "0.8"),
        ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "0.7"), ("DCGM_FI_PROF_DRAM_ACTIVE", "0.6"),
        ("DCGM_FI_DEV_FB_USED", "20480"), ("DCGM_FI_DEV_FB_FREE", "19968")]))
    (s,) = parse(text)
    assert s.instances[0].metrics == Metrics(0.9, 0.8, 0.7, 0.6, 20480.0, 19968.0)


def test_error_failed_to_convert_value_costs_only_its_line() -> None:
    stats = ReadStats()
    text = lines("# HELP DCGM_FI_DEV_COMPUTE_PIDS Compute processes running on the GPU.",
                 "# TYPE DCGM_FI_DEV_COMPUTE_PIDS gauge",
                 gpu_row("DCGM_FI_DEV_COMPUTE_PIDS", "ERROR - FAILED TO CONVERT TO STRING"),
                 gpu_row("DCGM_FI_PROF_DRAM_ACTIVE", "ERROR - FAILED TO CONVERT TO STRING"),
                 gpu_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.42"))
    (s,) = parse(text, stats)
    assert s.instances[0].metrics == Metrics(gr_engine_active=0.42)
    assert stats.skipped == {"bad_line": 1, "bad_value": 1}


def test_string_value_with_garbage_labels_mig_exporter_4_1() -> None:
    # dcgm-exporter 4.1.1 on MIG (issue NVIDIA/dcgm-exporter#488): a string field as value.
    stats = ReadStats()
    text = lines(gi_row("DCGM_FI_DEV_CUDA_VISIBLE_DEVICES_STR", f"MIG-{UUID_A}/3", 3, "2g.24gb",
                        extra=',DCGM_FI_DEV_MIG_CI_INFO="ERROR - FAILED TO CONVERT TO STRING"'),
                 gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.3", 3, "2g.24gb"))
    (s,) = parse(text, stats)
    assert [(i.gi_id, i.metrics.gr_engine_active) for i in s.instances] == [(3, 0.3)]
    assert stats.skipped == {"bad_line": 1}


@pytest.mark.parametrize("value", ["NaN", "+Inf", "-Inf", "-0.5", "1.5", "1.7976931348623157e+308"])
def test_nan_inf_negative_and_sentinel_ratios_are_skipped_and_counted(value: str) -> None:
    stats = ReadStats()
    text = lines(gi_row("DCGM_FI_PROF_SM_ACTIVE", value, 1, "3g.40gb"),
                 gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.5", 1, "3g.40gb"))
    (s,) = parse(text, stats)
    assert s.instances[0].metrics == Metrics(gr_engine_active=0.5)
    assert stats.skipped == {"bad_value": 1}


@pytest.mark.parametrize("value", ["-1", "11534336", "9223372036854775794"])
def test_fb_sentinels_over_10_tib_or_negative_are_skipped(value: str) -> None:
    stats = ReadStats()
    (s,) = parse(lines(gi_row("DCGM_FI_DEV_FB_USED", value, 1, "3g.40gb"),
                       gi_row("DCGM_FI_DEV_FB_FREE", "100", 1, "3g.40gb")), stats)
    assert s.instances[0].metrics == Metrics(fb_free_mib=100.0)
    assert stats.skipped == {"bad_value": 1}


def test_tiny_overshoot_is_clamped_to_one() -> None:
    text = lines(gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "1.0000001", 1, "3g.40gb"),
                 gi_row("DCGM_FI_PROF_SM_ACTIVE", "-0.0000001", 1, "3g.40gb"))
    (s,) = parse(text)
    assert (s.instances[0].metrics.gr_engine_active, s.instances[0].metrics.sm_active) == (1.0, 0.0)


def test_device_wide_fields_are_never_read_or_summed() -> None:
    text = lines(*(gi_row(name, "409.692", gi, prof) for gi, prof in [(1, "3g.40gb"), (2, "4g.40gb")]
                   for name in ("DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_GPU_TEMP",
                                "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")))
    (s,) = parse(text)
    assert [i.metrics for i in s.instances] == [Metrics(), Metrics()]


def test_duplicate_series_keep_the_first_value() -> None:
    # The same series twice (one pod): the first value stands, the second is counted.
    stats = ReadStats()
    text = lines(gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.5", 1, "3g.40gb", extra=',pod="a",namespace="n"'),
                 gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.7", 1, "3g.40gb", extra=',pod="a",namespace="n"'))
    (s,) = parse(text, stats)
    assert (s.instances[0].tenant.pod, s.instances[0].tenants) == ("a", ())
    assert s.instances[0].metrics.gr_engine_active == 0.5
    assert stats.skipped == {"duplicate_sample": 1}


def test_row_without_uuid_and_bad_gi_id_are_counted() -> None:
    stats = ReadStats()
    text = lines('DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="0",device="nvidia0",Hostname="h"} 0.5',
                 gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.5", 1, "3g.40gb").replace('GPU_I_ID="1"', 'GPU_I_ID="x"'),
                 gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.6", 2, "3g.40gb"))
    (s,) = parse(text, stats)
    assert [i.gi_id for i in s.instances] == [2]
    assert stats.skipped == {"missing_uuid": 1, "bad_label": 1}


def test_html_page_yields_nothing_and_is_counted() -> None:
    stats = ReadStats()
    page = "<html>\n<head><title>502 Bad Gateway</title></head>\n" + "<p>x</p>\n" * 100
    assert parse(page, stats) == []
    assert stats.skipped["not_exposition"] == 1


def test_empty_scrape_is_no_gpus() -> None:
    stats = ReadStats()
    assert parse("", stats) == [] and stats.skipped == {}


def test_ts_is_aware_utc_truncated_to_milliseconds() -> None:
    local = datetime(2025, 3, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    (s,) = parse_scrape(lines(gpu_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.5")), cluster="c", ts=local, interval_s=5)
    assert s.ts == datetime(2025, 3, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)
    assert s.ts.tzinfo is timezone.utc


def test_shared_function_takes_samples_from_any_source() -> None:
    samples = [("DCGM_FI_PROF_GR_ENGINE_ACTIVE", {"UUID": UUID_A, "GPU_I_ID": "2", "GPU_I_PROFILE": "2g.20gb"}, 0.5)]
    (s,) = snapshots_from_samples(samples, ts=TS, interval_s=60, source="prometheus", cluster="c")
    assert (s.source, s.instances[0].gi_id, s.instances[0].slices) == ("prometheus", 2, 2)


def test_source_rejects_an_unknown_url_scheme() -> None:
    with pytest.raises(ConfigError):
        DcgmSource(["ftp://x/metrics"], cluster="c", interval_s=15)


# --- HTTP endpoints --------------------------------------------------------------------------

GOOD_SCRAPE = lines(gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.9", 1, "3g.40gb"),
                    gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.6", 5, "2g.20gb")).encode()
BIG = 256 * 1024


@pytest.fixture
def exporter() -> Iterator[str]:
    """A local HTTP server with one good and several broken 'exporters'; yields its base URL."""
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _send(self, status: int, ctype: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/good":
                self._send(200, "text/plain; version=0.0.4", GOOD_SCRAPE)
            elif self.path == "/500":
                self._send(500, "text/plain", b"internal error\n")
            elif self.path == "/html":
                self._send(200, "text/html", b"<!DOCTYPE html>\n<html><body>login</body></html>\n")
            elif self.path == "/huge":
                # No Content-Length: the cap must hold while reading, not only from the header.
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                row = (gpu_row("DCGM_FI_DEV_GPU_TEMP", "61") + "\n").encode()
                self.wfile.write(row * (BIG // len(row) + 10))
            elif self.path == "/hang":
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(GOOD_SCRAPE[:50])
                self.wfile.flush()
                release.wait(30)  # released by the fixture's teardown

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join()


def test_failing_endpoints_are_counted_and_the_good_one_still_read(exporter: str) -> None:
    urls = [f"{exporter}/{p}" for p in ("500", "html", "hang", "huge", "good")]
    src = DcgmSource(urls, cluster="c", interval_s=15, timeout_s=0.5, max_bytes=BIG, clock=lambda: TS)
    snaps = src.read()
    assert [(s.gpu_uuid, [i.gi_id for i in s.instances]) for s in snaps] == [(UUID_A, [1, 5])]
    assert src.stats.skipped == {"endpoint_error": 1, "not_exposition": 1, "endpoint_timeout": 1, "body_too_large": 1}
    src.close()


def test_all_endpoints_failing_raises_source_unavailable(exporter: str) -> None:
    src = DcgmSource([f"{exporter}/500", f"file:{REFERENCE}.missing"], cluster="c", interval_s=15, timeout_s=0.5)
    with pytest.raises(SourceUnavailable):
        src.read()
    assert src.stats.skipped == {"endpoint_error": 2}
    src.close()


def test_label_longer_than_the_wire_allows_is_skipped_and_counted() -> None:
    stats = ReadStats()
    text = lines(gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.5", 1, "3g.40gb", extra=f',pod="{"p" * 300}"'),
                 gi_row("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "0.6", 2, "3g.40gb"))
    (s,) = parse(text, stats)
    assert [i.gi_id for i in s.instances] == [2]
    assert from_json(s.to_json()) == s
    assert stats.skipped == {"bad_label": 1}
