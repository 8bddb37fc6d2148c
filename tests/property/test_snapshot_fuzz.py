"""Property-based: whatever bytes arrive, the decoder returns a valid Snapshot or raises BadSnapshot.

Nothing else may escape (the processor's loop only catches BadSnapshot), and anything it
accepts must re-encode to an equal object.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.snapshot import MAX_INSTANCES, from_json
from migmeter.errors import BadSnapshot

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)

ratio = st.one_of(st.none(), st.floats(min_value=-2, max_value=2), st.sampled_from([float("nan"), float("inf")]))
instance = st.fixed_dictionaries(
    {
        "gi_id": st.one_of(st.integers(-3, 20), st.text(max_size=3)),
        "profile": st.sampled_from(["1g.10gb", "3g.40gb", "<<<NULL>>>", "", "bogus", "7g.80gb"]),
        "slices": st.integers(-1, 9),
        "metrics": st.fixed_dictionaries({"gr_engine_active": ratio, "sm_active": ratio, "fb_used_mib": ratio}),
        "tenant": st.fixed_dictionaries({"namespace": st.text(max_size=5), "pod": st.text(max_size=5)}),
    }
)
snapshot_like = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 1, 1, 2, 0, "1"]),
        "ts": st.sampled_from(["2026-11-03T12:00:00.000Z", "2026-11-03T12:00:00", "yesterday", "2026-13-01T00:00:00Z"]),
        "interval_s": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 100_000)),
        "source": st.just("fuzz"),
        "cluster": st.just("c"),
        "host": st.text(max_size=10),
        "gpu_uuid": st.text(max_size=12),
        "gpu_index": st.one_of(st.integers(0, 8), st.booleans()),
        "gpu_model": st.sampled_from(["NVIDIA A30", "NVIDIA H100"]),
        "mig_enabled": st.booleans(),
        "total_slices": st.integers(0, 9),
        "instances": st.lists(instance, max_size=9),
    }
)


def _decode(data: bytes) -> None:
    try:
        snap = from_json(data)
    except BadSnapshot as exc:
        assert exc.reason
        return
    assert from_json(snap.to_json()) == snap
    assert len(snap.instances) <= MAX_INSTANCES
    assert sum(i.slices for i in snap.instances) <= snap.total_slices


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(data: bytes) -> None:
    _decode(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json(value: Any) -> None:
    _decode(json.dumps(value, allow_nan=True).encode())


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(snapshot_like)
def test_snapshot_shaped_garbage(value: dict[str, Any]) -> None:
    _decode(json.dumps(value, allow_nan=True).encode())


@settings(max_examples=100)
@given(snapshot_like, st.integers(min_value=0, max_value=400))
def test_truncated_messages(value: dict[str, Any], cut: int) -> None:
    _decode(json.dumps(value, allow_nan=True).encode()[:cut])


def test_ten_thousand_instances_is_refused_not_parsed_forever() -> None:
    value = {
        "v": 1,
        "instances": [{"gi_id": i, "profile": "1g.10gb", "slices": 1} for i in range(10_000)],
    }
    data = json.dumps(value).encode()
    try:
        from_json(data)
    except BadSnapshot as exc:
        assert "limit" in exc.reason
    else:
        raise AssertionError("a 10,000-instance snapshot was accepted")
