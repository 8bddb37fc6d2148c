"""NVML placements through the whole pipeline: the NVML source (over the fake pynvml: only the GPU is
faked) -> the collector's poll loop -> real Kafka -> the processor -> TimescaleDB -> ``report stranded``.

Two clusters, one H100 80GB HBM3 each (7 compute / 8 memory slices), the same layout as NVML reports
it (placement start:size): 2g.20gb GI 3 at 0:2, 1g.10gb GI 10 at 3:1, 2g.20gb GI 5 at 4:2; memory
slots 2, 6 and 7 free = 2 unallocated compute slices. ``nvml-root`` reads the placements;
``nvml-user``'s collector is unprivileged (nvmlDeviceGetGpuInstanceById: NoPermission). 4 rounds an
hour apart (Nov 10 2025 01:00-04:00, interval 3600 s: 4 h), 7.00 USD per GPU-hour = 1.00 per
slice-hour. Most requested profile: 2g.20gb (2 x 4 = 8 instance-hours; 1g.10gb 4).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pynvml
import pytest

from collector.publish import KafkaPublisher
from collector.run import run_loop
from collector.sources.nvml import NvmlSource
from tests.collector.sources.fake_pynvml import FakeGpu, FakeMig, FakeState, build, h100_profiles
from tests.fix_faults import config, run_until_idle, stored_offsets_total
from warehouse import prices

pytestmark = pytest.mark.integration

H100 = "NVIDIA H100 80GB HBM3"
NOV = date(2025, 11, 1)
ROUNDS = 4


def _h100(uuid: str, **kw: object) -> FakeGpu:
    return FakeGpu(uuid=uuid, name=H100, mig_enabled=True, profiles=h100_profiles(), migs=[
        FakeMig(gi_id=3, slices=2, sm_count=32, mem_mb=19_968, placement=(0, 2)),
        FakeMig(gi_id=10, slices=1, sm_count=16, mem_mb=9_856, placement=(3, 1)),
        FakeMig(gi_id=5, slices=2, sm_count=32, mem_mb=19_968, placement=(4, 2)),
    ], **kw)  # type: ignore[arg-type]


def _hourly() -> Callable[[], datetime]:
    ts = iter(datetime(2025, 11, 10, 1, tzinfo=timezone.utc) + timedelta(hours=h) for h in range(ROUNDS))
    return lambda: next(ts)


def _collect(bootstrap: str, topic: str, cluster: str, gpu: FakeGpu) -> None:
    """``migmeter collect --source nvml``'s loop, with the fake pynvml injected."""
    src = NvmlSource(cluster=cluster, interval_s=3600.0, nvml=build(FakeState(gpus=[gpu])), host="node-1",
                     clock=_hourly())
    summary = run_loop(src, KafkaPublisher(bootstrap, topic), interval_s=3600.0, speed=0, max_rounds=ROUNDS)
    assert summary.publish.delivered == ROUNDS and summary.scrape_errors == 0  # nothing failed the scrape
    placement_skips = {k: v for k, v in summary.skipped.items() if k.startswith("placement")}
    assert placement_skips == ({} if cluster == "nvml-root" else {"placement:NoPermission": 3 * ROUNDS})


@pytest.fixture
def nvml_db(kafka_bootstrap: str, new_topic: Callable[..., str], fresh_db: str) -> Iterator[str]:
    topic = new_topic(partitions=2)
    _collect(kafka_bootstrap, topic, "nvml-root", _h100("GPU-N-ROOT"))
    _collect(kafka_bootstrap, topic, "nvml-user", _h100("GPU-N-USER",
                                                       fail={"nvmlDeviceGetGpuInstanceById": pynvml.NVMLError_NoPermission}))
    run_until_idle(config(kafka_bootstrap, fresh_db, topic))
    # every record accounted for: 2 GPUs x 4 rounds, no duplicates, no dead letters
    assert stored_offsets_total(fresh_db) == (2 * ROUNDS, 2 * ROUNDS, 0, 0)
    with psycopg.connect(fresh_db) as conn:
        prices.set_price(conn, prices.Price(H100, Decimal("7.00"), "USD", NOV))
    yield fresh_db


def test_report_stranded_is_exact_where_nvml_gave_the_placement(nvml_db: str) -> None:
    with psycopg.connect(nvml_db) as conn:
        starts = sorted(conn.execute("SELECT gpu_uuid, gi_id, placement_start FROM instance_intervals").fetchall())
    assert starts == [("GPU-N-ROOT", 3, 0), ("GPU-N-ROOT", 5, 4), ("GPU-N-ROOT", 10, 3),
                      ("GPU-N-USER", 3, None), ("GPU-N-USER", 5, None), ("GPU-N-USER", 10, None)]
    r = subprocess.run([sys.executable, "-m", "migmeter.cli", "report", "stranded", "--month", "2025-11", "--format",
                        "json", "--database-url", nvml_db], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {row["cluster"]: row for row in json.loads(r.stdout)["rows"]}
    root, user = rows["nvml-root"], rows["nvml-user"]
    assert root["most_requested_profile"] == user["most_requested_profile"] == "2g.20gb"
    # Both: 2 free compute slices x 4 h = 8 unallocated slice-hours.
    assert root["unallocated_slice_hours"] == user["unallocated_slice_hours"] == pytest.approx(8.0)
    # Exact (nvml-root): a 2g may start at 0, 2 or 4; 2-3 holds the 1g at 3, 6 is no 2g start -> none fits:
    # 8 slice-hours stranded, 8.00 USD.
    assert (root["placement"], root["estimated_slice_hours"]) == ("exact", pytest.approx(0.0))
    assert root["hostable_slice_hours"] == pytest.approx(0.0)
    assert root["stranded_slice_hours"] == pytest.approx(8.0)
    assert Decimal(str(root["stranded_cost"])) == Decimal("8")
    # Estimated (nvml-user, no placement): the best case packs 2g at 0 and 2, the 1g at 6, so a 2g fits
    # at 4: both free slices hostable, 0 stranded. The real placement strands them all.
    assert (user["placement"], user["estimated_slice_hours"]) == ("estimated", pytest.approx(8.0))
    assert user["hostable_slice_hours"] == pytest.approx(8.0)
    assert user["stranded_slice_hours"] == pytest.approx(0.0)
