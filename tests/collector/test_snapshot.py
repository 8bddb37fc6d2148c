"""The wire contract: round trip, strictness where chargeback depends on it, leniency elsewhere."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from collector.snapshot import (
    FULL_GPU_GI_ID,
    MAX_INSTANCES,
    MAX_MESSAGE_BYTES,
    Instance,
    Metrics,
    Snapshot,
    Tenant,
    from_json,
)
from migmeter.errors import BadSnapshot

TS = datetime(2026, 11, 3, 12, 0, 15, 250000, tzinfo=timezone.utc)


def make(**overrides: object) -> Snapshot:
    fields: dict[str, object] = dict(
        ts=TS,
        interval_s=15.0,
        source="test",
        cluster="c1",
        host="node-1",
        gpu_uuid="GPU-aaaa",
        gpu_index=0,
        gpu_model="NVIDIA A100-SXM4-40GB",
        mig_enabled=True,
        total_slices=7,
        instances=(
            Instance(1, "3g.20gb", 3, Metrics(gr_engine_active=0.95, fb_used_mib=100.0), Tenant("ml", "train-0", "c")),
            Instance(2, "1g.5gb+me", 1, Metrics(gr_engine_active=0.1)),
        ),
    )
    fields.update(overrides)
    return Snapshot(**fields)  # type: ignore[arg-type]


def as_dict(s: Snapshot) -> dict[str, object]:
    return json.loads(s.to_json())  # type: ignore[no-any-return]


def test_round_trip_is_identity() -> None:
    s = make()
    assert from_json(s.to_json()) == s


def test_round_trip_non_mig_pseudo_instance() -> None:
    s = make(mig_enabled=False, instances=(Instance(FULL_GPU_GI_ID, "", 7, Metrics(gr_engine_active=0.5)),))
    assert from_json(s.to_json()) == s


def test_ts_on_the_wire_is_utc_milliseconds_with_z() -> None:
    assert as_dict(make())["ts"] == "2026-11-03T12:00:15.250Z"


def test_unknown_fields_are_ignored() -> None:
    d = as_dict(make())
    d["future_field"] = {"x": 1}
    d["instances"][0]["another"] = 3  # type: ignore[index]
    assert from_json(json.dumps(d)) == make()


@pytest.mark.parametrize("v", [0, 2, "1", None])
def test_other_versions_are_rejected_with_clear_reason(v: object) -> None:
    d = as_dict(make())
    d["v"] = v
    with pytest.raises(BadSnapshot, match="wire version"):
        from_json(json.dumps(d))


@pytest.mark.parametrize("value", [-0.01, 1.01, 7.0])
def test_out_of_range_ratio_is_rejected(value: float) -> None:
    d = as_dict(make())
    d["instances"][1]["metrics"]["sm_active"] = value  # type: ignore[index]
    with pytest.raises(BadSnapshot, match="sm_active"):
        from_json(json.dumps(d))


@pytest.mark.parametrize("field", ["ts", "gpu_uuid", "instances", "total_slices", "interval_s", "mig_enabled"])
def test_missing_field_is_rejected(field: str) -> None:
    d = as_dict(make())
    del d[field]
    with pytest.raises(BadSnapshot):
        from_json(json.dumps(d))


def test_not_json() -> None:
    with pytest.raises(BadSnapshot, match="not JSON"):
        from_json(b"\xff\x00garbage")


def test_json_but_not_an_object() -> None:
    with pytest.raises(BadSnapshot, match="not a JSON object"):
        from_json(b"[1, 2]")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_rejected(token: str) -> None:
    text = make().to_json().decode().replace('"gr_engine_active":0.1', f'"gr_engine_active":{token}')
    with pytest.raises(BadSnapshot, match="non-finite"):
        from_json(text)


def test_naive_timestamp_is_rejected() -> None:
    d = as_dict(make())
    d["ts"] = "2026-11-03T12:00:15"
    with pytest.raises(BadSnapshot, match="timezone"):
        from_json(json.dumps(d))


def test_slices_over_total_are_rejected() -> None:
    s = make(instances=(Instance(1, "4g.40gb", 4), Instance(2, "4g.40gb", 4)))
    with pytest.raises(BadSnapshot, match="more than the GPU"):
        from_json(s.to_json())


def test_duplicate_gi_ids_are_rejected() -> None:
    s = make(instances=(Instance(1, "1g.5gb", 1), Instance(1, "1g.5gb", 1)))
    with pytest.raises(BadSnapshot, match="duplicate gi_id"):
        from_json(s.to_json())


def test_non_mig_gpu_needs_exactly_one_full_instance() -> None:
    s = make(mig_enabled=False)
    with pytest.raises(BadSnapshot, match="pseudo-instance"):
        from_json(s.to_json())


def test_mig_gpu_with_no_instances_is_valid() -> None:
    s = make(instances=())
    assert from_json(s.to_json()).instances == ()


def test_bool_is_not_an_int() -> None:
    d = as_dict(make())
    d["gpu_index"] = True
    with pytest.raises(BadSnapshot, match="gpu_index"):
        from_json(json.dumps(d))


def test_oversize_message_is_rejected_before_parsing() -> None:
    with pytest.raises(BadSnapshot, match="limit"):
        from_json(b" " * (MAX_MESSAGE_BYTES + 1))


def test_too_many_instances_rejected() -> None:
    d = as_dict(make())
    d["instances"] = [{"gi_id": i, "profile": "1g.5gb", "slices": 1} for i in range(MAX_INSTANCES + 1)]
    with pytest.raises(BadSnapshot, match="over the limit"):
        from_json(json.dumps(d))


def test_deeply_nested_json_is_a_bad_snapshot_not_a_crash() -> None:
    with pytest.raises(BadSnapshot):
        from_json(b"[" * 50_000 + b"]" * 50_000)


def test_validate_checks_objects_built_in_code() -> None:
    with pytest.raises(BadSnapshot, match="interval_s"):
        make(interval_s=0).validate()


def test_key_is_gpu_uuid() -> None:
    assert make().key == b"GPU-aaaa"
