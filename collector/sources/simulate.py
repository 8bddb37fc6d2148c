"""A deterministic simulated GPU fleet: what the demo, the tests and the benchmarks feed on.

The fleet behaves like a shared MIG cluster seen by a scraper: each GPU carries a valid MIG
layout (from a menu of layouts the NVIDIA placement rules allow), tenants (namespace/pod)
arrive on and leave instances, each tenant's utilization follows its own base level times a
daily curve plus noise, GPUs are occasionally re-partitioned once their tenants have left,
and some switch MIG off (one whole-GPU pseudo-instance) or back on.

Determinism is the point: content depends only on the seed and the parameters, never on the
wall clock or the global ``random`` state, so two fleets built alike yield byte-identical
snapshots and a failing test or a benchmark figure can be reproduced. Time is simulated:
``read()`` returns one round at :attr:`SimulatedFleet.now` and advances it by ``interval_s``;
pacing (sleeping interval/speed) is the poll loop's job, not the source's.

``read()`` is built to be cheap (per-GPU state is precomputed, events are checked against one
next-event time per GPU, idle instances share their metrics object) because benchmarks
generate millions of snapshots; ``bench/`` measures it.
"""

from __future__ import annotations

import hashlib
import math
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cache

from collector import profiles
from collector.slices import total_slices_for_model
from collector.snapshot import FULL_GPU_GI_ID, MAX_INTERVAL_S, Instance, Metrics, Snapshot, Tenant
from collector.sources.base import ReadStats
from migmeter.errors import ConfigError

__all__ = [
    "SimulatedFleet",
    "DEFAULT_START",
    "DEFAULT_MODELS",
    "LAYOUTS_7",
    "LAYOUTS_4",
    "supported_models",
]

# A fixed Monday midnight UTC: the default must not be the wall clock, or two runs differ.
DEFAULT_START = datetime(2025, 1, 6, tzinfo=timezone.utc)
DEFAULT_MODELS = ("A100-SXM4-80GB", "H100-80GB-HBM3", "A30")
# Chance a GPU starts with MIG on: most of a MIG fleet is partitioned, a few GPUs are whole.
_INITIAL_MIG_PROB = 0.85
# Chance a reconfiguration also flips MIG mode; rare in real fleets (it needs a GPU reset).
DEFAULT_MIG_TOGGLE_PROB = 0.08
# A GPU due for re-partitioning stops taking new tenants and waits for the current ones to
# leave ("layout changes at tenant boundaries"); after this long the rest are evicted.
_DRAIN_TIMEOUT_S = 2 * 3600.0
# Per-round noise on utilization (uniform +-half of this), so curves are not perfectly smooth.
_UTIL_NOISE = 0.12
# Idle gap between two tenants of one instance, seconds (uniform range).
_IDLE_GAP_S = (5 * 60.0, 3 * 3600.0)
# Chance an instance is assigned when the simulation starts.
_INITIAL_ASSIGNED_PROB = 0.7
# Memory a MIG instance with no process on it still shows as used (driver reservations).
_IDLE_FB_USED_MIB = 0.0
# Usable memory of an instance relative to the nominal GB in its profile name: lgip reports
# e.g. 9.75 GiB for "1g.10gb" on H100; "plausible", not exact per board.
_USABLE_MEM_FRACTION = 0.97

# Layouts as ((compute slices, memory-slot placement start), ...). 7-slice GPUs have 8 memory
# slots; placements follow `nvidia-smi mig -lgipp` (1g: any slot 0..6, 2g: 0/2/4, 3g: 0/4,
# 4g: 0, 7g: 0 with size 8). Layouts whose slices sum below the total leave slices
# unallocated on purpose ([3,3], [3,2], [4], ...), which the unallocated line of
# chargeback must account for.
LAYOUTS_7: tuple[tuple[tuple[int, int], ...], ...] = (
    ((7, 0),),
    ((4, 0), (3, 4)),
    ((3, 0), (3, 4)),
    ((3, 4), (2, 0), (1, 2), (1, 3)),
    ((2, 0), (2, 2), (2, 4), (1, 6)),
    tuple((1, p) for p in range(7)),
    ((4, 0), (2, 4), (1, 6)),
    ((3, 0), (2, 4)),
    ((4, 0),),
    ((2, 0), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6)),
    ((3, 0), (1, 4), (1, 5), (1, 6)),
)
# A30: 4 compute slices, 4 memory slots; 1g: 0..3, 2g: 0/2, 4g: 0.
LAYOUTS_4: tuple[tuple[tuple[int, int], ...], ...] = (
    ((4, 0),),
    ((2, 0), (2, 2)),
    ((2, 0), (1, 2), (1, 3)),
    ((1, 0), (1, 1), (1, 2), (1, 3)),
    ((2, 0),),
    ((1, 0), (1, 1)),
)


@dataclass(frozen=True, slots=True)
class _Profile:
    name: str
    slices: int
    mem_mib: float
    sm_count: int | None


@dataclass(frozen=True, slots=True)
class _Family:
    """What one GPU model looks like: profile names as exporters report them, full size."""

    profiles: dict[int, _Profile]
    full_mem_mib: float
    full_sm_count: int


# SMs of the whole GPU, per model of the profile table (collector.profiles), whose largest
# profile leaves some SMs out (A100: 7g = 98 of 108). The models the simulator can play.
_FULL_SM_COUNT: dict[str, int] = {
    "GH200 (H100-96GB)": 132,
    "H200-141GB (SXM5/NVL)": 132,
    "H100-94GB (H100 NVL)": 132,
    "H100-80GB-PCIe": 114,
    "H100-80GB-SXM5": 132,
    "B200-180GB": 148,
    "A100-SXM4-40GB": 108,
    "A100-80GB (SXM4/PCIe)": 108,
    "A30-24GB": 56,
}


def _mib(gb: float) -> float:
    return float(int(gb * 1024 * _USABLE_MEM_FRACTION))


def supported_models() -> list[str]:
    """The profile table's models the simulator knows (for --help and error messages)."""
    return list(_FULL_SM_COUNT)


@cache
def _family_for(model: str) -> _Family:
    """The model's profiles from the one table: per slice count, the first profile the table
    lists without media extensions (``+me``), as a driver's default layout uses."""
    table = profiles.table_model(model)
    if table not in _FULL_SM_COUNT:
        raise ConfigError(f"simulated GPU model {model!r} is unknown; use a name matching one of {supported_models()}")
    menu: dict[int, _Profile] = {}
    for p in profiles.profiles_for(model):
        if "+" not in p.name and p.compute_slices not in menu:
            menu[p.compute_slices] = _Profile(p.name, p.compute_slices, _mib(p.memory_gb), p.sm_count)
    full_gb = max(p.memory_gb for p in profiles.profiles_for(model))
    return _Family(menu, _mib(full_gb), _FULL_SM_COUNT[table])


def _gi_id(total_slices: int, slices: int, start: int) -> int:
    """GPU-instance id as the driver assigns it: a function of profile size and placement.

    Modelled on what A100/H100 drivers report (7g -> 0, 3g at 0/4 -> 1/2, 2g at 0/2/4 -> 3/4/5,
    1g at slot p -> 7+p); two instances of one valid layout never overlap, so never share an id.
    """
    if total_slices == 4:
        return {4: 0, 2: 1 + start // 2}.get(slices, 3 + start)
    if slices in (7, 8):
        return 0
    if slices in (3, 4):
        return 1 + start // 4
    if slices == 2:
        return 3 + start // 2
    return 7 + start


# Namespaces of the simulated tenants and the kind of work each runs.
_NAMESPACES = (
    ("ml-research", "training"),
    ("llm-serving", "inference"),
    ("search-ranking", "inference"),
    ("speech", "training"),
    ("vision", "training"),
    ("recsys", "inference"),
    ("analytics", "notebook"),
    ("dev-notebooks", "notebook"),
)
# kind -> (base utilization range, diurnal weight, assignment duration range s, memory fraction
# range, sm/gr ratio, tensor/gr ratio, dram/gr ratio, container name)
_KINDS: dict[str, tuple[tuple[float, float], float, tuple[float, float], tuple[float, float],
                        float, float, float, str]] = {
    "training": ((0.80, 0.97), 0.1, (2 * 3600.0, 12 * 3600.0), (0.70, 0.95), 0.90, 0.65, 0.55, "trainer"),
    "inference": ((0.45, 0.90), 1.0, (3 * 3600.0, 18 * 3600.0), (0.40, 0.80), 0.75, 0.40, 0.45, "server"),
    "notebook": ((0.10, 0.45), 1.0, (0.5 * 3600.0, 4 * 3600.0), (0.10, 0.50), 0.60, 0.20, 0.25, "jupyter"),
}


def _diurnal(epoch_s: float) -> float:
    """Daily load curve 0.2..1.0: peak at 15:00 UTC, trough at 03:00, weekends at 60%."""
    day = epoch_s / 86_400.0
    hour = (day % 1.0) * 24.0
    curve = 0.6 + 0.4 * math.cos(2 * math.pi * (hour - 15.0) / 24.0)
    weekday = (int(day) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    return curve * (0.6 if weekday >= 5 else 1.0)


_IDLE_TENANT = Tenant()


class _Slot:
    """One instance (or the whole-GPU pseudo-instance) and who is on it."""

    __slots__ = (
        "gi_id", "profile", "slices", "sm_count", "mem_mib", "placement", "tenant", "next_change",
        "base", "flat", "dw", "sm_k", "tensor_k", "dram_k", "fb_base", "fb_dyn", "idle_instance",
    )

    def __init__(self, gi_id: int, profile: str, slices: int, sm_count: int | None, mem_mib: float,
                 placement: int | None) -> None:
        self.gi_id = gi_id
        self.profile = profile
        self.slices = slices
        self.sm_count = sm_count
        self.mem_mib = mem_mib
        self.placement = placement
        self.tenant = _IDLE_TENANT
        self.next_change = 0.0
        self.base = self.flat = self.dw = self.sm_k = self.tensor_k = self.dram_k = 0.0
        self.fb_base = self.fb_dyn = 0.0
        # Shared by every idle round of this slot: idle rounds allocate nothing.
        idle = Metrics(0.0, 0.0, 0.0, 0.0, _IDLE_FB_USED_MIB, mem_mib - _IDLE_FB_USED_MIB)
        self.idle_instance = Instance(gi_id, profile, slices, idle, _IDLE_TENANT, sm_count, mem_mib, placement)


class _Gpu:
    __slots__ = ("host", "index", "uuid", "model", "family", "total", "rng", "mig", "slots",
                 "layout", "next_reconfig", "draining_since", "next_event")

    def __init__(self, host: str, index: int, gpu_uuid: str, model: str, rng: random.Random) -> None:
        self.host = host
        self.index = index
        self.uuid = gpu_uuid
        self.model = model
        self.family = _family_for(model)
        self.total = total_slices_for_model(model)
        self.rng = rng
        self.mig = False
        self.slots: list[_Slot] = []
        self.layout: tuple[tuple[int, int], ...] = ()
        self.next_reconfig = math.inf
        self.draining_since: float | None = None
        self.next_event = 0.0


class SimulatedFleet:
    """A fleet of ``hosts`` x ``gpus_per_host`` simulated GPUs; implements ``Source``.

    Models are assigned round-robin over all GPUs (so even two hosts show every model).
    ``reconfigure_every_s`` is the mean time between re-partitionings of one GPU (randomized
    0.5x..1.5x, then delayed while tenants drain); ``mig_toggle_prob`` is the chance that a
    re-partitioning switches MIG off (or back on) instead.
    """

    name = "simulate"
    exhausted = False  # a live source never runs out (Source protocol)

    def __init__(
        self,
        *,
        seed: int = 1,
        hosts: int = 2,
        gpus_per_host: int = 4,
        models: Sequence[str] = DEFAULT_MODELS,
        cluster: str = "sim",
        start: datetime | None = None,
        interval_s: float = 15.0,
        reconfigure_every_s: float = 6 * 3600.0,
        mig_toggle_prob: float = DEFAULT_MIG_TOGGLE_PROB,
    ) -> None:
        if hosts < 1 or gpus_per_host < 1:
            raise ConfigError(f"need at least one host and one GPU per host (got {hosts} x {gpus_per_host})")
        if gpus_per_host > 64:
            raise ConfigError(f"gpus_per_host={gpus_per_host} is more than any real host has (max 64)")
        if not models:
            raise ConfigError("models is empty: give at least one GPU model")
        if not (0 < interval_s <= MAX_INTERVAL_S):
            raise ConfigError(f"interval_s={interval_s} outside (0, {MAX_INTERVAL_S}]")
        if not reconfigure_every_s > 0:
            raise ConfigError(f"reconfigure_every_s={reconfigure_every_s} must be positive")
        if not (0.0 <= mig_toggle_prob <= 1.0):
            raise ConfigError(f"mig_toggle_prob={mig_toggle_prob} outside 0..1")
        start = DEFAULT_START if start is None else start
        if start.tzinfo is None:
            raise ConfigError("start must be timezone-aware (UTC)")
        for m in models:
            _family_for(m)  # unknown model: fail at construction, not mid-run
        self.stats = ReadStats()
        self.cluster = cluster
        self.interval_s = float(interval_s)
        self.reconfigure_every_s = float(reconfigure_every_s)
        self.mig_toggle_prob = float(mig_toggle_prob)
        self._start = start.astimezone(timezone.utc)
        self._start_epoch = self._start.timestamp()
        self._round = 0
        self._closed = False
        self._gpus: list[_Gpu] = []
        for h in range(hosts):
            host = f"{cluster}-node-{h:02d}"
            for j in range(gpus_per_host):
                key = f"{seed}/{host}/{j}"
                digest = hashlib.sha256(key.encode()).digest()
                gpu = _Gpu(host, j, f"GPU-{uuid.UUID(bytes=digest[:16])}",
                           models[(h * gpus_per_host + j) % len(models)], random.Random(key))
                self._init_gpu(gpu)
                self._gpus.append(gpu)

    # -- Source protocol ---------------------------------------------------------------

    @property
    def now(self) -> datetime:
        """Simulated time of the next round (``read()`` stamps its snapshots with it)."""
        return self._start + timedelta(seconds=self._round * self.interval_s)

    def read(self) -> list[Snapshot]:
        """One round: a snapshot per GPU at :attr:`now`, then advance ``now`` by ``interval_s``."""
        if self._closed:
            raise RuntimeError("SimulatedFleet.read() after close()")
        t = self._round * self.interval_s
        ts = self._start + timedelta(seconds=t)
        diurnal = _diurnal(self._start_epoch + t)
        interval = self.interval_s
        cluster = self.cluster
        out = []
        for g in self._gpus:
            if t >= g.next_event:
                self._advance(g, t)
            rnd = g.rng.random
            instances = []
            for s in g.slots:
                if s.tenant is _IDLE_TENANT:
                    instances.append(s.idle_instance)  # immutable: shared by every idle round
                    continue
                u = s.base * (s.flat + s.dw * diurnal) + (rnd() - 0.5) * _UTIL_NOISE
                u = 0.0 if u < 0.0 else 1.0 if u > 1.0 else u
                # (x * 1e4 + 0.5) // 1 / 1e4 rounds to 4 decimals (short JSON) at a fifth of round()'s cost.
                used = (s.fb_base + s.fb_dyn * u) // 1
                metrics = Metrics((u * 1e4 + 0.5) // 1 / 1e4, (u * s.sm_k * 1e4 + 0.5) // 1 / 1e4,
                                  (u * s.tensor_k * 1e4 + 0.5) // 1 / 1e4, (u * s.dram_k * 1e4 + 0.5) // 1 / 1e4,
                                  used, s.mem_mib - used)
                instances.append(Instance(s.gi_id, s.profile, s.slices, metrics, s.tenant, s.sm_count,
                                          s.mem_mib, s.placement))
            out.append(Snapshot(ts, interval, "simulate", cluster, g.host, g.uuid, g.index, g.model, g.mig,
                                g.total, tuple(instances)))
        self._round += 1
        return out

    def rounds(self, n: int) -> Iterator[list[Snapshot]]:
        """The next ``n`` rounds, lazily (benchmarks iterate millions of snapshots)."""
        for _ in range(n):
            yield self.read()

    def close(self) -> None:
        """Nothing to release; later reads fail loudly so a use-after-close bug shows."""
        self._closed = True

    # -- simulation --------------------------------------------------------------------

    def _init_gpu(self, g: _Gpu) -> None:
        rng = g.rng
        g.mig = rng.random() < _INITIAL_MIG_PROB
        self._build_layout(g)
        for s in g.slots:
            if rng.random() < _INITIAL_ASSIGNED_PROB:
                self._assign(g, s, 0.0)
                # Started before the simulation: cut its remaining time at random.
                s.next_change *= rng.random()
            else:
                s.next_change = rng.uniform(0.0, _IDLE_GAP_S[1])
        g.next_reconfig = self.reconfigure_every_s * rng.uniform(0.5, 1.5)
        self._update_next_event(g)

    def _build_layout(self, g: _Gpu) -> None:
        fam = g.family
        if not g.mig:
            g.layout = ()
            g.slots = [_Slot(FULL_GPU_GI_ID, "", g.total, fam.full_sm_count, fam.full_mem_mib, None)]
            return
        menu = LAYOUTS_4 if g.total == 4 else LAYOUTS_7
        # A re-partitioning that picks the layout it already has would be no change at all.
        layout = g.rng.choice([lay for lay in menu if lay != g.layout])
        g.layout = layout
        g.slots = []
        for slices, placement in layout:
            p = fam.profiles[slices]
            g.slots.append(_Slot(_gi_id(g.total, slices, placement), p.name, slices, p.sm_count, p.mem_mib, placement))

    def _assign(self, g: _Gpu, s: _Slot, t: float) -> None:
        rng = g.rng
        ns, kind = rng.choice(_NAMESPACES)
        base, dw, dur, memf, sm_k, tensor_k, dram_k, container = _KINDS[kind]
        s.tenant = Tenant(ns, f"{ns}-{kind}-{rng.getrandbits(24):06x}", container)
        s.base = rng.uniform(*base)
        s.dw = dw
        s.flat = 1.0 - dw
        s.sm_k = sm_k * rng.uniform(0.9, 1.05)
        s.tensor_k = tensor_k * rng.uniform(0.7, 1.1)
        s.dram_k = dram_k * rng.uniform(0.8, 1.2)
        frac = rng.uniform(*memf)
        # Memory: a fixed footprint plus a little that grows with activity, never above total.
        s.fb_base = s.mem_mib * frac * 0.9
        s.fb_dyn = s.mem_mib * frac * 0.1
        s.next_change = t + rng.uniform(*dur)

    def _advance(self, g: _Gpu, t: float) -> None:
        """Apply every event of this GPU due at or before ``t``."""
        rng = g.rng
        if g.draining_since is None and t >= g.next_reconfig:
            g.draining_since = t
        for s in g.slots:
            if t < s.next_change:
                continue
            if s.tenant is not _IDLE_TENANT:
                s.tenant = _IDLE_TENANT
                s.next_change = t + rng.uniform(*_IDLE_GAP_S)
            elif g.draining_since is None:
                self._assign(g, s, t)
            else:
                s.next_change = math.inf  # no new tenants while draining
        if g.draining_since is not None and (
            all(s.tenant is _IDLE_TENANT for s in g.slots) or t - g.draining_since >= _DRAIN_TIMEOUT_S
        ):
            self._reconfigure(g, t)
        self._update_next_event(g)

    def _reconfigure(self, g: _Gpu, t: float) -> None:
        """Re-partition (or toggle MIG); remaining tenants are evicted, new ones arrive later."""
        rng = g.rng
        if rng.random() < self.mig_toggle_prob:
            g.mig = not g.mig
        self._build_layout(g)
        for s in g.slots:
            s.next_change = t + rng.uniform(*_IDLE_GAP_S) * 0.25
        g.draining_since = None
        g.next_reconfig = t + self.reconfigure_every_s * rng.uniform(0.5, 1.5)

    @staticmethod
    def _update_next_event(g: _Gpu) -> None:
        nxt = min(s.next_change for s in g.slots)
        if g.draining_since is None:
            nxt = min(nxt, g.next_reconfig)
        else:
            nxt = min(nxt, g.draining_since + _DRAIN_TIMEOUT_S)
        g.next_event = nxt
