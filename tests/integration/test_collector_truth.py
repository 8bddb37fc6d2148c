"""Issue 12 end to end: glitchy exporter rounds -> dcgm source -> Kafka -> processor -> warehouse.

Four rounds of the NVIDIA docs scrape (``tests/collector/sources/dcgm_reference/``), GI 13
shared by two pods (dcgm-exporter ``--kubernetes-virtual-gpus`` copies): a normal round, a
round whose profile reads ``<<<NULL>>>``, a round without GI rows, a normal round. The
warehouse must show the two pods billed half each, no profile change, and the GPU never
leaving MIG mode.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from collector.sources.dcgm import DcgmSource
from tests.fix_faults import config, produce, run_until_idle, stored_offsets_total
from tests.processor.build import T0

pytestmark = pytest.mark.integration

REFERENCE = (Path(__file__).parents[1] / "collector" / "sources" / "dcgm_reference" /
             "01-a100-40gb-gpu-plus-gi-nvidia-docs.prom").read_text()
GR = 0.995687  # GI 13's DCGM_FI_PROF_GR_ENGINE_ACTIVE in the reference


def _round(kind: str) -> str:
    gpu = [ln for ln in REFERENCE.splitlines() if ln and "GPU_I_ID" not in ln]
    gi = [ln for ln in REFERENCE.splitlines() if "GPU_I_ID" in ln]
    if kind == "garbled":
        gi = [ln.replace('GPU_I_PROFILE="1g.5gb"', 'GPU_I_PROFILE="<<<NULL>>>"') for ln in gi]
    shared = [ln.replace('"} ', f'",pod="{pod}",namespace="ns",container="c",vgpu="{v}"}} ', 1)
              for v, pod in enumerate(("a-0", "b-0")) for ln in gi]
    return "\n".join(gpu + ([] if kind == "no_gi_rows" else shared)) + "\n"


def test_glitches_and_sharing_reach_the_warehouse_truthfully(kafka_bootstrap, new_topic, fresh_db):  # type: ignore[no-untyped-def]
    bodies = iter([_round(k) for k in ("normal", "garbled", "no_gi_rows", "normal")])
    times = iter([T0 + timedelta(seconds=30 + 15 * k) for k in range(4)])
    src = DcgmSource(["http://gpu-node-1:9400/metrics"], cluster="lab", interval_s=15,
                     http_get=lambda url, timeout, cap: next(bodies).encode(), clock=lambda: next(times))
    snaps = [s for _ in range(4) for s in src.read()]
    assert [(s.mig_enabled, len(s.instances)) for s in snaps] == [(True, 1), (True, 1), (True, 0), (True, 1)]
    assert src.stats.skipped == {"garbled_profile": 1, "mig_rows_missing": 1}
    topic = new_topic(partitions=1)
    produce(kafka_bootstrap, topic, snaps)
    group = f"truth-{uuid.uuid4().hex[:8]}"
    run_until_idle(config(kafka_bootstrap, fresh_db, topic, group=group))
    assert stored_offsets_total(fresh_db, group)[1:] == (4, 0, 0)  # 4 merged, no duplicates or dead letters
    with psycopg.connect(fresh_db) as conn:
        events = conn.execute("SELECT event, gi_id FROM layout_events ORDER BY ts, gi_id").fetchall()
        tenants = conn.execute("SELECT namespace, pod, sum(alloc_gpu_seconds), sum(busy_gpu_seconds) "
                               "FROM tenant_usage_1d GROUP BY namespace, pod ORDER BY namespace, pod").fetchall()
        (seconds, alloc, mig_seconds) = conn.execute(
            "SELECT sum(seconds), sum(alloc_gpu_seconds), sum(mig_seconds) FROM gpu_usage_1d").fetchone()
    # Only the round without GI rows changes the layout: GI 13 gone, then back. No mig_disabled,
    # no pseudo-instance, no profile change for the garbled round.
    assert events == [("destroyed", 13), ("created", 13)]
    # GI 13 (1g of 7) held for 3 rounds of 15 s: 45/7 GPU-s, half to each pod = 22.5/7 = 3.214;
    # used = x 0.995687 = 3.1996.
    assert [(ns, pod) for ns, pod, *_ in tenants] == [("ns", "a-0"), ("ns", "b-0")]
    for _, _, pod_alloc, pod_busy in tenants:
        assert pod_alloc == pytest.approx(22.5 / 7)
        assert pod_busy == pytest.approx(22.5 / 7 * GR)
    # 60 s metered, all of it in MIG mode; tenants = allocated (the missing round is unallocated).
    assert (seconds, mig_seconds) == (pytest.approx(60.0), pytest.approx(60.0))
    assert alloc == pytest.approx(45 / 7) == pytest.approx(sum(t[2] for t in tenants))
