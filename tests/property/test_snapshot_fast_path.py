"""Property-based: the decoder's fast path for instances agrees with the checked path.

The fast decoder (msgspec into :class:`collector.snapshot.Instance`, whose field constraints
stand for the per-instance checks) exists only for speed; the checked path is the authority.
For any instance-shaped JSON the fast path must either decline (a msgspec error) or return
exactly what the checked path returns, and it may only accept what the checked path accepts.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.snapshot import Instance, _instance_checked
from migmeter.errors import BadSnapshot

_DECODER = msgspec.json.Decoder(Instance)


def _instance_fast(raw: dict[str, Any]) -> Instance | None:
    """The fast decoder on one instance's JSON: the Instance, or None where it declines."""
    try:
        return _DECODER.decode(json.dumps(raw).encode())
    except msgspec.MsgspecError:
        return None

number = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
)
name = st.one_of(st.none(), st.text(max_size=5), st.text(min_size=257, max_size=260), st.integers(0, 3),
                 st.booleans())
optional_dict = st.one_of(st.none(), st.just({}), st.lists(st.integers(), max_size=2), st.text(max_size=2))
instance_like = st.fixed_dictionaries(
    {},
    optional={
        "gi_id": st.one_of(st.integers(-3, 20), st.booleans(), st.text(max_size=2), st.floats(0, 3), st.none()),
        "profile": st.one_of(st.sampled_from(["1g.10gb", "7g.80gb", "<<<NULL>>>", ""]), st.none(), st.integers(0, 2),
                             st.text(min_size=257, max_size=258)),
        "slices": st.one_of(st.integers(-1, 9), st.booleans(), st.floats(0, 9), st.none()),
        "metrics": st.one_of(optional_dict, st.fixed_dictionaries({}, optional={
            k: number for k in ("gr_engine_active", "sm_active", "tensor_active", "dram_active", "fb_used_mib",
                                "fb_free_mib")})),
        "tenant": st.one_of(optional_dict, st.fixed_dictionaries({}, optional={
            k: name for k in ("namespace", "pod", "container")})),
        "sm_count": st.one_of(st.none(), st.integers(0, 200), st.booleans(), st.floats(0, 3), st.text(max_size=2)),
        "mem_total_mib": number,
        "placement_start": st.one_of(st.none(), st.integers(0, 7), st.booleans(), st.text(max_size=2)),
    },
)


def _checked(raw: Any) -> Any:
    try:
        return _instance_checked(raw)
    except BadSnapshot as exc:
        return exc


@settings(max_examples=3000, deadline=None)
@given(instance_like)
def test_fast_path_declines_or_agrees_with_checked_path(raw: dict[str, Any]) -> None:
    fast = _instance_fast(raw)
    if fast is None:
        return
    checked = _checked(raw)
    assert not isinstance(checked, BadSnapshot), f"fast path accepted what the checked path rejects: {checked}"
    assert fast == checked


def test_fast_path_takes_a_well_formed_instance() -> None:
    raw = {"gi_id": 7, "profile": "1g.10gb", "slices": 1, "sm_count": 16, "mem_total_mib": 9932.0,
           "placement_start": 0, "metrics": {"gr_engine_active": 0.5, "fb_used_mib": 100},
           "tenant": {"namespace": "ns", "pod": "p", "container": "c"}}
    fast = _instance_fast(raw)
    assert fast is not None and fast == _instance_checked(raw)


def test_fast_path_declines_bool_nan_and_long_names() -> None:
    base = {"gi_id": 7, "profile": "1g.10gb", "slices": 1}
    assert _instance_fast({**base, "gi_id": True}) is None
    assert _instance_fast({**base, "metrics": {"gr_engine_active": float("nan")}}) is None
    assert _instance_fast({**base, "tenant": {"pod": "x" * 257}}) is None
