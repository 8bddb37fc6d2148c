"""Property: whatever the feed, per GPU billed seconds + unmetered seconds = its life, and no
second is billed twice (DESIGN.md "Time model").

Random feeds for two GPUs: gaps, duplicates (re-sent snapshots), two overlapping streams
(another host, another offset), Prometheus history older than the live edge, reordering
within a small window (the spool's), random batch cuts, processor restarts (the state
re-read from its stored form, JSON included) and rolled-back batches (folded, not committed,
re-read and re-folded). The fold runs as the processor runs it; what each committed batch
writes is summed as the warehouse would sum it.

The oracle is independent of processor code: integer-second timestamps, so each GPU's billed
time is a plain set of seconds (second k stands for (k-1, k]) built by the rule of DESIGN.md.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.snapshot import Snapshot
from processor.fold import BatchFold
from processor.layout import GpuState
from processor.timeline import US
from tests.processor.build import T0, inst, mig

NOW = (T0 + timedelta(days=30)).timestamp()
GAP = 3  # x interval_s


@st.composite
def feeds(draw: st.DrawFn) -> list[Snapshot]:
    snaps: list[Snapshot] = []
    for gpu in ("GPU-a", "GPU-b"):
        n = draw(st.integers(0, 25))
        t = draw(st.integers(1000, 1100))
        for _ in range(n):
            t += draw(st.sampled_from([0, 1, 7, 15, 15, 15, 30, 60, 200]))  # 0 = re-sent, 200 = an outage
            interval = draw(st.sampled_from([15, 30, 60]))
            host = draw(st.sampled_from(["node", "node", "svc"]))  # a second stream now and then
            snaps.append(_snap(gpu, t, interval, "dcgm", host))
        for _ in range(draw(st.integers(0, 6))):  # history from before and inside the live range
            snaps.append(_snap(gpu, draw(st.integers(200, t + 1)), 60, "prometheus", "prom"))
    # Reordering within a window of 4 records (what a spool replay beside a live stream does).
    for i in range(len(snaps)):
        j = min(len(snaps) - 1, i + draw(st.integers(0, 3)))
        snaps[i], snaps[j] = snaps[j], snaps[i]
    return snaps


def _snap(gpu: str, t: int, interval: int, source: str, host: str) -> Snapshot:
    s = mig(T0 + timedelta(seconds=t), [inst(0, "3g.40gb", 0.5, "ns", "p")], gpu=gpu, interval_s=interval)
    return Snapshot(s.ts, s.interval_s, source, s.cluster, host, s.gpu_uuid, s.gpu_index, s.gpu_model,
                    s.mig_enabled, s.total_slices, s.instances)


def _stored(state: GpuState) -> GpuState:
    """The state as the processor re-reads it from gpu_state after a restart."""
    row = json.loads(json.dumps({"layout": state.layout_json(), "billed": state.billed}))
    return GpuState.from_row(state.last_ts, state.mig_enabled, row["layout"], state.source_partition,
                             state.source_offset, row["billed"], state.version, state.feed)


def _oracle(snaps: list[Snapshot]) -> dict[str, tuple[set[int], int]]:
    """Per GPU: the set of billed seconds and the last ts, by DESIGN.md's rule."""
    billed: dict[str, set[int]] = defaultdict(set)
    last: dict[str, int] = {}
    for s in snaps:
        ts, iv = int((s.ts - T0).total_seconds()), int(s.interval_s)
        prev = last.get(s.gpu_uuid)
        start = prev if prev is not None and 0 < ts - prev <= GAP * iv else ts - iv
        billed[s.gpu_uuid].update(range(start + 1, ts + 1))
        last[s.gpu_uuid] = max(ts, prev if prev is not None else ts)
    return {g: (billed[g], last[g]) for g in billed}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(feed=feeds(), data=st.data())
def test_billed_plus_unmetered_is_life_and_no_second_twice(feed: list[Snapshot], data: st.DataObject) -> None:
    stored: dict[str, GpuState] = {}  # what the database holds
    cache: dict[str, GpuState | None] = {}  # the processor's memory (optimistic)
    seconds: dict[tuple[str, int], float] = defaultdict(float)  # (GPU, minute) -> billed s
    unmetered: dict[tuple[str, int], float] = defaultdict(float)
    i = 0
    while i < len(feed):
        cut = data.draw(st.integers(1, 8), label="batch size")
        batch = feed[i:i + cut]
        if data.draw(st.booleans(), label="restart"):
            cache = {}
        for s in batch:
            if s.gpu_uuid not in cache:
                cache[s.gpu_uuid] = _stored(stored[s.gpu_uuid]) if s.gpu_uuid in stored else None
        fold = BatchFold(cache, {("t", 0): i}, clock=lambda: NOW)
        for k, s in enumerate(batch):
            fold.add("t", 0, i + k, s.key, b"", s)
        done = fold.finish()
        assert done.records == len(batch)
        if data.draw(st.integers(0, 5), label="roll back") == 0:
            cache = {}  # the batch failed: forget memory, re-read, re-fold the same records
            continue
        # Commit: the fence would refuse a state not built on the stored version.
        for uuid, state in done.states.items():
            assert state.version == (stored[uuid].version if uuid in stored else 0) + 1
            assert uuid not in stored or state.last_ts >= stored[uuid].last_ts  # never backward
            stored[uuid] = state
        cache.update(done.states)
        for key, g in done.aggregates.gpus.items():
            seconds[(key.gpu_uuid, key.bucket)] += g.seconds
            unmetered[(key.gpu_uuid, key.bucket)] += g.unmetered_seconds
        i += len(batch)

    for gpu, (oracle_set, oracle_last) in _oracle(feed).items():
        state = stored[gpu]
        spans = state.billed
        life = (spans[-1][1] - spans[0][0]) / US
        billed_s = sum(v for (g, _), v in seconds.items() if g == gpu)
        unmetered_s = sum(v for (g, _), v in unmetered.items() if g == gpu)
        assert billed_s == len(oracle_set)  # every second once: none twice, none lost
        assert billed_s + unmetered_s == life
        assert life == max(oracle_set) - min(oracle_set) + 1
        assert state.last_ts == T0 + timedelta(seconds=oracle_last)
        for (g, _), v in seconds.items():
            if g == gpu:
                assert 0 <= v <= 60 and 0 <= v + unmetered[(g, _)] <= 60  # a minute holds at most 60 s
