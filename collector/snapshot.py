"""The wire contract: one JSON message per physical GPU per scrape (topic ``migmeter.snapshots.v1``).

Every source produces these objects and the processor decodes them with :func:`from_json`,
so encoding, decoding and validation live here and nowhere else. A snapshot carries the
whole MIG layout of its GPU, which is what lets the processor detect layout changes by
diffing two consecutive snapshots of the same GPU.

Decoding is strict where a wrong value would corrupt chargeback (version, ratios, slices,
timestamps) and lenient where it cannot (unknown fields are ignored, so producers may add
fields without breaking older processors). The optional per-instance ``tenants`` list (pods
sharing an instance, with their shares) is such an addition: older readers bill ``tenant``.

The per-instance values (:class:`Instance`, :class:`Metrics`, :class:`Tenant`,
:class:`TenantShare`) are frozen msgspec Structs: the processor's decoder parses a message
straight into them in C, with the wire's bounds as their fields' constraints, instead of
building a dict and then objects in Python (from_json 10.5 -> ~3 µs per instance sample;
``python -m bench.decode``). Change one with ``msgspec.structs.replace``. :class:`Snapshot`,
one per message, stays a frozen dataclass.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any

import msgspec

from migmeter.errors import BadSnapshot

__all__ = [
    "WIRE_VERSION",
    "MAX_MESSAGE_BYTES",
    "MAX_INSTANCES",
    "FULL_GPU_GI_ID",
    "MAX_TEXT_CHARS",
    "MAX_TEXT_BYTES",
    "MAX_MIB",
    "MIN_INTERVAL_S",
    "MAX_INTERVAL_S",
    "TS_MIN",
    "TS_MAX",
    "RATIO_FIELDS",
    "Metrics",
    "Tenant",
    "TenantShare",
    "Instance",
    "Snapshot",
    "from_json",
    "from_dict",
    "format_ts",
    "parse_ts",
]

WIRE_VERSION = 1
# A real GPU has at most 7 GPU instances; a message far larger than a full layout is an
# attack or a bug, and must not be parsed into memory.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_INSTANCES = 64
# Pods sharing one instance (time-slicing replicas, MPS clients): sites configure tens of
# replicas per GPU; 256 leaves room (about 25 KiB of JSON, well under MAX_MESSAGE_BYTES) while a
# longer list is garbage, not a layout.
MAX_TENANTS = 256
# Shares of one instance must add up to 1 within float rounding (1/3 + 1/3 + 1/3 is exact, 1/7
# seven times is not): the instance's time is billed once, split, never more or less.
SHARE_SUM_TOLERANCE = 1e-9
# A scrape interval beyond a day would make one sample cover days of chargeback.
MAX_INTERVAL_S = 86_400.0
# The processor keeps billed time in whole microseconds: an interval under a millisecond would
# bill (almost) nothing and read as a duplicate of itself.
MIN_INTERVAL_S = 0.001
# Integer fields land in PostgreSQL ``integer`` columns (gpu_index, gi_id, ...).
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
# Text fields (names, labels, profiles) are bounded in characters AND in UTF-8 bytes: the
# warehouse indexes gpu_uuid, profile, namespace and pod together (instance_usage_*_pkey), and
# a btree entry must fit in a third of a page (2704 bytes). 256 four-byte characters in three
# of them (3072 bytes) made every insert of the batch fail, and the processor retry it
# forever; four fields of 512 bytes plus the other key columns stay under 2,100 bytes.
MAX_TEXT_CHARS = 256
MAX_TEXT_BYTES = 512
# Framebuffer sizes land in double-precision columns: bound them far above any GPU (1 EiB)
# and inside the integers a double holds exactly (2^53), so a hostile 400-digit integer is
# refused here instead of failing inside the writer's binary COPY.
MAX_MIB = float(2**40)
# Every derived time (ts - interval_s, bucket starts, the end of its day or month) must stay
# inside Python's datetime range (years 1..9999) and PostgreSQL's; no metering predates Unix.
TS_MIN = datetime(1970, 1, 1, tzinfo=timezone.utc)
TS_MAX = datetime(9999, 1, 1, tzinfo=timezone.utc)
# The pseudo-instance of a GPU without MIG (DCGM has no GPU_I_ID for it).
FULL_GPU_GI_ID = -1

RATIO_FIELDS = ("gr_engine_active", "sm_active", "tensor_active", "dram_active")
_MIB_FIELDS = ("fb_used_mib", "fb_free_mib")

# The wire's bounds as msgspec constraints: checked by the fast decoder (:data:`_FAST`) while it
# parses, ignored when a source builds the objects itself (``validate`` checks those).
_Ratio = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
_MiB = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_MIB)]
_Int32 = Annotated[int, msgspec.Meta(ge=_INT32_MIN, le=_INT32_MAX)]
_Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]


class Metrics(msgspec.Struct, frozen=True, gc=False):
    """Per-instance activity. Ratios are 0..1 relative to the instance; None = not reported."""

    gr_engine_active: _Ratio | None = None
    sm_active: _Ratio | None = None
    tensor_active: _Ratio | None = None
    dram_active: _Ratio | None = None
    fb_used_mib: _MiB | None = None
    fb_free_mib: _MiB | None = None

    def to_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in RATIO_FIELDS + _MIB_FIELDS if getattr(self, k) is not None}


class Tenant(msgspec.Struct, frozen=True, gc=False):
    """Who the instance is assigned to; all empty = unassigned."""

    namespace: _Text = ""
    pod: _Text = ""
    container: _Text = ""

    @property
    def assigned(self) -> bool:
        return bool(self.namespace or self.pod)


class TenantShare(msgspec.Struct, frozen=True, gc=False):
    """One of several pods sharing an instance, and the fraction of its time billed to it."""

    tenant: Tenant
    share: float


class Instance(msgspec.Struct, frozen=True, gc=False):
    """One GPU instance (GI), or the whole GPU as a pseudo-instance when MIG is off.

    ``tenants`` is empty when one tenant (or nobody) holds the instance; when several pods
    share it, it lists each with its share (summing to 1) and ``tenant`` is the first of them,
    so a reader that knows only ``tenant`` still sees a real pod of the instance.
    """

    gi_id: _Int32
    profile: _Text
    slices: int
    metrics: Metrics = Metrics()
    tenant: Tenant = Tenant()
    sm_count: _Int32 | None = None
    mem_total_mib: _MiB | None = None
    placement_start: _Int32 | None = None
    tenants: tuple[TenantShare, ...] = ()

    def shares(self) -> tuple[tuple[Tenant, float], ...]:
        """Who is billed for this instance's time, and which fraction: ((tenant, share), ...)."""
        if not self.tenants:
            return ((self.tenant, 1.0),)
        return tuple((t.tenant, t.share) for t in self.tenants)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "gi_id": self.gi_id,
            "profile": self.profile,
            "slices": self.slices,
            "metrics": self.metrics.to_dict(),
            "tenant": {"namespace": self.tenant.namespace, "pod": self.tenant.pod, "container": self.tenant.container},
        }
        for k in ("sm_count", "mem_total_mib", "placement_start"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        if self.tenants:
            d["tenants"] = [{"namespace": t.tenant.namespace, "pod": t.tenant.pod, "container": t.tenant.container,
                             "share": t.share} for t in self.tenants]
        return d


class _WireSnapshot(msgspec.Struct, frozen=True):
    """A message as the fast decoder reads it: the header's JSON types, instances already typed.

    Shared instances (``tenants``, a flat list on the wire) do not fit :class:`TenantShare`, so
    they fail here and take the checked path, as do nulls where a value is expected."""

    v: int
    ts: str
    # Bounded here so that one out of range takes the checked path, whose reason shows the value
    # as sent (msgspec makes an int a float).
    interval_s: Annotated[float, msgspec.Meta(ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)]
    source: _Text
    cluster: _Text
    host: _Text
    gpu_uuid: _Text
    gpu_index: int
    gpu_model: _Text
    mig_enabled: bool
    total_slices: int
    instances: Annotated[list[Instance], msgspec.Meta(max_length=MAX_INSTANCES)]


_FAST = msgspec.json.Decoder(_WireSnapshot)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One physical GPU at one scrape. ``ts`` is an aware UTC datetime, ms precision on the wire."""

    ts: datetime
    interval_s: float
    source: str
    cluster: str
    host: str
    gpu_uuid: str
    gpu_index: int
    gpu_model: str
    mig_enabled: bool
    total_slices: int
    instances: tuple[Instance, ...] = ()
    v: int = WIRE_VERSION

    @property
    def key(self) -> bytes:
        """Kafka key: the GPU UUID, so one GPU's snapshots stay in one partition, in order."""
        return self.gpu_uuid.encode()

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "ts": format_ts(self.ts),
            "interval_s": self.interval_s,
            "source": self.source,
            "cluster": self.cluster,
            "host": self.host,
            "gpu_uuid": self.gpu_uuid,
            "gpu_index": self.gpu_index,
            "gpu_model": self.gpu_model,
            "mig_enabled": self.mig_enabled,
            "total_slices": self.total_slices,
            "instances": [i.to_dict() for i in self.instances],
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()

    def validate(self) -> Snapshot:
        """Raise BadSnapshot if the object breaks the contract; return self so calls chain."""
        _check_snapshot(self)
        return self


def format_ts(ts: datetime) -> str:
    """UTC, millisecond precision, 'Z' suffix: the only timestamp form on the wire."""
    if ts.tzinfo is None:
        raise BadSnapshot("ts must be timezone-aware")
    return ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_ts(value: object) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise BadSnapshot("ts must be an ISO-8601 string")
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadSnapshot(f"ts is not ISO-8601: {value[:40]!r}") from None
    if ts.tzinfo is None:
        raise BadSnapshot("ts has no timezone (must be UTC)")
    try:
        ts = ts.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00+14:00 is before year 1 in UTC
        raise BadSnapshot(f"ts {value!r} is outside {format_ts(TS_MIN)}..{format_ts(TS_MAX)}") from None
    _check_ts(ts)
    return ts


def _check_ts(ts: datetime) -> None:
    if not TS_MIN <= ts < TS_MAX:
        raise BadSnapshot(f"ts {ts.isoformat()} is outside {format_ts(TS_MIN)}..{format_ts(TS_MAX)}")


def from_json(data: bytes | str) -> Snapshot:
    """Decode and validate one wire message; every failure is a BadSnapshot with a reason.

    Two paths accept the same messages and build the same snapshot. The fast one parses and
    type-checks in one pass in C (msgspec, into :class:`_WireSnapshot`: JSON's exact types,
    every per-instance bound), leaving only the checks across fields (:func:`_check_snapshot`)
    to Python. Anything it declines (a shared instance, a null, a wrong type, any error) takes
    the checked path, which finds the reason. ``python -m bench.decode`` measures both.
    """
    if isinstance(data, str):
        data = data.encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise BadSnapshot(f"message is {len(data)} bytes, over the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        wire = _FAST.decode(data)
    except (msgspec.MsgspecError, RecursionError):  # msgspec raises the latter on deep nesting
        wire = None
    # A nested {"tenant": {...}, "share": x} list would fit TenantShare; the wire's is flat, and
    # every shared instance is decoded (and its shares checked) by the checked path.
    if wire is not None and wire.v == WIRE_VERSION and not any(i.tenants for i in wire.instances):
        snap = Snapshot(parse_ts(wire.ts), wire.interval_s, wire.source, wire.cluster, wire.host, wire.gpu_uuid,
                        wire.gpu_index, wire.gpu_model, wire.mig_enabled, wire.total_slices, tuple(wire.instances))
        # ASCII bytes without a backslash-u escape hold only ASCII strings with no NUL (msgspec refuses raw
        # control characters) and no surrogate, and msgspec bounded their lengths: every text
        # check would pass, and scanning the bytes in C is cheaper than gathering the strings.
        _check_snapshot(snap, values_checked=True, texts_checked=data.isascii() and b"\\u" not in data)
        return snap
    try:
        # msgspec parses to dicts ~4x faster than json (python -m bench.decode). It accepts a
        # subset of what json accepts (no NaN/Infinity, no lone surrogate escapes, no number
        # beyond a double) and parses the same values.
        obj = msgspec.json.decode(data)
    except (msgspec.MsgspecError, RecursionError):
        obj = _loads_checked(data)  # rare: json says why (the reasons of the checked path)
    if not isinstance(obj, dict):
        raise BadSnapshot("message is not a JSON object")
    return from_dict(obj)


def _loads_checked(data: bytes) -> Any:
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except BadSnapshot:
        raise
    except (ValueError, RecursionError) as exc:
        raise BadSnapshot(f"not JSON: {str(exc)[:120]}") from None


def from_dict(obj: dict[str, Any]) -> Snapshot:
    """The checked path: every field and bound checked in Python, each failure with its reason."""
    v = obj.get("v")
    if v != WIRE_VERSION:
        raise BadSnapshot(f"unsupported wire version v={v!r} (this processor reads v={WIRE_VERSION})")
    raw_instances = _req(obj, "instances", list)
    if len(raw_instances) > MAX_INSTANCES:
        raise BadSnapshot(f"{len(raw_instances)} instances, over the limit of {MAX_INSTANCES}")
    snap = Snapshot(
        ts=parse_ts(obj.get("ts")),
        interval_s=_number(obj, "interval_s"),
        source=_req(obj, "source", str),
        cluster=_req(obj, "cluster", str),
        host=_req(obj, "host", str),
        gpu_uuid=_req(obj, "gpu_uuid", str),
        gpu_index=_int(obj, "gpu_index"),
        gpu_model=_req(obj, "gpu_model", str),
        mig_enabled=_req(obj, "mig_enabled", bool),
        total_slices=_int(obj, "total_slices"),
        instances=tuple(_instance_checked(i) for i in raw_instances),
    )
    _check_snapshot(snap)
    return snap


def _reject_constant(name: str) -> float:
    raise BadSnapshot(f"non-finite number {name} in message")


def _req(obj: dict[str, Any], key: str, typ: type) -> Any:
    if key not in obj:
        raise BadSnapshot(f"missing field {key!r}")
    value = obj[key]
    # bool is an int subclass; never accept one for the other.
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        raise BadSnapshot(f"field {key!r} must be {typ.__name__}, got {type(value).__name__}")
    if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
        raise BadSnapshot(f"field {key!r} is longer than {MAX_TEXT_CHARS} characters")
    return value


def _int(obj: dict[str, Any], key: str) -> int:
    return int(_req(obj, key, int))


def _number(obj: dict[str, Any], key: str, optional: bool = False) -> Any:
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise BadSnapshot(f"missing field {key!r}")
    value = obj[key]
    # An int is always finite, and math.isfinite raises OverflowError on one past 1e308; its
    # range is checked with the field's other bounds (_check_snapshot).
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise BadSnapshot(f"field {key!r} must be a finite number")
    return value




def _instance_checked(raw: Any) -> Instance:
    if not isinstance(raw, dict):
        raise BadSnapshot("instance is not an object")
    metrics_raw = raw.get("metrics") or {}
    tenant_raw = raw.get("tenant") or {}
    if not isinstance(metrics_raw, dict) or not isinstance(tenant_raw, dict):
        raise BadSnapshot("instance metrics/tenant must be objects")
    metrics = Metrics(**{k: _number(metrics_raw, k, optional=True) for k in RATIO_FIELDS + _MIB_FIELDS})
    tenant = _tenant_of(tenant_raw)
    return Instance(
        gi_id=_int(raw, "gi_id"),
        profile=_req(raw, "profile", str),
        slices=_int(raw, "slices"),
        metrics=metrics,
        tenant=tenant,
        sm_count=_opt_int(raw, "sm_count"),
        mem_total_mib=_number(raw, "mem_total_mib", optional=True),
        placement_start=_opt_int(raw, "placement_start"),
        tenants=_tenant_shares(raw.get("tenants")),
    )


def _tenant_of(raw: dict[str, Any]) -> Tenant:
    return Tenant(namespace=_opt_str(raw, "namespace"), pod=_opt_str(raw, "pod"), container=_opt_str(raw, "container"))


def _tenant_shares(raw: Any) -> tuple[TenantShare, ...]:
    """The optional ``tenants`` list; its consistency with ``tenant`` is checked with the snapshot."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise BadSnapshot("instance tenants must be a list")
    if len(raw) > MAX_TENANTS:
        raise BadSnapshot(f"{len(raw)} tenants on one instance, over the limit of {MAX_TENANTS}")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise BadSnapshot("instance tenants must be objects")
        out.append(TenantShare(_tenant_of(item), float(_number(item, "share"))))
    return tuple(out)


def _opt_str(obj: dict[str, Any], key: str) -> str:
    if obj.get(key) is None:
        return ""
    return str(_req(obj, key, str))


def _opt_int(obj: dict[str, Any], key: str) -> int | None:
    if obj.get(key) is None:
        return None
    return _int(obj, key)


def _check_int32(name: str, value: int | None) -> None:
    """The warehouse stores these in 32-bit columns: a larger value would make the database
    refuse the whole batch, and the processor retry it forever (one message stalling metering)."""
    if value is not None and not (_INT32_MIN <= value <= _INT32_MAX):
        raise BadSnapshot(f"{name}={_show(value)} outside the 32-bit range the warehouse stores")


def _refuse_mib(gi_id: int, name: str, value: float) -> None:
    raise BadSnapshot(f"gi {gi_id}: {name}={_show(value)} outside 0..{MAX_MIB:.0f} MiB")


def _show(value: object) -> str:
    """A number for an error message: a 400-digit integer is not worth 400 characters of reason
    (and str() of one past 4300 digits raises ValueError)."""
    try:
        text = repr(value)
    except ValueError:
        return "<an integer of over 4300 digits>"
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} characters)"


def _text_fields(s: Snapshot) -> list[tuple[str, str]]:
    named = [("source", s.source), ("cluster", s.cluster), ("host", s.host), ("gpu_uuid", s.gpu_uuid),
             ("gpu_model", s.gpu_model)]
    for inst in s.instances:
        named.append(("profile", inst.profile))
        for t in (inst.tenant, *(ts.tenant for ts in inst.tenants)):
            named += [("namespace", t.namespace), ("pod", t.pod), ("container", t.container)]
    return named


def _check_text(s: Snapshot) -> None:
    """Strings the warehouse can store: PostgreSQL text holds no NUL, a lone surrogate (legal
    in a JSON \\u escape) cannot be encoded as UTF-8, and a field over MAX_TEXT_BYTES overflows
    the btree index; each made the processor's batch fail, or crash it, on every retry. One
    joined string keeps the common (clean, ASCII: bytes = characters) case cheap."""
    fields = _text_fields(s)
    values = [v for _, v in fields]
    text = "".join(values)
    if "\x00" not in text and text.isascii() and max(map(len, values)) <= MAX_TEXT_CHARS:
        return
    for name, value in fields:
        if "\x00" in value:
            raise BadSnapshot(f"field {name!r} contains a NUL character, which the warehouse cannot store")
        if not _encodable(value):
            raise BadSnapshot(f"field {name!r} contains a lone surrogate (not encodable as UTF-8)")
        if len(value) > MAX_TEXT_CHARS or len(value.encode()) > MAX_TEXT_BYTES:
            raise BadSnapshot(f"field {name!r} is over {MAX_TEXT_CHARS} characters or {MAX_TEXT_BYTES} bytes "
                              f"of UTF-8 ({len(value)} characters, {len(value.encode())} bytes)")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_shares(inst: Instance) -> None:
    """A shared instance: two or more distinct assigned pods, shares in [0, 1] summing to 1, the
    first being ``tenant`` (what a reader of ``tenant`` alone bills). A share may be 0: a pod
    idle for the round when shares follow per-pod utilization stays listed, so the list (and
    the primary tenant) does not change with load."""
    where = f"gi {inst.gi_id}"
    if len(inst.tenants) < 2:
        raise BadSnapshot(f"{where}: tenants lists {len(inst.tenants)} pod(s); a shared instance has 2 or more")
    if len(inst.tenants) > MAX_TENANTS:
        raise BadSnapshot(f"{where}: {len(inst.tenants)} tenants, over the limit of {MAX_TENANTS}")
    if inst.tenants[0].tenant != inst.tenant:
        raise BadSnapshot(f"{where}: tenant must be the first entry of tenants")
    seen: set[tuple[str, str]] = set()
    total = 0.0
    for ts in inst.tenants:
        key = (ts.tenant.namespace, ts.tenant.pod)
        if not ts.tenant.assigned:
            raise BadSnapshot(f"{where}: a tenants entry has no namespace or pod")
        if key in seen:
            raise BadSnapshot(f"{where}: tenant {key[0]}/{key[1]} listed twice")
        seen.add(key)
        if not (math.isfinite(ts.share) and 0.0 <= ts.share <= 1.0):
            raise BadSnapshot(f"{where}: share={ts.share} outside [0, 1]")
        total += ts.share
    if abs(total - 1.0) > SHARE_SUM_TOLERANCE:
        raise BadSnapshot(f"{where}: tenant shares add up to {total!r}, not 1")


def _check_instance_values(inst: Instance) -> None:
    """Per-instance metric and share checks (what the fast decoder's constraints guarantee)."""
    for name in RATIO_FIELDS:
        value = getattr(inst.metrics, name)
        if value is not None and not (0.0 <= value <= 1.0):
            raise BadSnapshot(f"gi {inst.gi_id}: {name}={_show(value)} outside 0..1")
    for name in _MIB_FIELDS:
        value = getattr(inst.metrics, name)
        if value is not None and not (0 <= value <= MAX_MIB):
            _refuse_mib(inst.gi_id, name, value)
    if inst.mem_total_mib is not None and not (0 <= inst.mem_total_mib <= MAX_MIB):
        _refuse_mib(inst.gi_id, "mem_total_mib", inst.mem_total_mib)
    if inst.tenants:
        _check_shares(inst)


def _check_snapshot(s: Snapshot, values_checked: bool = False, texts_checked: bool = False) -> None:
    """Raise BadSnapshot if ``s`` breaks the contract. ``values_checked``: every instance came
    from the fast decoder, whose constraints accept only 32-bit ids, in-range metrics and (with
    :func:`from_json`'s guard) no shared tenants, so the per-instance value checks below would
    all pass (the hot path skips them). ``texts_checked``: :func:`_check_text` would pass (the
    fast decoder's message was ASCII without escapes)."""
    if s.v != WIRE_VERSION:
        raise BadSnapshot(f"unsupported wire version v={s.v!r}")
    if s.ts.tzinfo is None:
        raise BadSnapshot("ts must be timezone-aware UTC")
    if not TS_MIN <= s.ts < TS_MAX:
        _check_ts(s.ts)
    if not (MIN_INTERVAL_S <= s.interval_s <= MAX_INTERVAL_S):
        raise BadSnapshot(f"interval_s={_show(s.interval_s)} outside [{MIN_INTERVAL_S}, {MAX_INTERVAL_S}]")
    if not s.gpu_uuid:
        raise BadSnapshot("gpu_uuid is empty")
    if not (1 <= s.total_slices <= 8):
        raise BadSnapshot(f"total_slices={_show(s.total_slices)} outside 1..8")
    if len(s.instances) > MAX_INSTANCES:
        raise BadSnapshot(f"{len(s.instances)} instances, over the limit of {MAX_INSTANCES}")
    _check_int32("gpu_index", s.gpu_index)
    if not texts_checked:
        _check_text(s)
    seen: set[int] = set()
    used = 0
    for inst in s.instances:
        if not values_checked:
            for name, value in (("gi_id", inst.gi_id), ("sm_count", inst.sm_count),
                                ("placement_start", inst.placement_start)):
                _check_int32(name, value)
        if inst.gi_id in seen:
            raise BadSnapshot(f"duplicate gi_id {inst.gi_id}")
        seen.add(inst.gi_id)
        if not (1 <= inst.slices <= s.total_slices):
            raise BadSnapshot(f"gi {inst.gi_id}: slices={_show(inst.slices)} outside 1..{s.total_slices}")
        used += inst.slices
        if not values_checked:
            _check_instance_values(inst)
    if used > s.total_slices:
        raise BadSnapshot(f"instances use {used} slices, more than the GPU's {s.total_slices}")
    if not s.mig_enabled:
        if len(s.instances) != 1 or s.instances[0].gi_id != FULL_GPU_GI_ID or s.instances[0].slices != s.total_slices:
            raise BadSnapshot(
                f"a GPU without MIG must carry exactly one pseudo-instance gi_id={FULL_GPU_GI_ID} "
                f"with slices=total_slices"
            )
    elif any(i.gi_id < 0 for i in s.instances):
        raise BadSnapshot("MIG instances need gi_id >= 0")
