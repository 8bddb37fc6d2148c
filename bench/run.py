"""Run every benchmark against the local stack, print one table, write bench/results/<ts>.json.

    python bench/run.py            # full run (~14 minutes on the 2-core dev machine)
    python bench/run.py --quick    # smaller data, single runs (~4 minutes): a smoke test
    python bench/run.py --only throughput,latency

Everything runs in fresh databases (``bench_<hex>``) and fresh topics (``bench.<hex>``),
dropped at the end, so it can share the stack with tests and the demo. The machine is
shared: every figure is stored with the load average at the time it was taken.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import baseline as baseline_mod  # noqa: E402
from bench import ceiling, latency, throughput, writepath  # noqa: E402
from bench.common import fresh_topic, load_average  # noqa: E402
from migmeter import settings  # noqa: E402

__all__ = ["Plan", "PLANS", "main", "targets", "render"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PARTS = ("throughput", "ceiling", "writepath", "scaleout", "latency", "baseline")


@dataclass(frozen=True)
class Plan:
    """Sizes of one run; ``full`` is what the README figures come from."""

    snapshots: int  # pre-loaded into the throughput topic
    batch_sizes: tuple[int, ...]
    repeats: int
    default_batch: int
    latency_s: float
    latency_10x_s: float
    latency_10x_big_s: float  # 10x again with 30 s micro-batches (0 = skip)
    baseline_gpus: int
    baseline_days: int
    writepath_snapshots: int
    copy_rows_snapshots: int


PLANS = {
    "full": Plan(60_000, (1_000, 5_000, 20_000), 3, 10_000, 45.0, 45.0, 75.0, 8, 7, 2_000, 20_000),
    "quick": Plan(8_000, (1_000, 10_000), 1, 10_000, 20.0, 15.0, 0.0, 8, 1, 1_000, 5_000),
}

# Targets of issue #7.
TARGET_RATE = 50_000.0
TARGET_CEILING_SHARE = 0.5
TARGET_LATENCY_SLACK_S = 2.0
TARGET_CHARGEBACK_S = 1.0
TARGET_CHARGEBACK_RATIO = 10.0


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg} (load {load_average()[0]})", file=sys.stderr, flush=True)


class _Parts:
    """Runs each part in isolation: a failing part is recorded with its error and the rest go
    on; the results file is rewritten after every part, so a late failure loses nothing."""

    def __init__(self, res: dict[str, Any], path: Path) -> None:
        self.res, self.path = res, path

    def do(self, key: str, label: str, fn: Any) -> Any:
        _log(label)
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - a benchmark part failing must not lose the others
            _log(f"{key} FAILED: {exc.__class__.__name__}: {exc}")
            value = {"error": f"{exc.__class__.__name__}: {str(exc)[:500]}"}
        self.res[key] = value
        self.path.parent.mkdir(exist_ok=True)
        self.path.write_text(json.dumps(self.res, indent=1, default=str))
        return value


def run(plan: Plan, parts: tuple[str, ...], path: Path, compare_rev: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "plan": plan.__dict__,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_at_start": load_average()},
    }
    p = _Parts(res, path)
    t_all = time.perf_counter()
    if {"throughput", "ceiling", "scaleout"} & set(parts) or compare_rev:
        with fresh_topic(4) as topic:
            loaded = p.do("loaded", f"pre-loading {plan.snapshots} snapshots",
                          lambda: throughput.load_topic(topic, plan.snapshots))
            res.pop("loaded")
            if not isinstance(loaded, throughput.Loaded):
                raise SystemExit(f"pre-loading the topic failed: {loaded}")
            res["dataset"] = {"snapshots": loaded.snapshots, "instance_samples": loaded.instance_samples,
                              "avg_instances_per_snapshot": loaded.avg_instances, "gpus": loaded.gpus,
                              "partitions": len(loaded.end), "preload_s": loaded.preload_s}
            if "ceiling" in parts:
                p.do("consume_only", "consume-only ceiling", lambda: ceiling.consume_only(
                    settings.kafka_bootstrap(), topic, loaded.end, max(plan.repeats, 3)))
                for mode in ceiling.CONSUME_MODES[1:]:
                    p.do(f"consume_{mode}", f"kafka-python + {mode} of every value", lambda m=mode: ceiling.consume_only(
                        settings.kafka_bootstrap(), topic, loaded.end, max(plan.repeats, 3), mode=m))
            if "throughput" in parts:
                p.do("throughput", f"processor throughput, batch sizes {plan.batch_sizes} x {plan.repeats}",
                     lambda: throughput.throughput(loaded, plan.batch_sizes, plan.repeats))
            if compare_rev:
                rev = compare_rev
                p.do("before_after", f"before/after: processor at {rev} vs the working tree",
                     lambda: _before_after(loaded, rev, plan))
            if "scaleout" in parts:
                # One run per configuration (each is a full catch-up of the topic; the machine is shared).
                p.do("scale_out", "scale-out: 1, 2 and 4 processors on 4 partitions",
                     lambda: throughput.scale_out(loaded, plan.default_batch, 1, processes=(1, 2, 4)))
    if "scaleout" in parts:
        with fresh_topic(8) as topic8:
            loaded8 = p.do("loaded8", f"pre-loading {plan.snapshots} snapshots into 8 partitions",
                           lambda: throughput.load_topic(topic8, plan.snapshots))
            res.pop("loaded8")
            if isinstance(loaded8, throughput.Loaded):
                p.do("scale_out_8", "scale-out: 1 and 2 processors on 8 partitions",
                     lambda: throughput.scale_out(loaded8, plan.default_batch, 1, processes=(1, 2)))
    if "ceiling" in parts:
        p.do("copy_ceiling", "COPY ceiling", lambda: ceiling.copy_ceiling(
            ceiling.usage_rows(plan.copy_rows_snapshots, gpus=1000)["instance_usage_1m"], max(plan.repeats, 3)))
    if "writepath" in parts:
        p.do("write_path", "write path", lambda: writepath.write_path(
            ceiling.usage_rows(plan.writepath_snapshots, gpus=200), plan.repeats))
    if "latency" in parts:
        p.do("latency_1x", f"latency at 2,000 GPUs / 15 s for {plan.latency_s:.0f} s",
             lambda: latency.latency(2000, plan.latency_s))
        p.do("latency_10x", f"latency at 20,000 GPUs / 15 s for {plan.latency_10x_s:.0f} s",
             lambda: latency.latency(20000, plan.latency_10x_s))
        if plan.latency_10x_big_s > 0:
            p.do("latency_10x_batch30s", f"latency at 20,000 GPUs / 15 s, 30 s micro-batches, {plan.latency_10x_big_s:.0f} s",
                 lambda: latency.latency(20000, plan.latency_10x_big_s, batch_records=200_000, batch_ms=30_000))
    if "baseline" in parts:
        p.do("baseline", f"raw-sample baseline: {plan.baseline_gpus} GPUs x {plan.baseline_days} days",
             lambda: baseline_mod.baseline(plan.baseline_gpus, plan.baseline_days, max(plan.repeats, 3)))
    res["elapsed_s"] = time.perf_counter() - t_all
    res["machine"]["load_at_end"] = load_average()
    res["targets"] = targets(res)
    path.write_text(json.dumps(res, indent=1, default=str))
    return res


def _before_after(loaded: throughput.Loaded, revs: str, plan: Plan) -> dict[str, Any]:
    """The processor of each revision in ``revs`` (comma-separated), then the working tree."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="migmeter-before-") as tmp:
        trees: dict[str, Path | None] = {}
        for rev in (r.strip() for r in revs.split(",") if r.strip()):
            trees[rev] = throughput.export_revision(rev, Path(tmp) / rev)
        trees["working tree"] = None
        return {"trees": list(trees), **throughput.compare_trees(loaded, plan.default_batch, max(plan.repeats, 3),
                                                                 trees)}


def _get(d: dict[str, Any], *path: Any) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _best_throughput(res: dict[str, Any]) -> dict[str, Any] | None:
    curve = res.get("throughput") or {}
    good = [v for v in curve.values() if isinstance(v, dict) and v.get("instance_samples_per_s")]
    return max(good, key=lambda v: v["instance_samples_per_s"]) if good else None


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each issue target with the measured value and met / not met (None = not measured)."""
    out = []
    res = {k: v for k, v in res.items() if not (isinstance(v, dict) and "error" in v)}  # failed parts: not measured
    best = _best_throughput(res)
    rate = best["instance_samples_per_s"] if best else None
    out.append({"target": "processor >= 50,000 instance-samples/s (one process)", "value": rate,
                "met": None if rate is None else rate >= TARGET_RATE})
    ceil = _get(res, "consume_only", "records_per_s")
    avg = _get(res, "dataset", "avg_instances_per_snapshot")
    if best and ceil and avg:
        # Both rates without start-up: the processor's from its first commit, the consumer's from its first record.
        rate_steady = best.get("steady_instance_samples_per_s") or best["instance_samples_per_s"]
        share = rate_steady / avg / ceil
        out.append({"target": ">= 50% of the consume-only ceiling (steady rates)", "value": share,
                    "met": share >= TARGET_CEILING_SHARE})
    lat = res.get("latency_1x")
    if lat:
        bound = lat["batch_ms"] / 1000 + TARGET_LATENCY_SLACK_S
        out.append({"target": f"end-to-end p99 <= batch interval + 2 s = {bound:g} s at 133 snapshots/s",
                    "value": lat["p99_s"], "met": lat["p99_s"] <= bound})
    big = _get(res, "baseline", "fleet_1000", "chargeback_month_s_measured")
    if big is not None:
        out.append({"target": "monthly chargeback, 1,000 GPUs, pre-aggregated <= 1 s (default settings)",
                    "value": big, "met": big <= TARGET_CHARGEBACK_S})
        tuned = _get(res, "baseline", "fleet_1000", "chargeback_month_s_work_mem_64mb")
        if tuned is not None:
            out.append({"target": "monthly chargeback, 1,000 GPUs, pre-aggregated <= 1 s (work_mem 64MB)",
                        "value": tuned, "met": tuned <= TARGET_CHARGEBACK_S})
        ratio = _get(res, "baseline", "fleet_1000", "ratio_extrapolated")
        measured_ratio = _get(res, "baseline", "queries", "chargeback_month_s", "ratio")
        out.append({"target": "chargeback >= 10x faster than over raw samples",
                    "value": {"measured_small_fleet": measured_ratio, "extrapolated_1000_gpus": ratio},
                    "met": bool(measured_ratio and measured_ratio >= TARGET_CHARGEBACK_RATIO)})
    return out


def _f(v: Any, digits: int = 0, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and digits == 0:
        return f"{v:,.0f}{unit}"
    return f"{v:,.{digits}f}{unit}"


def render(res: dict[str, Any]) -> str:
    """The results as one Markdown table (figure | value | detail)."""
    rows: list[tuple[str, str, str]] = []
    failed = {k: v["error"] for k, v in res.items() if isinstance(v, dict) and "error" in v}
    for k, err in failed.items():
        rows.append((f"{k}: FAILED", "-", err[:200]))
    res = {k: v for k, v in res.items() if k not in failed}
    ds = res.get("dataset")
    if ds:
        rows.append(("dataset", f"{ds['snapshots']:,} snapshots / {ds['instance_samples']:,} instance-samples",
                     f"{ds['gpus']} H100 GPUs x 7 x 1g (avg {ds['avg_instances_per_snapshot']:.2f} instances/snapshot), "
                     f"{ds['partitions']} partitions"))
    for b, t in (res.get("throughput") or {}).items():
        if not t.get("instance_samples_per_s"):
            rows.append((f"processor, batch {b}", "FAILED", str(t)[:200]))
            continue
        rows.append((f"processor, batch {int(b):,} records",
                     f"{_f(t.get('instance_samples_per_s'))} inst-samples/s",
                     f"{_f(t.get('snapshots_per_s'))} snapshots/s; steady {_f(t.get('steady_instance_samples_per_s'))}/s; "
                     f"{_f(t.get('rows_merged_per_s'))} rows merged/s; CPU per 1M samples: processor "
                     f"{_f(t.get('cpu_s_per_1m_instance_samples'), 1)} s + its DB backend "
                     f"{_f(t.get('db_backend_cpu_s_per_1m_instance_samples'), 1)} s; peak RSS {_f(t.get('peak_rss_mib'))} MiB; "
                     f"wall {_f(t.get('wall_s'), 1)} s"))
    ba = res.get("before_after")
    if ba:
        for label in ba.get("trees", []):
            v = ba.get(label) or {}
            merged = (v.get("rows_merged") or 0) / (_get(res, "dataset", "instance_samples") or 1)
            rows.append((f"processor at {label}, batch {v.get('batch_records')}",
                         f"{_f(v.get('instance_samples_per_s'))} inst-samples/s",
                         f"steady {_f(v.get('steady_instance_samples_per_s'))}/s; "
                         f"{_f(v.get('cpu_s_per_1m_instance_samples'), 1)} CPU s per 1M samples + its DB backend "
                         f"{_f(v.get('db_backend_cpu_s_per_1m_instance_samples'), 1)} s; {merged:.3f} rows merged per "
                         f"sample; peak RSS {_f(v.get('peak_rss_mib'))} MiB"))
    co = res.get("consume_only")
    if co:
        avg = _get(res, "dataset", "avg_instances_per_snapshot") or 0
        rows.append(("ceiling: kafka-python consume-only", f"{_f(co['records_per_s'])} records/s",
                     f"= {_f(co['records_per_s'] * avg)} inst-samples/s, no decoding, same topic"))
        for mode in ceiling.CONSUME_MODES[1:]:
            cm = res.get(f"consume_{mode}")
            if cm:
                rows.append((f"kafka-python + {mode} of every value", f"{_f(cm['records_per_s'])} records/s",
                             f"= {_f(cm['records_per_s'] * avg)} inst-samples/s, same topic"))
    cc = res.get("copy_ceiling")
    if cc:
        rows.append(("ceiling: COPY into empty hypertable", f"{_f(cc['rows_per_s_formatted'])} rows/s",
                     f"{cc['table']}, psycopg write_row; {_f(cc['rows_per_s_pre_encoded'])} rows/s pre-encoded text"))
    wp = res.get("write_path")
    if wp:
        for m, v in wp["methods"].items():
            rows.append((f"write path: {m}", f"{_f(v['rows_per_s'])} rows/s",
                         "baseline" if m == "copy_merge" else f"COPY+merge is {v['copy_merge_speedup']:.1f}x faster"))
        rows.append(("write path: same table contents", str(wp["results_identical"]),
                     f"{wp['rows_per_pass']:,} rows x 2 passes (insert, then merge)"))
    for so in (res.get("scale_out"), res.get("scale_out_8")):
        for n, v in (so or {}).items():
            if v.get("instance_samples_per_s"):
                rows.append((f"scale-out: {n} processor(s), {v.get('partitions', 4)} partitions",
                             f"{_f(v['instance_samples_per_s'])} inst-samples/s",
                             f"steady {_f(v.get('steady_instance_samples_per_s'))}/s; CPU "
                             f"{_f(v['cpu_s_per_1m_instance_samples'], 1)} s per 1M samples (all processes) + DB "
                             f"backends {_f(v.get('db_backend_cpu_s_per_1m_instance_samples'), 1)} s; "
                             f"wall {_f(v.get('wall_s'), 1)} s"))
    for key, label in (("latency_1x", "latency @ 2,000 GPUs/15 s"), ("latency_10x", "latency @ 20,000 GPUs/15 s"),
                       ("latency_10x_batch30s", "latency @ 20,000 GPUs/15 s, 30 s batches")):
        lat = res.get(key)
        if lat:
            rows.append((label, f"p50 {_f(lat['p50_s'], 2)} / p95 {_f(lat['p95_s'], 2)} / p99 {_f(lat['p99_s'], 2)} s",
                         f"{_f(lat['achieved_snapshots_per_s'])} snapshots/s, {lat['samples']} samples, "
                         f"batch {lat['batch_records']} rec / {lat['batch_ms']} ms, mean batch write "
                         f"{_f(_get(lat, 'processor_batches', 'mean_write_seconds'), 2)} s; "
                         f"{lat.get('not_visible', 0)} sent but not visible by the end"))
    bl = res.get("baseline")
    if bl:
        ing, st, q, big = bl["ingest"], bl["storage"], bl["queries"], bl["fleet_1000"]
        rows.append(("baseline data", f"{bl['gpus']} GPUs x {bl['days']} days @ 15 s",
                     f"{bl['instance_samples']:,} instance-samples (= raw rows)"))
        rows.append(("ingest: raw rows (COPY)", f"{_f(ing['raw_instance_samples_per_s'])} inst-samples/s", ""))
        rows.append(("ingest: migmeter fold+sink", f"{_f(ing['migmeter_instance_samples_per_s'])} inst-samples/s",
                     "in-process, no Kafka/JSON"))
        rows.append(("storage: raw", f"{_f(st['raw_bytes_per_instance_day'])} B/instance-day", ""))
        rows.append(("storage: migmeter, all grains", f"{_f(st['migmeter_all_grains_bytes_per_instance_day'])} B/instance-day",
                     f"raw / this = {st['raw_vs_all_grains']:.2f}x (1m rows dominate; kept 30 days)"))
        rows.append(("storage: migmeter, 1h + 1d", f"{_f(st['migmeter_1h_1d_bytes_per_instance_day'])} B/instance-day",
                     f"raw / this = {st['raw_vs_1h_1d']:.1f}x (what is kept long-term)"))
        cb, tr = q["chargeback_month_s"], q["trend_year_hourly_s"]
        rows.append(("monthly chargeback: raw SQL", f"{_f(cb['raw'], 3)} s", f"{q['rows_read']['raw']:,} raw rows"))
        rows.append(("monthly chargeback: migmeter", f"{_f(cb['migmeter'], 4)} s",
                     f"{cb['ratio']:,.0f}x faster; lines agree within {q['chargeback_max_abs_diff_gpu_hours']:.1e} GPU-h"))
        rows.append(("1-year hourly trend: raw SQL", f"{_f(tr['raw'], 3)} s", ""))
        rows.append(("1-year hourly trend: migmeter", f"{_f(tr['migmeter'], 4)} s", f"{tr['ratio']:,.0f}x faster"))
        rows.append(("chargeback, 1,000 GPUs, 1 month, migmeter", f"{_f(big['chargeback_month_s_measured'], 3)} s",
                     f"measured on {big['synthesized_daily_rows']:,} synthesized daily rows; full report incl. "
                     f"reconciliation {_f(big['chargeback_full_report_s_measured'], 2)} s"))
        if big.get("chargeback_month_s_work_mem_64mb") is not None:
            rows.append(("chargeback, 1,000 GPUs, 1 month, migmeter, work_mem 64MB",
                         f"{_f(big['chargeback_month_s_work_mem_64mb'], 3)} s",
                         f"default work_mem {big.get('default_work_mem')} sorts the daily rows on disk"))
        rows.append(("chargeback, 1,000 GPUs, 1 month, raw (extrapolated)",
                     f"{_f(big['raw_chargeback_month_s_extrapolated'])} s",
                     f"{big['raw_rows_month']:,} rows at the measured scan rate; ratio ~{big['ratio_extrapolated']:,.0f}x"))
        rows.append(("1-year hourly trend, 1,000 GPUs (extrapolated)",
                     f"raw {_f(big['trend_year_raw_s_extrapolated'])} s / migmeter "
                     f"{_f(big['trend_year_migmeter_s_extrapolated'], 1)} s", "linear in rows read"))
    for t in res.get("targets", []):
        v = t["value"]
        shown = json.dumps(v, default=lambda x: round(x, 3)) if isinstance(v, dict) else (
            _f(v, 2) if isinstance(v, float) and v < 100 else _f(v))
        rows.append((f"TARGET {t['target']}", shown, {True: "met", False: "NOT met", None: "not measured"}[t["met"]]))
    w0 = max(len(r[0]) for r in rows) if rows else 10
    w1 = max(len(r[1]) for r in rows) if rows else 10
    lines = [f"| {'figure'.ljust(w0)} | {'value'.ljust(w1)} | detail |", f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|---|"]
    lines += [f"| {a.ljust(w0)} | {b.ljust(w1)} | {c} |" for a, b, c in rows]
    m = res.get("machine", {})
    lines.append("")
    lines.append(f"{m.get('cpus')} CPUs, Python {m.get('python')}; load average at start {m.get('load_at_start')}, "
                 f"at end {m.get('load_at_end')}; elapsed {_f(res.get('elapsed_s'))} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller data and single runs (a smoke test)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts (default all: {','.join(PARTS)})")
    parser.add_argument("--compare-rev", metavar="REV",
                        help="also run the processor of git revision(s) REV[,REV...] against the working tree "
                             "(before/after), at the default batch size, interleaved")
    parser.add_argument("--snapshots", type=int, metavar="N",
                        help="pre-load N snapshots for the throughput, ceiling and scale-out parts instead of the "
                             "plan's (60,000 full, 8,000 quick)")
    parser.add_argument("--render", metavar="JSON", help="print the table of an earlier results file and exit")
    args = parser.parse_args(argv)
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return 0
    parts = tuple(p.strip() for p in args.only.split(",") if p.strip())
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    path = RESULTS_DIR / f"{time.strftime('%Y%m%dT%H%M%S')}{'-quick' if args.quick else ''}.json"
    plan = PLANS["quick" if args.quick else "full"]
    if args.snapshots:
        if args.snapshots < 1:
            parser.error("--snapshots must be at least 1")
        plan = dataclasses.replace(plan, snapshots=args.snapshots)
    res = run(plan, parts, path, args.compare_rev)
    res["mode"] = "quick" if args.quick else "full"
    path.write_text(json.dumps(res, indent=1, default=str))
    print(render(res))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
