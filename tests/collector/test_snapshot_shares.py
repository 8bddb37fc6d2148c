"""The wire contract's sharing extension: an optional ``tenants`` list with shares per instance.

v1 readers must keep working: the message stays ``v: 1``, ``tenant`` is the first pod of the
list, and a reader that ignores ``tenants`` decodes the same instance with that pod.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from collector.snapshot import (
    FULL_GPU_GI_ID,
    Instance,
    Metrics,
    Snapshot,
    Tenant,
    TenantShare,
    from_dict,
    from_json,
)
from migmeter.errors import BadSnapshot

TS = datetime(2026, 11, 3, 12, 0, 15, 250000, tzinfo=timezone.utc)
A = Tenant("team-a", "bert-0", "trainer")
B = Tenant("team-a", "nb-1", "jupyter")
C = Tenant("team-b", "etl-3", "worker")


def shared(*tenants: TenantShare, tenant: Tenant | None = None, mig: bool = True) -> Snapshot:
    first = tenants[0].tenant if tenants else Tenant()
    gi, profile, slices = (1, "3g.40gb", 3) if mig else (FULL_GPU_GI_ID, "", 7)
    inst = Instance(gi, profile, slices, Metrics(gr_engine_active=0.6), tenant if tenant is not None else first,
                    tenants=tenants)
    return Snapshot(ts=TS, interval_s=15.0, source="test", cluster="c1", host="node-1", gpu_uuid="GPU-aaaa",
                    gpu_index=0, gpu_model="NVIDIA A100-SXM4-40GB", mig_enabled=mig, total_slices=7,
                    instances=(inst,))


def test_shared_instance_round_trips() -> None:
    s = shared(TenantShare(A, 0.5), TenantShare(C, 0.5)).validate()
    assert from_json(s.to_json()) == s


def test_three_equal_shares_and_a_whole_gpu_round_trip() -> None:
    s = shared(*(TenantShare(t, 1 / 3) for t in (A, B, C)), mig=False).validate()
    assert from_json(s.to_json()) == s


def test_unshared_instance_has_no_tenants_field() -> None:
    s = shared()
    (inst,) = json.loads(s.to_json())["instances"]
    assert "tenants" not in inst  # the v1 message is byte-for-byte what it was


def test_a_v1_reader_sees_the_first_pod_as_tenant() -> None:
    s = shared(TenantShare(A, 0.5), TenantShare(C, 0.5))
    msg = json.loads(s.to_json())
    assert msg["v"] == 1
    (inst,) = msg["instances"]
    assert inst["tenant"] == {"namespace": "team-a", "pod": "bert-0", "container": "trainer"}
    assert inst["tenants"] == [
        {"namespace": "team-a", "pod": "bert-0", "container": "trainer", "share": 0.5},
        {"namespace": "team-b", "pod": "etl-3", "container": "worker", "share": 0.5},
    ]
    # A reader that does not know the field (drops it) decodes a valid instance of pod bert-0.
    del inst["tenants"]
    old = from_dict(msg)
    assert (old.instances[0].tenant, old.instances[0].tenants) == (A, ())


def test_shares_of_an_instance() -> None:
    (alone,) = shared().instances
    assert alone.shares() == ((Tenant(), 1.0),)  # unassigned: one line, all of it
    (pair,) = shared(TenantShare(A, 0.25), TenantShare(C, 0.75)).instances
    assert pair.shares() == ((A, 0.25), (C, 0.75))


def _bad(tenants: list[dict[str, Any]], tenant: dict[str, str] | None = None) -> dict[str, Any]:
    """A message whose instance lists ``tenants``; ``tenant`` defaults to the first of them."""
    msg: dict[str, Any] = json.loads(shared().to_json())
    if tenant is None:
        tenant = {k: v for k, v in tenants[0].items() if k != "share"}
    msg["instances"][0].update(tenants=tenants, tenant=tenant)
    return msg


def _t(t: Tenant, share: Any) -> dict[str, Any]:
    return {"namespace": t.namespace, "pod": t.pod, "container": t.container, "share": share}


@pytest.mark.parametrize("tenants,tenant,reason", [
    ([_t(A, 1.0)], None, "2 or more"),
    ([_t(A, 0.5), _t(C, 0.4)], None, "add up to"),
    ([_t(A, 0.75), _t(C, 0.75)], None, "add up to"),
    ([_t(A, -0.5), _t(C, 1.5)], None, "outside [0, 1]"),
    ([_t(A, 0.5), _t(C, float("nan"))], None, "non-finite"),
    ([_t(A, "0.5"), _t(C, 0.5)], None, "finite number"),
    ([_t(A, True), _t(C, 0.5)], None, "finite number"),
    ([_t(A, 0.5), _t(A, 0.5)], None, "listed twice"),
    ([_t(A, 0.5), _t(Tenant(), 0.5)], None, "no namespace or pod"),
    ([_t(A, 0.5), _t(C, 0.5)], {"namespace": "team-b", "pod": "etl-3", "container": "worker"}, "first entry"),
    ([_t(A, 0.5), {"namespace": "team-b", "pod": "etl-3"}], None, "missing field 'share'"),
    ([_t(A, 0.5), "team-b/etl-3"], None, "must be objects"),
    ([_t(Tenant("ns", f"p-{i}"), 1 / 257) for i in range(257)], None, "over the limit"),
])
def test_inconsistent_sharing_is_a_bad_snapshot(tenants: list[dict[str, Any]], tenant: dict[str, str] | None,
                                                reason: str) -> None:
    with pytest.raises(BadSnapshot) as err:
        from_json(json.dumps(_bad(tenants, tenant)))
    assert reason in err.value.reason


def test_tenants_not_a_list_is_a_bad_snapshot() -> None:
    msg: dict[str, Any] = json.loads(shared().to_json())
    msg["instances"][0]["tenants"] = {"team-a/bert-0": 1.0}
    with pytest.raises(BadSnapshot, match="must be a list"):
        from_json(json.dumps(msg))


def test_an_idle_pod_keeps_its_place_with_share_zero() -> None:
    s = shared(TenantShare(A, 0.0), TenantShare(C, 1.0)).validate()
    assert from_json(s.to_json()) == s
    assert s.instances[0].shares() == ((A, 0.0), (C, 1.0))


def test_seven_shares_of_one_seventh_are_whole() -> None:
    # 1/7 added seven times is 0.9999999999999998 in float64: within rounding, accepted.
    pods = tuple(TenantShare(Tenant("ns", f"p-{i}"), 1 / 7) for i in range(7))
    assert sum(p.share for p in pods) != 1.0
    s = shared(*pods).validate()
    assert from_json(s.to_json()) == s
