"""Property-based: whatever text a dcgm-exporter endpoint returns, ``parse_scrape`` returns.

The collector's loop survives a source exception, but a parser that raises on one garbage
scrape would lose every GPU of that endpoint for the round; a parser that emits an invalid
snapshot would have it dead-lettered downstream. So for arbitrary, truncated, huge and
hostile scrapes: no exception escapes, every snapshot validates and survives the wire, and
what was dropped is counted. No timing assertions: a case that returned is a case that ended.
"""

from __future__ import annotations

import math
import tracemalloc
from datetime import datetime, timezone

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from collector.snapshot import from_json
from collector.sources.base import ReadStats
from collector.sources.dcgm import METRIC_FIELDS, parse_scrape

TS = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
_FIELDS = sorted(METRIC_FIELDS) + ["DCGM_FI_DEV_MIG_MODE", "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_GPU_UTIL"]
_PROFILES = ["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", "1g.18gb+me", "7g.79gb",
             "<<<NULL>>>", "", "bogus", "9g.90gb", "0g.1gb", "-1g.5gb", "1g", "g.10gb", "99999999999g.1gb"]
_MODELS = ["NVIDIA H100 80GB HBM3", "NVIDIA A30", "NVIDIA A100-SXM4-40GB", "", "ERROR - FAILED TO CONVERT TO STRING"]
_RATIO_METRICS = [name for name, attr in METRIC_FIELDS.items() if not attr.endswith("_mib")]
_VALUES = ["0", "0.5", "1", "1.0049", "1.5", "-0.2", "-0.001", "NaN", "+Inf", "-Inf", "1e308", "9.22e18",
           "ERROR - FAILED TO CONVERT TO STRING", "", "0x10", "1_0", "٣"]


def parse(text: str, *, peak_bytes: list[int] | None = None) -> tuple[list, ReadStats]:
    """parse_scrape plus the contract every caller relies on. With ``peak_bytes``, the peak of
    Python memory allocated by ``parse_scrape`` itself is appended to it (tracemalloc)."""
    stats = ReadStats()
    if peak_bytes is not None:
        tracemalloc.start()
    try:
        snaps = parse_scrape(text, cluster="fuzz", ts=TS, interval_s=15.0, stats=stats)
        if peak_bytes is not None:
            peak_bytes.append(tracemalloc.get_traced_memory()[1])
    finally:
        if peak_bytes is not None:
            tracemalloc.stop()
    for snap in snaps:
        snap.validate()
        assert from_json(snap.to_json()) == snap
        for inst in snap.instances:
            for name in ("gr_engine_active", "sm_active", "tensor_active", "dram_active"):
                value = getattr(inst.metrics, name)
                assert value is None or (math.isfinite(value) and 0.0 <= value <= 1.0)
    assert all(n > 0 for n in stats.skipped.values())
    return snaps, stats


def _label_value() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["0", "1", "GPU-a", "GPU-b", "", "x" * 300, 'q"uote', "back\\slash", "nl\\n"]),
        st.text(alphabet=st.characters(blacklist_characters='"\\\n', blacklist_categories=("Cs",)), max_size=12),
    )


@st.composite
def _row(draw: st.DrawFn) -> str:
    """One sample line in dcgm-exporter style, with each part possibly hostile."""
    metric = draw(st.sampled_from(_FIELDS))
    labels = {
        "gpu": draw(st.sampled_from(["0", "1", "7", "-1", "x", ""])),
        "UUID": draw(st.sampled_from(["GPU-a", "GPU-b", "GPU-c", "", "x" * 300])),
        "modelName": draw(st.sampled_from(_MODELS)),
        "Hostname": draw(_label_value()),
    }
    if draw(st.booleans()):
        labels["GPU_I_ID"] = draw(st.sampled_from(["0", "1", "2", "3", "7", "13", "-1", "x", "", "99999999999999999999"]))
        labels["GPU_I_PROFILE"] = draw(st.sampled_from(_PROFILES))
    if draw(st.booleans()):
        labels[draw(st.sampled_from(["pod", "pod_name", "exported_pod"]))] = draw(_label_value())
        labels[draw(st.sampled_from(["namespace", "pod_namespace", "exported_namespace"]))] = draw(_label_value())
    body = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{metric}{{{body}}} {draw(st.sampled_from(_VALUES))}"


scrapes = st.lists(_row(), max_size=40).map(lambda rows: "\n".join(rows) + "\n")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=3000))
def test_arbitrary_text(text: str) -> None:
    parse(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_decoded_as_the_source_does(data: bytes) -> None:
    parse(data.decode("utf-8", errors="replace"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scrapes)
def test_exporter_shaped_garbage(text: str) -> None:
    snaps, _ = parse(text)
    # One snapshot per GPU UUID, never two for the same GPU.
    assert len({s.gpu_uuid for s in snaps}) == len(snaps)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scrapes, st.integers(min_value=0, max_value=4000))
def test_truncated_scrapes(text: str, cut: int) -> None:
    assume(cut < len(text))
    parse(text[:cut])


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(_RATIO_METRICS), st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(_VALUES)))
def test_ratio_values_nan_inf_negative_and_over_one(metric: str, value: float | str) -> None:
    text = (f'{metric}{{gpu="0",UUID="GPU-a",modelName="NVIDIA H100 80GB HBM3",GPU_I_PROFILE="1g.10gb",'
            f'GPU_I_ID="7",Hostname="h"}} {value}\n')
    snaps, stats = parse(text)
    if isinstance(value, float) and (not math.isfinite(value) or not -0.01 <= value <= 1.01):
        # Garbage values are skipped and counted, never clamped into a plausible ratio.
        assert stats.skipped.get("bad_value", 0) >= 1
        assert all(getattr(i.metrics, METRIC_FIELDS[metric]) is None for s in snaps for i in s.instances)


def test_unknown_profiles_are_counted_not_guessed() -> None:
    rows = [f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="0",UUID="GPU-a",modelName="NVIDIA H100 80GB HBM3",'
            f'GPU_I_PROFILE="{p}",GPU_I_ID="{i}",Hostname="h"}} 0.5' for i, p in enumerate(["bogus", "<<<NULL>>>", "1g.10gb"])]
    snaps, stats = parse("\n".join(rows) + "\n")
    assert [(i.gi_id, i.slices) for i in snaps[0].instances] == [(2, 1)]
    assert stats.skipped["unknown_profile"] == 2


def test_duplicate_instances_keep_one_row_and_count_the_rest() -> None:
    row = ('DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="0",UUID="GPU-a",modelName="NVIDIA H100 80GB HBM3",'
           'GPU_I_PROFILE="1g.10gb",GPU_I_ID="3",Hostname="h"} ')
    snaps, stats = parse("".join(f"{row}{v}\n" for v in ("0.25", "0.75", "0.5")))
    assert len(snaps) == 1 and len(snaps[0].instances) == 1
    assert snaps[0].instances[0].metrics.gr_engine_active == 0.25
    assert stats.skipped["duplicate_sample"] == 2


def test_ten_thousand_instances_in_one_scrape() -> None:
    """10,000 GI rows on one GPU: an impossible layout, dropped and counted, memory bounded."""
    rows = [f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="0",UUID="GPU-a",modelName="NVIDIA H100 80GB HBM3",'
            f'GPU_I_PROFILE="1g.10gb",GPU_I_ID="{i}",Hostname="h"}} 0.5' for i in range(10_000)]
    # and 10,000 GPUs with one instance each: a huge but legal fleet scrape
    rows += [f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="0",UUID="GPU-{i:05d}",modelName="NVIDIA H100 80GB HBM3",'
             f'GPU_I_PROFILE="1g.10gb",GPU_I_ID="0",Hostname="h"}} 0.5' for i in range(10_000)]
    text = "\n".join(rows) + "\n"
    peak: list[int] = []
    snaps, stats = parse(text, peak_bytes=peak)
    assert stats.skipped["slices_exceed_total"] == 1
    assert "GPU-a" not in {s.gpu_uuid for s in snaps}
    assert len(snaps) == 10_000
    # The parser's own peak of Python memory (tracemalloc starts from zero here; the process's
    # ru_maxrss never falls, so an earlier test's peak would hide any growth). Measured: 55 MiB
    # for this 2.7 MB scrape, about 20 times its size; a parser holding copies per row goes far beyond.
    assert 0 < peak[0] < 256 * 2**20, f"parsing a 2.7 MB scrape peaked at {peak[0] / 2**20:.0f} MiB"


def test_huge_garbage_body_stops_early() -> None:
    """An 8 MB HTML page: no GPU, counted as not an exposition, parsing gives up early."""
    text = "<html><body>" + "<p>login required</p>\n" * 400_000 + "</body></html>\n"
    snaps, stats = parse(text)
    assert snaps == []
    assert stats.skipped.get("not_exposition") == 1
    assert stats.skipped.get("bad_line", 0) <= 60


def test_one_huge_line() -> None:
    text = 'DCGM_FI_PROF_GR_ENGINE_ACTIVE{UUID="' + "A" * 5_000_000 + '",GPU_I_ID="0"} 0.5\n'
    snaps, stats = parse(text)
    assert snaps == []
    assert sum(stats.skipped.values()) >= 1


def test_line_without_a_metric_name() -> None:
    """Found by test_arbitrary_text: a bad line starting with '{' raised IndexError out of the parser."""
    for text in ("{\n", " {x}\n", "{a=\"b\"} 1\n", "GOOD 1\n{\n"):
        snaps, stats = parse(text)
        assert snaps == []
        assert stats.skipped.get("bad_line", 0) >= 1
