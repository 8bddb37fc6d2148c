"""Backfill against a real Prometheus: generated DCGM history -> promtool blocks -> query_range -> snapshots.

The OpenMetrics history (MIG and non-MIG GPUs, tenants, one NaN) is generated here, loaded
with ``promtool tsdb create-blocks-from openmetrics`` into a private TSDB served by a private
``prometheus`` on a free loopback port, and the snapshots the source reads back are compared
with snapshots built straight from the generated numbers.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from migmeter.stack import free_port
from tests.fix_stack import missing_tool

from collector.snapshot import FULL_GPU_GI_ID, Instance, Metrics, Snapshot, Tenant
from collector.sources import prometheus as prom_module
from collector.sources.prometheus import PrometheusSource
from migmeter.errors import ConfigError, SourceUnavailable

STEP = 60
N_STEPS = 5
# Old enough to sit in a block, not the head; young enough for any retention.
AGE_S = 6 * 3600
# How long a fresh Prometheus may take to load its blocks and answer /-/ready.
READY_WAIT_S = 60


@dataclass(frozen=True)
class Gpu:
    uuid: str
    index: int
    model: str
    host: str
    # (gi_id, profile, tenant) per instance; None = MIG off (one pseudo-instance).
    instances: tuple[tuple[int, str, Tenant], ...] | None
    tenant: Tenant = Tenant()


GPUS = (
    Gpu("GPU-0a6c1d8e-3b57-4f8b-9a53-1f0c5c8e2d11", 0, "NVIDIA H100 80GB HBM3", "node-1",
        ((1, "3g.40gb", Tenant("team-a", "bert-0", "trainer")), (2, "2g.20gb", Tenant()),
         (5, "1g.10gb+me", Tenant("team-b", "etl-3", "worker")))),
    Gpu("GPU-5e2f7a90-8c41-4d3e-b6a7-2c9d0e1f3a22", 1, "NVIDIA H100 80GB HBM3", "node-1", None,
        Tenant("team-b", "llm-7", "server")),
    Gpu("GPU-9b3d4c5e-6f70-4182-93a4-b5c6d7e8f933", 0, "NVIDIA A30", "node-2",
        ((0, "2g.12gb", Tenant("team-a", "nb-1", "jupyter")), (3, "1g.6gb", Tenant()))),
)
NAN_AT = ("GPU-9b3d4c5e-6f70-4182-93a4-b5c6d7e8f933", 3, 2)  # (uuid, gi, step) whose sm_active is NaN


def metric_values(gi: int, k: int) -> dict[str, float]:
    """The generated value of every field of one instance at step k (exact in float64 text)."""
    return {
        "gr_engine_active": round(0.05 + 0.1 * k + 0.01 * (gi + 1), 6),
        "sm_active": round(0.02 + 0.08 * k + 0.01 * (gi + 1), 6),
        "fb_used_mib": float(1000 * (gi + 2) + k),
    }


FIELD_METRIC = {"gr_engine_active": "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "sm_active": "DCGM_FI_PROF_SM_ACTIVE",
                "fb_used_mib": "DCGM_FI_DEV_FB_USED"}


def rows(gpu: Gpu) -> list[tuple[int, str, Tenant]]:
    return list(gpu.instances) if gpu.instances is not None else [(FULL_GPU_GI_ID, "", gpu.tenant)]


def openmetrics(t0: int) -> str:
    """The history as OpenMetrics, families contiguous and each series in time order."""
    out = []
    for field, metric in FIELD_METRIC.items():
        out.append(f"# TYPE {metric} gauge")
        for gpu in GPUS:
            for gi, profile, tenant in rows(gpu):
                mig = f',GPU_I_PROFILE="{profile}",GPU_I_ID="{gi}"' if gi != FULL_GPU_GI_ID else ""
                labels = (f'gpu="{gpu.index}",UUID="{gpu.uuid}",device="nvidia{gpu.index}",modelName="{gpu.model}"'
                          f'{mig},Hostname="{gpu.host}",container="{tenant.container}",'
                          f'namespace="{tenant.namespace}",pod="{tenant.pod}"')
                for k in range(N_STEPS):
                    value = repr(metric_values(gi, k)[field])
                    if field == "sm_active" and (gpu.uuid, gi, k) == NAN_AT:
                        value = "NaN"
                    out.append(f"{metric}{{{labels}}} {value} {t0 + k * STEP}")
    out.append("# EOF")
    return "\n".join(out) + "\n"


def expected(t0: int) -> list[Snapshot]:
    snaps = []
    for k in range(N_STEPS):
        ts = datetime.fromtimestamp(t0 + k * STEP, tz=timezone.utc)
        for gpu in sorted(GPUS, key=lambda g: g.uuid):
            total = 4 if "A30" in gpu.model else 7
            instances = []
            for gi, profile, tenant in rows(gpu):
                values = metric_values(gi, k)
                if (gpu.uuid, gi, k) == NAN_AT:
                    del values["sm_active"]
                slices = total if gi == FULL_GPU_GI_ID else int(profile.split("g.")[0])
                instances.append(Instance(gi_id=gi, profile=profile, slices=slices, metrics=Metrics(**values),
                                          tenant=tenant))
            snaps.append(Snapshot(ts=ts, interval_s=float(STEP), source="prometheus", cluster="lab",
                                  host=gpu.host, gpu_uuid=gpu.uuid, gpu_index=gpu.index, gpu_model=gpu.model,
                                  mig_enabled=gpu.instances is not None, total_slices=total,
                                  instances=tuple(sorted(instances, key=lambda i: i.gi_id))))
    return snaps


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    pytest.fail(f"prometheus not ready after {READY_WAIT_S}s:\n{log.read_text()[-3000:]}")


@contextmanager
def running_prometheus(prometheus: str, work: Path, config: Path, tsdb: Path,
                       *flags: str) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """A private ``prometheus`` on a free loopback port, ready: (base URL, process, log file)."""
    port = free_port()
    log = work / "prometheus.log"
    with log.open("wb") as log_fh:
        proc = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
             f"--web.listen-address=127.0.0.1:{port}", *flags],
            stdout=log_fh, stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, proc, log)
        yield base, proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Server:
    base: str
    t0: int


@pytest.fixture(scope="module")
def prometheus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    binaries = [shutil.which(b) for b in ("prometheus", "promtool")]
    if None in binaries:
        missing_tool("prometheus/promtool not installed (Debian: apt-get install -y prometheus)")
    prometheus, promtool = binaries
    work = tmp_path_factory.mktemp("prometheus")
    t0 = (int(time.time()) - AGE_S) // STEP * STEP
    data = work / "dcgm.om"
    data.write_text(openmetrics(t0))
    tsdb = work / "tsdb"
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(data), str(tsdb)],
                   check=True, capture_output=True, timeout=120)
    config = work / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1h\n")
    with running_prometheus(str(prometheus), work, config, tsdb, "--storage.tsdb.retention.time=3650d") as (base, _, _):
        yield Server(base, t0)


def source(server: Server, **kw: object) -> PrometheusSource:
    args: dict[str, object] = dict(
        start=datetime.fromtimestamp(server.t0, tz=timezone.utc),
        end=datetime.fromtimestamp(server.t0 + (N_STEPS - 1) * STEP, tz=timezone.utc),
        step_s=STEP, cluster="lab", chunk_s=2 * STEP,
    )
    args.update(kw)
    return PrometheusSource(server.base, **args)  # type: ignore[arg-type]


def test_backfill_returns_the_generated_history_in_chunks(prometheus_server: Server) -> None:
    src = source(prometheus_server)
    chunks = []
    while not src.exhausted:
        chunks.append(src.read())
    assert [len(c) for c in chunks] == [2 * len(GPUS), 2 * len(GPUS), len(GPUS)]
    assert [s for c in chunks for s in c] == expected(prometheus_server.t0)
    assert src.stats.skipped == {"bad_value": 1}  # the NaN
    assert src.read() == []
    src.close()


def test_oversize_chunk_is_halved_and_still_complete(prometheus_server: Server,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Cap responses at the size of a 2-step answer: a 5-step chunk must be split, not lost.
    two_steps = source(prometheus_server, chunk_s=2 * STEP)
    query = two_steps._query(0, 1)  # the exact request a 2-step chunk sends
    monkeypatch.setattr(prom_module, "MAX_RESPONSE_BYTES", len(query))
    src = source(prometheus_server, chunk_s=N_STEPS * STEP)
    got = []
    while not src.exhausted:
        got.extend(src.read())
    assert got == expected(prometheus_server.t0)
    assert src.stats.skipped["chunk_halved"] == 1


def test_failed_request_raises_and_does_not_advance(prometheus_server: Server) -> None:
    src = source(prometheus_server)
    src.url = prometheus_server.base + "/no-such-prefix"
    with pytest.raises(SourceUnavailable, match="HTTP 404"):
        src.read()
    assert not src.exhausted
    src.url = prometheus_server.base
    assert len(src.read()) == 2 * len(GPUS)


@pytest.mark.parametrize("bad", [
    dict(step_s=0), dict(chunk_s=0), dict(end=datetime(2000, 1, 1, tzinfo=timezone.utc)),
    dict(start=datetime(2025, 1, 1)),
])
def test_bad_arguments_are_config_errors(bad: dict[str, object]) -> None:
    args: dict[str, object] = dict(start=datetime(2025, 1, 1, tzinfo=timezone.utc),
                                   end=datetime(2025, 1, 2, tzinfo=timezone.utc), step_s=60, cluster="c")
    args.update(bad)
    with pytest.raises(ConfigError):
        PrometheusSource("http://127.0.0.1:9", **args)  # type: ignore[arg-type]
