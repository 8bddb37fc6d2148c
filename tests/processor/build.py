"""The snapshot builder of every test (collector, processor, warehouse, faults): terse scenarios, valid v1 snapshots."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from collector.snapshot import FULL_GPU_GI_ID, Instance, Metrics, Snapshot, Tenant

__all__ = ["T0", "at", "mig", "whole", "inst", "series", "TWO_GIS", "KNOWN_VALUES"]

# A fixed Monday midnight UTC, in the past (the processor's future-skew rule needs that).
T0 = datetime(2025, 3, 3, tzinfo=timezone.utc)

# DESIGN.md "Known values": ((profile, util %), ...) -> (simple, weighted, whole) in %.
KNOWN_VALUES: list[tuple[tuple[tuple[str, float], ...], tuple[float, float, float]]] = [
    ((("1g.10gb", 90), ("2g.20gb", 60), ("1g.10gb", 80)), (76.67, 72.50, 41.43)),
    ((("1g.10gb", 90), ("1g.10gb", 80), ("2g.20gb", 60), ("1g.10gb", 70)), (75.00, 72.00, 51.43)),
    ((("3g.40gb", 95), ("2g.20gb", 70), ("2g.20gb", 85)), (83.33, 85.00, 85.00)),
]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def inst(gi_id: int, profile: str, util: float | None, ns: str = "", pod: str = "", container: str = "",
         fb_used: float | None = None) -> Instance:
    slices = int(profile.split("g", 1)[0]) if gi_id != FULL_GPU_GI_ID else 0
    return Instance(gi_id, profile, slices, Metrics(gr_engine_active=util, fb_used_mib=fb_used),
                    Tenant(ns, pod, container))


# A 3g and a 2g instance at 50 %: the default MIG layout of tests that need "some MIG GPU".
TWO_GIS = (inst(1, "3g.40gb", 0.5), inst(2, "2g.20gb", 0.5))


def mig(ts: datetime, instances: Sequence[Instance], gpu: str = "GPU-a", total: int = 7, model: str = "A100-SXM4-40GB",
        interval_s: float = 15.0, cluster: str = "c1", host: str = "h1", index: int = 0) -> Snapshot:
    return Snapshot(ts, interval_s, "test", cluster, host, gpu, index, model, True, total, tuple(instances)).validate()


def whole(ts: datetime, util: float | None, gpu: str = "GPU-a", total: int = 7, model: str = "A100-SXM4-40GB",
          interval_s: float = 15.0, ns: str = "", pod: str = "", cluster: str = "c1", index: int = 0) -> Snapshot:
    i = Instance(FULL_GPU_GI_ID, "full", total, Metrics(gr_engine_active=util), Tenant(ns, pod, ""))
    return Snapshot(ts, interval_s, "test", cluster, "h1", gpu, index, model, False, total, (i,)).validate()


def series(gpus: Sequence[str], rounds: int) -> list[Snapshot]:
    """``rounds`` rounds of one :data:`TWO_GIS` snapshot per GPU (index = its position), 15 s apart
    from :data:`T0`: a deterministic publish workload."""
    return [mig(at(15 * r), TWO_GIS, gpu=g, index=i) for r in range(rounds) for i, g in enumerate(gpus)]
