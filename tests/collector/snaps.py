"""Small hand-built snapshots for collector tests (the simulator is used where a fleet is needed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from collector.snapshot import FULL_GPU_GI_ID, Instance, Metrics, Snapshot

__all__ = ["T0", "mig", "whole", "series"]

T0 = datetime(2025, 1, 6, tzinfo=timezone.utc)


def mig(uuid: str = "GPU-a", layout: tuple[tuple[int, str, int], ...] = ((1, "3g.40gb", 3), (2, "2g.20gb", 2)),
        *, ts: datetime = T0, host: str = "node-1", index: int = 0, model: str = "A100-SXM4-80GB",
        total: int = 7, interval_s: float = 15.0) -> Snapshot:
    """A MIG GPU with ``layout`` = ((gi_id, profile, slices), ...)."""
    return Snapshot(
        ts=ts, interval_s=interval_s, source="test", cluster="c", host=host, gpu_uuid=uuid, gpu_index=index,
        gpu_model=model, mig_enabled=True, total_slices=total,
        instances=tuple(Instance(gi, prof, n, Metrics(gr_engine_active=0.5)) for gi, prof, n in layout),
    )


def whole(uuid: str = "GPU-b", *, ts: datetime = T0, host: str = "node-1", index: int = 1,
          model: str = "A30", total: int = 4) -> Snapshot:
    """A GPU without MIG: one pseudo-instance holding all its slices."""
    return Snapshot(
        ts=ts, interval_s=15.0, source="test", cluster="c", host=host, gpu_uuid=uuid, gpu_index=index,
        gpu_model=model, mig_enabled=False, total_slices=total,
        instances=(Instance(FULL_GPU_GI_ID, "", total, Metrics(gr_engine_active=0.25)),),
    )


def series(uuids: list[str], rounds: int) -> list[Snapshot]:
    """``rounds`` rounds of one snapshot per GPU, 15 s apart: a deterministic publish workload."""
    return [mig(u, ts=T0 + timedelta(seconds=15 * r), index=i) for r in range(rounds) for i, u in enumerate(uuids)]
