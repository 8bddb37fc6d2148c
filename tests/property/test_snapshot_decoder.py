"""Property-based: the processor's decoder agrees with the fully checked reference decoder.

``collector.snapshot.from_json`` decodes with msgspec into typed structs whose constraints
stand for the per-instance value checks (skipped then), and otherwise parses with msgspec
(falling back to the standard library's json for what msgspec refuses, so every reason stays
the checked path's). Both exist only for speed: for any snapshot-shaped message the result
(a Snapshot, or a BadSnapshot and its reason) must be exactly what json + the checked path +
every check give.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from collector.snapshot import (
    Snapshot,
    _check_snapshot,
    _instance_checked,
    _int,
    _number,
    _reject_constant,
    _req,
    from_json,
    parse_ts,
)
from migmeter.errors import BadSnapshot

# Integers up to 64 bits (wider ones are not JSON that any source produces; the decoder
# refuses them as integer fields either way).
# Mostly well-formed (so most examples reach the instance checks), the rest anything.
_EDGES = st.sampled_from([0, 1, 2, -1, 0.0, 1.0, -0.0, 1.0000001, 1.5, -1e-9, 80000.0, 2**31, 2**63 - 1])
number = st.one_of(
    st.floats(0, 1), _EDGES, _EDGES,
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=2),
)
name = st.one_of(st.none(), st.sampled_from(["", "ns", "pod-1", "a\x00b", "\ud800", "é"]), st.integers(0, 2),
                 st.text(min_size=257, max_size=258))
tenant = st.fixed_dictionaries({}, optional={k: name for k in ("namespace", "pod", "container")})
instance = st.fixed_dictionaries(
    {
        "gi_id": st.one_of(st.integers(-1, 9), st.integers(-1, 9), st.integers(-1, 9),
                           st.sampled_from([2**31, -(2**31) - 1, True, "1"])),
        "profile": st.sampled_from(["1g.10gb"] * 8 + ["", None, 1]),
        "slices": st.one_of(st.integers(1, 2), st.integers(1, 2), st.integers(0, 8), st.booleans(), st.floats(0, 8)),
    },
    optional={
        "metrics": st.one_of(st.none(), st.lists(st.integers(), max_size=1), st.fixed_dictionaries({}, optional={
            k: number for k in ("gr_engine_active", "sm_active", "tensor_active", "dram_active", "fb_used_mib",
                                "fb_free_mib")})),
        "tenant": st.one_of(st.none(), tenant),
        "tenants": st.lists(st.fixed_dictionaries({"share": number}, optional={"namespace": name, "pod": name}),
                            max_size=3),
        "sm_count": st.one_of(st.none(), st.integers(0, 200), st.sampled_from([2**31, True, 1.5])),
        "mem_total_mib": number,
        "placement_start": st.one_of(st.none(), st.integers(0, 7), st.sampled_from([-(2**31) - 1, "0"])),
    },
)
message = st.fixed_dictionaries({
    "v": st.sampled_from([1] * 9 + [2]),
    "ts": st.sampled_from(["2025-01-06T00:00:15.000Z"] * 8 + ["2025-01-06T00:00:15", "x"]),
    "interval_s": st.sampled_from([15.0] * 6 + [15, 0, 1e9]),
    "source": st.just("test"), "cluster": st.just("c"), "host": st.sampled_from(["h"] * 6 + ["h\x00"]),
    "gpu_uuid": st.sampled_from(["GPU-a"] * 6 + [""]), "gpu_index": st.sampled_from([0] * 6 + [2**40]),
    "gpu_model": st.just("H100"), "mig_enabled": st.sampled_from([True] * 6 + [False]), "total_slices": st.sampled_from([7] * 6 + [4, 9]),
    "instances": st.lists(instance, max_size=4),
})

# Well-formed headers, ids and types, so every example reaches the per-instance value checks
# (the range edges decide).
in_type = st.one_of(st.floats(0, 1), _EDGES, st.none())
valid_instance = st.fixed_dictionaries(
    {"gi_id": st.integers(0, 13), "profile": st.just("1g.10gb"), "slices": st.just(1),
     "metrics": st.fixed_dictionaries({}, optional={
         k: in_type for k in ("gr_engine_active", "sm_active", "tensor_active", "dram_active", "fb_used_mib",
                              "fb_free_mib")}),
     "tenant": st.fixed_dictionaries({}, optional={k: st.sampled_from(["", "ns", "p"])
                                                   for k in ("namespace", "pod", "container")})},
    optional={"mem_total_mib": in_type, "sm_count": st.sampled_from([16, None, 2**31]),
              "placement_start": st.sampled_from([0, None, -(2**31) - 1])},
)
valid_message = st.fixed_dictionaries({
    "v": st.just(1), "ts": st.just("2025-01-06T00:00:15.000Z"), "interval_s": st.just(15.0),
    "source": st.just("test"), "cluster": st.just("c"), "host": st.just("h"), "gpu_uuid": st.just("GPU-a"),
    "gpu_index": st.just(0), "gpu_model": st.just("H100"), "mig_enabled": st.just(True),
    "total_slices": st.just(7), "instances": st.lists(valid_instance, max_size=7, unique_by=lambda i: i["gi_id"]),
})


def _reference(data: bytes) -> Snapshot | str:
    """json + the checked path for every instance + every check: what the decoder must equal."""
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
        assert isinstance(obj, dict)
        if obj.get("v") != 1:
            raise BadSnapshot(f"unsupported wire version v={obj.get('v')!r} (this processor reads v=1)")
        raw = _req(obj, "instances", list)
        snap = Snapshot(ts=parse_ts(obj.get("ts")), interval_s=_number(obj, "interval_s"),
                        source=_req(obj, "source", str), cluster=_req(obj, "cluster", str),
                        host=_req(obj, "host", str), gpu_uuid=_req(obj, "gpu_uuid", str),
                        gpu_index=_int(obj, "gpu_index"), gpu_model=_req(obj, "gpu_model", str),
                        mig_enabled=_req(obj, "mig_enabled", bool), total_slices=_int(obj, "total_slices"),
                        instances=tuple(_instance_checked(i) for i in raw))
        _check_snapshot(snap)
        return snap
    except BadSnapshot as exc:
        return str(exc)


def _decoded(data: bytes) -> Snapshot | str:
    try:
        return from_json(data)
    except BadSnapshot as exc:
        return str(exc)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(message, valid_message))
def test_decoder_equals_the_checked_reference(msg: dict[str, Any]) -> None:
    data = json.dumps(msg).encode()  # NaN/Infinity and lone surrogates go through json's fallback
    assert _decoded(data) == _reference(data)


def test_text_checks_hold_whether_or_not_the_message_is_plain_ascii() -> None:
    # The fast path skips the text checks only for ASCII bytes without a backslash-u escape;
    # everything else (raw UTF-8, escapes) is checked field by field, as the reference does.
    def message(pod: str, ensure_ascii: bool) -> bytes:
        msg = {"v": 1, "ts": "2025-01-06T00:00:15.000Z", "interval_s": 15.0, "source": "s", "cluster": "c",
               "host": "h", "gpu_uuid": "GPU-a", "gpu_index": 0, "gpu_model": "H100", "mig_enabled": True,
               "total_slices": 7, "instances": [{"gi_id": 1, "profile": "1g", "slices": 1,
                                                 "tenant": {"namespace": "ns", "pod": pod}}]}
        return json.dumps(msg, ensure_ascii=ensure_ascii).encode()

    nul = "field 'pod' contains a NUL character, which the warehouse cannot store"
    assert _decoded(message("a\x00b", True)) == _decoded(message("a\x00b", False)) == nul
    # 200 euro signs: 200 characters (under msgspec's bound of 256) but 600 bytes of UTF-8.
    long_utf8 = "\u20ac" * 200
    for ensure_ascii in (True, False):
        assert _decoded(message(long_utf8, ensure_ascii)) == (
            "field 'pod' is over 256 characters or 512 bytes of UTF-8 (200 characters, 600 bytes)")
        assert _decoded(message(long_utf8, ensure_ascii)) == _reference(message(long_utf8, ensure_ascii))
        ok = _decoded(message("tr\u00e4ining-\u20ac", ensure_ascii))
        assert isinstance(ok, Snapshot) and ok.instances[0].tenant.pod == "tr\u00e4ining-\u20ac"
    escaped = message("plain", True).replace(b'"plain"', b'"pl\\u0061in"')
    ok = _decoded(escaped)
    assert isinstance(ok, Snapshot) and ok.instances[0].tenant.pod == "plain"


def test_fallback_keeps_the_reasons_msgspec_cannot_give() -> None:
    # msgspec refuses these outright; the reasons are json's / the checks' as before.
    good = {"v": 1, "ts": "2025-01-06T00:00:15.000Z", "interval_s": 15.0, "source": "s", "cluster": "c",
            "host": "h", "gpu_uuid": "GPU-a", "gpu_index": 0, "gpu_model": "H100", "mig_enabled": True,
            "total_slices": 7, "instances": [{"gi_id": 1, "profile": "1g", "slices": 1,
                                              "metrics": {"gr_engine_active": 0.5}}]}
    nan = json.dumps(good).replace("0.5", "NaN").encode()
    assert _decoded(nan) == "non-finite number NaN in message"
    surrogate = json.dumps(good).replace('"h"', '"\\ud800"').encode()
    assert _decoded(surrogate) == "field 'host' contains a lone surrogate (not encodable as UTF-8)"
    assert _decoded(b"\xff").startswith("not JSON: ")
    decoded = _decoded(json.dumps(good).encode())
    assert isinstance(decoded, Snapshot) and decoded.instances[0].metrics.gr_engine_active == 0.5
