"""The benchmark harness: its arithmetic, its fleet and its baseline SQL must be right, or the
figures in the README are wrong. Unit tests need no services; the baseline SQL test is an
integration test on a fresh database."""

from __future__ import annotations

import math
from datetime import date
from typing import Any

import psycopg
import pytest
from psycopg import sql

from bench.baseline import _START, RAW_CHARGEBACK, RAW_DDL, _raw_rows
from bench.common import DENSE_MODEL, DenseFleet, percentile
from bench.run import render, targets
from bench.writepath import values_upsert_sql
from warehouse import reports
from processor.fold import BatchFold
from processor.sink import USAGE_TABLES, Sink


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def test_dense_fleet_has_seven_1g_instances_through_reconfigurations() -> None:
    fleet = DenseFleet(seed=3, hosts=1, gpus_per_host=8, models=(DENSE_MODEL,), reconfigure_every_s=600.0,
                       mig_toggle_prob=1.0)
    for _ in range(200):  # 50 minutes: every GPU is re-partitioned (and asked to toggle MIG) several times
        for snap in fleet.read():
            snap.validate()
            assert snap.mig_enabled
            assert [i.slices for i in snap.instances] == [1] * 7


def test_values_upsert_merges_exactly_like_the_sink() -> None:
    for _, spec, _ in USAGE_TABLES:
        ours = values_upsert_sql(spec).as_string(None)
        sinks = spec.upsert_sql().as_string(None)
        assert ours.split("DO UPDATE SET", 1)[1] == sinks.split("DO UPDATE SET", 1)[1]
        assert ours.count("%s") == len(spec.columns)


def _result(rate: float, p99: float, chargeback_s: float) -> dict[str, Any]:
    return {
        "dataset": {"avg_instances_per_snapshot": 7.0, "snapshots": 1000, "instance_samples": 7000, "gpus": 100,
                    "partitions": 4},
        "throughput": {"10000": {"instance_samples_per_s": rate, "snapshots_per_s": rate / 7,
                                 "steady_instance_samples_per_s": rate}},
        "consume_only": {"records_per_s": 2 * rate / 7},
        "latency_1x": {"batch_ms": 2000, "batch_records": 10_000, "p50_s": 1.0, "p95_s": 2.0, "p99_s": p99,
                       "achieved_snapshots_per_s": 133.0, "samples": 500},
        "baseline": {"fleet_1000": {"chargeback_month_s_measured": chargeback_s, "ratio_extrapolated": 500.0},
                     "queries": {"chargeback_month_s": {"ratio": 300.0}}},
    }


def test_targets_met_and_missed() -> None:
    met = {t["target"]: t["met"] for t in targets(_result(60_000.0, 3.9, 0.5))}
    assert all(met.values()), met
    missed = {t["target"]: t["met"] for t in targets(_result(10_000.0, 4.1, 2.0))}
    assert [k for k, v in missed.items() if not v] == [
        "processor >= 50,000 instance-samples/s (one process)",
        "end-to-end p99 <= batch interval + 2 s = 4 s at 133 snapshots/s",
        "monthly chargeback, 1,000 GPUs, pre-aggregated <= 1 s (default settings)",
    ]


def test_render_shows_missed_targets() -> None:
    res = _result(10_000.0, 4.1, 2.0)
    res.pop("baseline")  # a part that did not run is simply absent
    res["targets"] = targets(res)
    text = render(res)
    assert "NOT met" in text and "| figure" in text


def test_render_shows_reference_loops_before_after_and_scale_out() -> None:
    res = _result(10_000.0, 3.0, 0.5)
    res.pop("baseline")
    res["consume_msgspec"] = {"records_per_s": 4_000.0}
    res["before_after"] = {"trees": ["abc1234"], "abc1234": {
        "batch_records": 10_000, "instance_samples_per_s": 9_000.0, "steady_instance_samples_per_s": 9_500.0,
        "cpu_s_per_1m_instance_samples": 50.0, "db_backend_cpu_s_per_1m_instance_samples": 20.0,
        "rows_merged": 5_600, "peak_rss_mib": 240.0}}
    res["scale_out_8"] = {"2": {"partitions": 8, "instance_samples_per_s": 12_000.0,
                                "steady_instance_samples_per_s": 15_000.0, "cpu_s_per_1m_instance_samples": 45.0,
                                "db_backend_cpu_s_per_1m_instance_samples": 18.0, "wall_s": 9.5}}
    lines = {line.split("|")[1].strip(): line for line in render(res).splitlines() if line.count("|") >= 3}
    # 4,000 records/s x 7.0 instances per snapshot = 28,000 instance-samples/s.
    loop = lines["kafka-python + msgspec of every value"]
    assert "4,000 records/s" in loop and "= 28,000 inst-samples/s" in loop
    # 5,600 rows merged over the dataset's 7,000 instance-samples = 0.800 per sample.
    assert "0.800 rows merged per sample; peak RSS 240 MiB" in lines["processor at abc1234, batch 10000"]
    assert "wall 9.5 s" in lines["scale-out: 2 processor(s), 8 partitions"]


@pytest.mark.integration
def test_raw_chargeback_agrees_with_migmeter(fresh_db: str) -> None:
    """The baseline's SQL over raw rows gives the same GPU-hours per line as migmeter's report."""
    fleet = DenseFleet(seed=2, hosts=1, gpus_per_host=8, models=(DENSE_MODEL, "A30"), start=_START,
                       reconfigure_every_s=1800.0)
    snaps = [s for r in fleet.rounds(240) for s in r]  # one hour, mixed 7-slice and A30 layouts
    with psycopg.connect(fresh_db) as conn:
        conn.execute(RAW_DDL)  # type: ignore[arg-type]
        cols = sql.SQL(", ").join(map(sql.Identifier, ("ts", "interval_s", "cluster", "host", "gpu_uuid", "gpu_index",
                                                       "gpu_model", "mig_enabled", "total_slices", "gi_id", "profile",
                                                       "slices", "namespace", "pod", "container", "gr_engine_active",
                                                       "sm_active", "tensor_active", "dram_active", "fb_used_mib",
                                                       "fb_free_mib")))
        with conn.cursor() as cur, cur.copy(sql.SQL("COPY raw_samples ({}) FROM STDIN").format(cols)) as cp:
            for row in _raw_rows(snaps):
                cp.write_row(row)
        conn.commit()
        sink = Sink(fresh_db, "bench-test")
        fold = BatchFold({}, {})
        for n, s in enumerate(snaps):
            fold.add("t", 0, n, s.key, None, s)
        sink.write(fold.finish())
        sink.close()
        start, end = reports.month_range(date(2025, 1, 1))
        params = {"start": start, "end": end, "cluster": None}
        raw = {(r[0], r[1]): float(r[2]) for r in conn.execute(RAW_CHARGEBACK, params).fetchall()}
        ours_sql = sql.SQL(reports.load_query("chargeback")).format(keys=sql.Identifier("namespace"))
        ours = {(r[0], r[1]): float(r[2]) for r in conn.execute(ours_sql, params).fetchall()}
    assert set(raw) == set(ours)
    assert ("unallocated", "(unallocated)") in raw  # A30 layouts may leave slices free: the line must exist
    for key in ours:
        assert raw[key] == pytest.approx(ours[key], abs=1e-9), key


def test_a_failed_part_is_shown_and_not_judged() -> None:
    res = _result(60_000.0, 3.0, 0.5)
    res["latency_1x"] = {"error": "RuntimeError: broker went away"}
    res["targets"] = targets(res)
    res.pop("baseline")
    assert not any("p99" in t["target"] for t in res["targets"])
    assert "latency_1x: FAILED" in render(res)
