"""Backfill behind a real Prometheus that attaches target labels (kube-prometheus style).

A local HTTP endpoint serves exporter text built from the NVIDIA docs scrape in
``dcgm_reference/`` (GI 13 assigned to a workload pod, a copy of it as GI 5 with no pod). A
private ``prometheus`` scrapes it every second in two jobs, each adding the exporter pod's
``namespace``/``pod``/``container`` as target labels, one with ``honor_labels: false`` and one
with ``true``, and a third job whose ``metric_relabel_configs`` lower-case the metric names
(as some pipelines do) and is named like a ServiceMonitor's job; each job sees its own GPU UUID so they stay apart. The backfill then
reads what Prometheus stored: the workload pod must be GI 13's tenant and GI 5 unassigned, in
every job, with no configuration (the ``up`` series carry the target labels).
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from collector.snapshot import Tenant
from collector.sources.prometheus import PrometheusSource, targets_query
from tests.collector.sources.test_prometheus import running_prometheus
from tests.fix_stack import missing_tool

REFERENCE = (Path(__file__).parent / "dcgm_reference" / "01-a100-40gb-gpu-plus-gi-nvidia-docs.prom").read_text()
UUID = "GPU-34319582-d595-d1c7-d1d2-179bcfa61660"
# One GPU per job: the reference GPU's UUID with the last digit changed.
# The third job is named as a kube-prometheus ServiceMonitor names its jobs (slashes included).
LOWER_JOB = "serviceMonitor/gpu-operator/nvidia-dcgm-exporter/0"
JOB_UUID = {"dcgm-honor-false": UUID[:-1] + "1", "dcgm-honor-true": UUID[:-1] + "2",
            LOWER_JOB: UUID[:-1] + "3"}
# honor_labels per job, and the metric relabelling that lower-cases names (Prometheus >= 2.36).
JOB_HONOR = {"dcgm-honor-false": "false", "dcgm-honor-true": "true", LOWER_JOB: "false"}
LOWERCASE = """
    metric_relabel_configs:
      - source_labels: [__name__]
        target_label: __name__
        action: lowercase"""
GR = '{__name__=~"(?i)DCGM_FI_PROF_GR_ENGINE_ACTIVE"'  # a selector for either spelling (open brace)
WORKLOAD = Tenant("team-a", "bert-0", "trainer")
TARGET = {"namespace": "gpu-operator", "pod": "nvidia-dcgm-exporter-7xk2p", "container": "nvidia-dcgm-exporter"}
# Scrapes each job must have stored before the backfill reads (at 1 s per scrape): the
# backfill reads the last 3 whole seconds, so its first step lies well after the first scrape.
MIN_SCRAPES = 6
STORED_WAIT_S = 90


def exporter_text(uuid: str) -> str:
    """The reference scrape for one GPU: GI 13 runs bert-0, GI 5 (2g.10gb) has no pod."""
    lines = [ln.replace(UUID, uuid) for ln in REFERENCE.splitlines() if ln]
    out = []
    for ln in lines:
        if "GPU_I_ID" not in ln:
            out.append(ln)
            continue
        # dcgm-exporter writes the pod labels after Hostname, only for a GI a pod holds.
        out.append(ln.replace('"} ', '",container="trainer",namespace="team-a",pod="bert-0"} ', 1))
        out.append(ln.replace('GPU_I_PROFILE="1g.5gb",GPU_I_ID="13"', 'GPU_I_PROFILE="2g.10gb",GPU_I_ID="5"')
                   .replace("0.995687", "0.25"))
    return "\n".join(out) + "\n"


def prometheus_config(port: int) -> str:
    jobs = []
    for job, honor in JOB_HONOR.items():
        labels = "".join(f"\n          {k}: {v}" for k, v in TARGET.items())
        jobs.append(f"""  - job_name: "{job}"
    honor_labels: {honor}
    scrape_interval: 1s
    scrape_timeout: 1s
    metrics_path: /{job}
    static_configs:
      - targets: ["127.0.0.1:{port}"]
        labels:{labels}{LOWERCASE if job == LOWER_JOB else ""}""")
    return "global:\n  scrape_interval: 1s\nscrape_configs:\n" + "\n".join(jobs) + "\n"


@dataclass(frozen=True)
class Scraped:
    base: str


def _query(base: str, promql: str) -> list[dict[str, object]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        doc = json.loads(resp.read())
    assert doc["status"] == "success", doc
    result: list[dict[str, object]] = doc["data"]["result"]
    return result


def _wait_stored(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until every job has MIN_SCRAPES scrapes of the GI series stored."""
    deadline = time.monotonic() + STORED_WAIT_S
    promql = f'min(count_over_time({GR},GPU_I_ID="5"}}[5m]))'
    promql_jobs = f'count(count by (job) ({GR},GPU_I_ID="5"}}))'
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        fewest, jobs = _query(base, promql), _query(base, promql_jobs)
        if fewest and jobs and float(fewest[0]["value"][1]) >= MIN_SCRAPES and \
                float(jobs[0]["value"][1]) == len(JOB_UUID):  # type: ignore[index]
            return
        time.sleep(0.5)
    pytest.fail(f"prometheus stored fewer than {MIN_SCRAPES} scrapes per job in {STORED_WAIT_S}s:\n"
                f"{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        missing_tool("prometheus not installed (Debian: apt-get install -y prometheus)")
    bodies = {f"/{job}": exporter_text(uuid).encode() for job, uuid in JOB_UUID.items()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = bodies.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    exporter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    exporter.daemon_threads = True
    serving = threading.Thread(target=exporter.serve_forever, daemon=True)
    serving.start()
    work = tmp_path_factory.mktemp("prometheus-targets")
    config = work / "prometheus.yml"
    config.write_text(prometheus_config(exporter.server_address[1]))
    try:
        with running_prometheus(prometheus, work, config, work / "tsdb") as (base, proc, log):
            _wait_stored(base, proc, log)
            yield Scraped(base)
    finally:
        exporter.shutdown()
        exporter.server_close()
        serving.join()


def _backfill(base: str) -> PrometheusSource:
    end = int(time.time())
    # Three steps inside the stored scrapes (each step reads the latest sample before it).
    return PrometheusSource(base, start=datetime.fromtimestamp(end - 2, tz=timezone.utc),
                            end=datetime.fromtimestamp(end, tz=timezone.utc), step_s=1, cluster="lab")


@pytest.mark.parametrize("job,exported", [("dcgm-honor-false", True), ("dcgm-honor-true", False),
                                          (LOWER_JOB, True)])
def test_the_stored_series_carry_the_exporters_pod(scraped: Scraped, job: str, exported: bool) -> None:
    # The premise: what Prometheus stored is the confusing shape the backfill must untangle.
    (gi5,) = _query(scraped.base, f'{GR},job="{job}",GPU_I_ID="5"}}')
    (gi13,) = _query(scraped.base, f'{GR},job="{job}",GPU_I_ID="13"}}')
    assert {k: gi5["metric"].get(k) for k in TARGET} == TARGET  # type: ignore[attr-defined]
    lower = job == LOWER_JOB
    assert gi13["metric"]["__name__"] == ("dcgm_fi_prof_gr_engine_active" if lower  # type: ignore[index]
                                          else "DCGM_FI_PROF_GR_ENGINE_ACTIVE")
    if exported:  # honor_labels: false: the workload's labels renamed, the target's beside them
        assert gi13["metric"]["exported_pod"] == "bert-0" and gi13["metric"]["pod"] == TARGET["pod"]  # type: ignore[index]
    else:  # honor_labels: true: the workload's labels won
        assert gi13["metric"]["pod"] == "bert-0" and "exported_pod" not in gi13["metric"]  # type: ignore[index,operator]


@pytest.mark.parametrize("job", sorted(JOB_UUID))
def test_backfill_bills_the_workload_and_not_the_exporter(scraped: Scraped, job: str) -> None:
    src = _backfill(scraped.base)
    snaps = [s for s in src.read() if s.gpu_uuid == JOB_UUID[job]]
    assert src.exhausted
    assert len(snaps) == 3  # one per step
    for s in snaps:
        assert s.mig_enabled
        assert [(i.gi_id, i.profile, i.slices, i.tenant) for i in s.instances] == [
            (5, "2g.10gb", 2, Tenant()),  # unassigned, not gpu-operator/nvidia-dcgm-exporter-7xk2p
            (13, "1g.5gb", 1, WORKLOAD),
        ]
        assert [i.metrics.gr_engine_active for i in s.instances] == [0.25, 0.995687]
    assert src.stats.skipped == {}


@pytest.mark.parametrize("jobs", [{"dcgm"}, {LOWER_JOB, "dcgm-honor-true"}, {'odd"job', "back\\slash", "a.b|c"}])
def test_targets_query_selects_exactly_these_jobs(jobs: set[str]) -> None:
    query = targets_query(jobs)
    m = re.fullmatch(r'up\{job=~"((?:[^"\\]|\\.)*)"\}', query)
    assert m, query
    # Undo the PromQL string escapes (\\ and \"), then the regex must match each job and only them.
    regex = re.sub(r'\\(.)', r"\1", m.group(1))
    assert all(re.fullmatch(regex, job) for job in jobs)
    assert not any(re.fullmatch(regex, other) for other in ("dcgm-x", "a.bXc", "xdcgm", "odd"))
