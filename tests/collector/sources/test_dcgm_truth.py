"""Issue 12 on the real exporter text: every fixture is the NVIDIA docs scrape in
``dcgm_reference/`` (an A100, GPU-level rows plus GI 13 ``1g.5gb``) with labels or values changed.

Right tenant (target labels, old and new label spellings, several pods on one GI), no phantom
layout changes (garbled profile, GI rows missing for a round), one GPU behind two URLs, and
profile/metric spellings.
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from collector.metrics import CollectorMetrics
from collector.publish import InMemoryPublisher
from collector.run import run_loop
from collector.snapshot import FULL_GPU_GI_ID, Metrics, Snapshot, Tenant, TenantShare, from_json
from collector.sources.base import ReadStats
from collector.sources.dcgm import DcgmSource, LayoutMemory, parse_scrape
from collector.sources.labels import TargetFilter
from processor.fold import BatchFold

REFERENCE = (Path(__file__).parent / "dcgm_reference" / "01-a100-40gb-gpu-plus-gi-nvidia-docs.prom").read_text()
UUID = "GPU-34319582-d595-d1c7-d1d2-179bcfa61660"
OTHER_UUID = "GPU-66068b5a-84f7-e3c9-bc10-e21eae988090"
TS = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
GI_LABELS = 'GPU_I_PROFILE="1g.5gb",GPU_I_ID="13",'
# The GI row's own values in the reference (the GPU-level row has GR 0.995630).
GI_METRICS = Metrics(gr_engine_active=0.995687, tensor_active=0.930433, dram_active=0.800339)
EXPORTER = 'namespace="gpu-operator",pod="nvidia-dcgm-exporter-7xk2p",container="nvidia-dcgm-exporter"'


def gpu_rows(text: str = REFERENCE) -> list[str]:
    return [ln for ln in text.splitlines() if ln and "GPU_I_ID" not in ln]


def gi_rows(text: str = REFERENCE) -> list[str]:
    return [ln for ln in text.splitlines() if "GPU_I_ID" in ln]


def with_labels(rows: list[str], extra: str) -> list[str]:
    """Append labels to each row (after Hostname, where dcgm-exporter writes the pod labels)."""
    return [ln.replace('"} ', f'",{extra}}} ', 1) for ln in rows]


def text(*rows: str | list[str]) -> str:
    out: list[str] = []
    for r in rows:
        out.extend([r] if isinstance(r, str) else r)
    return "\n".join(out) + "\n"


def parse(body: str, stats: ReadStats | None = None, memory: LayoutMemory | None = None,
          targets: TargetFilter | None = None, ts: datetime = TS) -> list[Snapshot]:
    snaps = parse_scrape(body, cluster="test", ts=ts, interval_s=15.0, stats=stats, memory=memory, targets=targets)
    assert [from_json(s.to_json()) for s in snaps] == snaps  # every snapshot survives the wire
    return snaps


def instances(snap: Snapshot) -> list[tuple[int, str, int, Tenant]]:
    return [(i.gi_id, i.profile, i.slices, i.tenant) for i in snap.instances]


# --- profile and metric spellings -------------------------------------------------------------

@pytest.mark.parametrize("profile", ["MIG 1g.5gb", "1g.5gb+me", "[1g.5gb]", "nvidia.com/mig-1g.5gb", "1G.5GB",
                                     "'1g.5gb'", "1g.5gb (GI 13)"])
def test_ng_token_is_found_wherever_it_stands(profile: str) -> None:
    stats = ReadStats()
    (s,) = parse(REFERENCE.replace('GPU_I_PROFILE="1g.5gb"', f'GPU_I_PROFILE="{profile}"'), stats)
    assert instances(s) == [(13, profile, 1, Tenant())]  # the profile as reported, 1 slice
    assert stats.skipped == {}


def _lower_names(line: str) -> str:
    """What a lower-casing pipeline does: metric and label names lower-cased, values untouched."""
    m = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)\{(.*)\}(.*)$", line)
    assert m, line
    labels = re.sub(r'([A-Za-z_][A-Za-z0-9_]*)="', lambda g: g.group(1).lower() + '="', m.group(2))
    return f"{m.group(1).lower()}{{{labels}}}{m.group(3)}"


def test_lower_cased_metric_and_label_names_read_the_same() -> None:
    lowered = text([_lower_names(ln) for ln in REFERENCE.splitlines() if ln])
    assert "dcgm_fi_prof_gr_engine_active{gpu=" in lowered and 'gpu_i_id="13"' in lowered
    assert 'hostname="ub20-a100-k8s"' in lowered and UUID in lowered  # values untouched
    stats = ReadStats()
    assert parse(lowered, stats) == parse(REFERENCE)
    (s,) = parse(lowered)
    assert instances(s) == [(13, "1g.5gb", 1, Tenant())] and s.instances[0].metrics == GI_METRICS
    assert stats.skipped == {}


@pytest.mark.parametrize("labels,tenant", [
    # dcgm-exporter >= 2.0 (podresources mapper): pod, namespace, container.
    ('pod="bert-0",namespace="team-a",container="trainer"', Tenant("team-a", "bert-0", "trainer")),
    # dcgm-exporter 1.x and --kubernetes-use-old-namespace: pod_name, pod_namespace, container_name.
    ('pod_name="bert-0",pod_namespace="team-a",container_name="trainer"', Tenant("team-a", "bert-0", "trainer")),
    # Behind a Prometheus without honor_labels: the exporter's labels renamed, the target's beside them.
    (f'exported_pod="bert-0",exported_namespace="team-a",exported_container="trainer",{EXPORTER}',
     Tenant("team-a", "bert-0", "trainer")),
    (f'exported_pod_name="bert-0",exported_pod_namespace="team-a",{EXPORTER}', Tenant("team-a", "bert-0", "")),
    # An old exporter's names beside the target's plain ones: the old names are the workload's.
    (f'pod_name="bert-0",pod_namespace="team-a",container_name="trainer",{EXPORTER}',
     Tenant("team-a", "bert-0", "trainer")),
    # A namespace alone (a target label of a static config) names no pod: unassigned.
    ('namespace="gpu-operator"', Tenant()),
])
def test_every_shipped_tenant_label_spelling(labels: str, tenant: Tenant) -> None:
    (s,) = parse(text(gpu_rows(), with_labels(gi_rows(), labels)))
    assert instances(s) == [(13, "1g.5gb", 1, tenant)]


def test_old_label_names_left_empty_on_an_unassigned_gi() -> None:
    # dcgm-exporter 3.x with old names, as quoted in NVIDIA/dcgm-exporter#272: lower-case metric
    # names, a `uuid` label and empty pod labels on a GI no pod holds.
    rows = [_lower_names(ln).replace(',gpu_i_id="13",', ',gpu_i_id="13",container_name="",pod_name="",pod_namespace="",')
            for ln in gi_rows()]
    (s,) = parse(text(rows))
    assert instances(s) == [(13, "1g.5gb", 1, Tenant())] and s.instances[0].metrics == GI_METRICS


def test_lower_case_hostname_uuid_and_gi_labels() -> None:
    body = REFERENCE.replace("Hostname=", "hostname=").replace("UUID=", "uuid=").replace(
        "GPU_I_PROFILE=", "gpu_i_profile=").replace("GPU_I_ID=", "gpu_i_id=")
    (s,) = parse(body)
    assert (s.gpu_uuid, s.host, instances(s)) == (UUID, "ub20-a100-k8s", [(13, "1g.5gb", 1, Tenant())])


# --- the scrape target's own pod is not a tenant ------------------------------------------------

def test_exporter_pod_regex_turns_the_exporters_own_pod_into_unassigned() -> None:
    # A GI with no workload carries only the exporter pod's labels (honor_labels: true, or a
    # relabelling that copies target labels): without help it would be billed to the exporter.
    body = text(gpu_rows(), with_labels(gi_rows(), EXPORTER))
    (naive,) = parse(body)
    assert naive.instances[0].tenant.pod == "nvidia-dcgm-exporter-7xk2p"
    (s,) = parse(body, targets=TargetFilter(exporter_pod=re.compile(r"nvidia-dcgm-exporter-.*")))
    assert instances(s) == [(13, "1g.5gb", 1, Tenant())]


def test_target_labels_from_up_tell_the_exporter_from_a_workload() -> None:
    target = {"job": "gpu-metrics", "instance": "10.0.0.7:9400", "namespace": "gpu-operator",
              "pod": "nvidia-dcgm-exporter-7xk2p", "container": "nvidia-dcgm-exporter"}
    filt = TargetFilter(targets={("gpu-metrics", "10.0.0.7:9400"): [target]})
    scrape = 'job="gpu-metrics",instance="10.0.0.7:9400"'
    # GI 13 assigned (honor_labels: true, so its pod labels won), GI 5 unassigned (the target's).
    gi5 = [ln.replace('GPU_I_ID="13"', 'GPU_I_ID="5"').replace('"1g.5gb"', '"2g.10gb"') for ln in gi_rows()]
    body = text(gpu_rows(), with_labels(gi_rows(), f'{scrape},namespace="gpu-operator",pod="bert-0",container="t"'),
                with_labels(gi5, f"{scrape},{EXPORTER}"))
    (s,) = parse(body, targets=filt)
    # Same namespace as the exporter but another pod: still the workload's.
    assert instances(s) == [(5, "2g.10gb", 2, Tenant()), (13, "1g.5gb", 1, Tenant("gpu-operator", "bert-0", "t"))]
    # Another target (job/instance) with the same pod name is not this exporter.
    other = with_labels(gi5, f'job="gpu-metrics",instance="10.0.0.8:9400",{EXPORTER}')
    (s,) = parse(text(gpu_rows(), other), targets=filt)
    assert s.instances[0].tenant.pod == "nvidia-dcgm-exporter-7xk2p"


# --- several pods on one GI ---------------------------------------------------------------------

def test_pods_sharing_one_gi_each_get_an_equal_share() -> None:
    # dcgm-exporter --kubernetes-virtual-gpus: one copy of every GI series per pod, with a vgpu label.
    stats = ReadStats()
    pods = [("team-b", "etl-3", "worker", 0), ("team-a", "bert-0", "trainer", 1), ("team-a", "nb-1", "jupyter", 2)]
    rows = [with_labels(gi_rows(), f'pod="{p}",namespace="{ns}",container="{c}",vgpu="{v}"') for ns, p, c, v in pods]
    (s,) = parse(text(gpu_rows(), *rows), stats)
    (inst,) = s.instances
    # Sorted by (namespace, pod): the primary tenant does not depend on the exporter's order.
    expect = (Tenant("team-a", "bert-0", "trainer"), Tenant("team-a", "nb-1", "jupyter"),
              Tenant("team-b", "etl-3", "worker"))
    assert inst.tenant == expect[0]
    assert inst.tenants == tuple(TenantShare(t, 1 / 3) for t in expect)
    assert inst.shares() == tuple((t, 1 / 3) for t in expect)
    assert inst.metrics == GI_METRICS  # the copies carry the GI's one value
    assert stats.skipped == {}  # copies for other pods are not duplicates


def test_time_sliced_whole_gpu_is_shared_too() -> None:
    body = text(with_labels(gpu_rows(), 'pod="a-0",namespace="ns",container="c"'),
                with_labels(gpu_rows(), 'pod="b-0",namespace="ns",container="c"'))
    (s,) = parse(body)
    assert not s.mig_enabled
    (pseudo,) = s.instances
    assert (pseudo.gi_id, pseudo.slices, pseudo.tenant.pod) == (FULL_GPU_GI_ID, 7, "a-0")
    assert [(t.tenant.pod, t.share) for t in pseudo.tenants] == [("a-0", 0.5), ("b-0", 0.5)]
    assert pseudo.metrics.gr_engine_active == 0.995630  # the GPU-level row


def _gpu_util_row(value: str, extra: str) -> str:
    """A GPU-level DCGM_FI_DEV_GPU_UTIL row (percent) in the reference's label style, for one pod."""
    xid = next(ln for ln in gpu_rows() if ln.startswith("DCGM_FI_DEV_XID_ERRORS"))
    (row,) = with_labels([xid.replace("DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_GPU_UTIL")], extra)
    return row.rsplit(" ", 1)[0] + f" {value}"


@pytest.mark.parametrize("utils,shares", [
    (("30", "10"), (0.75, 0.25)),  # per-process utilization (dcgm-exporter 4.x): 30/40 and 10/40
    (("64", "64"), (0.5, 0.5)),    # older exporters copy the device's value to every pod: even
    (("0", "25"), (0.0, 1.0)),     # an idle pod stays listed, billed nothing this round
    (("0", "0"), (0.5, 0.5)),      # nobody busy: even
])
def test_per_pod_utilization_splits_a_time_sliced_gpu(utils: tuple[str, str], shares: tuple[float, float]) -> None:
    pods = ('pod="a-0",namespace="ns",container="c",vgpu="0"', 'pod="b-0",namespace="ns",container="c",vgpu="1"')
    rows = [with_labels(gpu_rows(), p) for p in pods]
    body = text(*rows, *(_gpu_util_row(u, p) for u, p in zip(utils, pods)))
    stats = ReadStats()
    (s,) = parse(body, stats)
    (pseudo,) = s.instances
    assert [(t.tenant.pod, t.share) for t in pseudo.tenants] == [("a-0", shares[0]), ("b-0", shares[1])]
    assert pseudo.metrics.gr_engine_active == 0.995630  # utilization of the GPU is still the device's
    assert stats.skipped == {}


def test_per_pod_utilization_missing_for_one_pod_splits_evenly() -> None:
    pods = ('pod="a-0",namespace="ns",container="c"', 'pod="b-0",namespace="ns",container="c"')
    body = text(*(with_labels(gpu_rows(), p) for p in pods), _gpu_util_row("30", pods[0]))
    (s,) = parse(body)
    assert [t.share for t in s.instances[0].tenants] == [0.5, 0.5]


def test_one_pod_and_unassigned_copies_bill_the_pod_alone() -> None:
    body = text(gpu_rows(), gi_rows(), with_labels(gi_rows(), 'pod="bert-0",namespace="team-a",container="t"'))
    (s,) = parse(body)
    assert (s.instances[0].tenant, s.instances[0].tenants) == (Tenant("team-a", "bert-0", "t"), ())


# --- glitches are not layout changes ------------------------------------------------------------

def _events(snaps: list[Snapshot]) -> list[tuple[str, int | None]]:
    """Layout events the processor derives from these consecutive snapshots of one GPU."""
    fold = BatchFold(states={}, stored_offsets={}, clock=lambda: (TS + timedelta(days=1)).timestamp())
    for offset, snap in enumerate(snaps):
        fold.add("t", 0, offset, snap.key, snap.to_json(), snap)
    return [(e.event, e.gi_id) for e in fold.finish().events]


def test_garbled_profile_keeps_the_last_known_slices(caplog: pytest.LogCaptureFixture) -> None:
    memory, stats = LayoutMemory(), ReadStats()
    first = parse(REFERENCE, stats, memory)
    garbled = REFERENCE.replace('GPU_I_PROFILE="1g.5gb"', 'GPU_I_PROFILE="<<<NULL>>>"').replace(
        "0.995687", "0.5")
    with caplog.at_level(logging.WARNING):
        second = parse(garbled, stats, memory, ts=TS + timedelta(seconds=15))
    (s,) = second
    # The GI keeps its last known profile and slices; the round's values are its own.
    assert instances(s) == [(13, "1g.5gb", 1, Tenant())]
    assert s.instances[0].metrics.gr_engine_active == 0.5
    assert stats.skipped == {"garbled_profile": 1}
    assert caplog.records == []  # repaired, counted, not worth a warning every round
    assert _events(first + second) == []  # no destroyed/created


def test_garbled_profile_never_known_is_counted_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    memory, stats = LayoutMemory(), ReadStats()
    garbled = REFERENCE.replace('GPU_I_PROFILE="1g.5gb"', 'GPU_I_PROFILE="ERROR - FAILED TO CONVERT TO STRING"')
    with caplog.at_level(logging.WARNING):
        for k in range(2):
            (s,) = parse(garbled, stats, memory, ts=TS + timedelta(seconds=15 * k))
            assert s.mig_enabled and s.instances == ()  # MIG GPU, the unreadable GI not metered
    assert stats.skipped == {"unknown_profile": 2}
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "GI 13" in said[0] and "unknown_profile" in said[0]
    # Readable later: from then on it is known.
    (s,) = parse(REFERENCE, stats, memory, ts=TS + timedelta(seconds=30))
    assert instances(s) == [(13, "1g.5gb", 1, Tenant())]


def test_a_later_row_of_the_gi_can_carry_the_readable_profile() -> None:
    rows = gi_rows()
    body = text(gpu_rows(), rows[0].replace('"1g.5gb"', '"<<<NULL>>>"'), rows[1:])
    stats = ReadStats()
    (s,) = parse(body, stats)
    assert instances(s) == [(13, "1g.5gb", 1, Tenant())] and stats.skipped == {}


def test_mig_gpu_losing_its_gi_rows_for_a_round_stays_mig(caplog: pytest.LogCaptureFixture) -> None:
    memory, stats = LayoutMemory(), ReadStats()
    rounds = [REFERENCE, text(gpu_rows()), text(gpu_rows()), REFERENCE]
    snaps = []
    with caplog.at_level(logging.WARNING):
        for k, body in enumerate(rounds):
            snaps += parse(body, stats, memory, ts=TS + timedelta(seconds=15 * k))
    assert [(s.mig_enabled, [i.gi_id for i in s.instances]) for s in snaps] == [
        (True, [13]), (True, []), (True, []), (True, [13])]
    assert stats.skipped == {"mig_rows_missing": 2}
    assert len(caplog.records) == 1 and "stays in MIG mode" in caplog.records[0].getMessage()
    # GI 13 missing for two rounds is destroyed and created (the GPU really showed no GI), but
    # the GPU never left MIG mode: no mig_disabled/mig_enabled, no pseudo-instance.
    assert _events(snaps) == [("destroyed", 13), ("created", 13)]


def test_missing_gi_rows_are_said_again_after_they_came_back(caplog: pytest.LogCaptureFixture) -> None:
    memory = LayoutMemory()
    with caplog.at_level(logging.WARNING):
        for k, body in enumerate([REFERENCE, text(gpu_rows()), REFERENCE, text(gpu_rows()), text(gpu_rows())]):
            parse(body, memory=memory, ts=TS + timedelta(seconds=15 * k))
    assert len([r for r in caplog.records if "stays in MIG mode" in r.getMessage()]) == 2  # two episodes


def test_mig_mode_field_zero_says_mig_is_off() -> None:
    memory = LayoutMemory()
    parse(REFERENCE, memory=memory)
    mig_off = next(ln for ln in gpu_rows() if ln.startswith("DCGM_FI_DEV_XID_ERRORS")).replace(
        "DCGM_FI_DEV_XID_ERRORS", "dcgm_fi_dev_mig_mode")  # a lower-cased pipeline, too
    (s,) = parse(text(gpu_rows(), mig_off), memory=memory, ts=TS + timedelta(seconds=15))
    assert not s.mig_enabled
    assert [(i.gi_id, i.slices, i.metrics.gr_engine_active) for i in s.instances] == [(FULL_GPU_GI_ID, 7, 0.995630)]


def test_a_gpu_never_seen_in_mig_mode_without_gi_rows_is_not_mig() -> None:
    (s,) = parse(text(gpu_rows()), memory=LayoutMemory())
    assert not s.mig_enabled and s.instances[0].gi_id == FULL_GPU_GI_ID


# --- one GPU behind two URLs ----------------------------------------------------------------------

class _Clock:
    """Each call a millisecond later, remembering which fetch thread got which time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0
        self.by_thread: dict[int, datetime] = {}

    def __call__(self) -> datetime:
        with self._lock:
            self._n += 1
            ts = TS + timedelta(milliseconds=self._n)
            self.by_thread[threading.get_ident()] = ts
            return ts


def test_one_gpu_behind_two_urls_is_published_once_freshest(caplog: pytest.LogCaptureFixture) -> None:
    node, service = "http://gpu-node-1:9400/metrics", "http://dcgm-exporter.gpu-operator:9400/metrics"
    # The node URL also shows a second GPU; the service URL shows GPU 0 with another reading.
    bodies = {node: text(REFERENCE.replace("0.995687", "0.25"), [ln.replace(UUID, OTHER_UUID) for ln in gpu_rows()]),
              service: REFERENCE.replace("0.995687", "0.75")}
    clock = _Clock()
    url_ts: dict[str, datetime] = {}  # the scrape time of each URL's last fetch

    def get(url: str, timeout_s: float, max_bytes: int) -> bytes:
        url_ts[url] = clock.by_thread[threading.get_ident()]  # the source reads its clock just before
        return bodies[url].encode()

    registry = CollectorRegistry()
    metrics = CollectorMetrics(registry)
    src = DcgmSource([node, service], cluster="c", interval_s=15, http_get=get, clock=clock)
    publisher = InMemoryPublisher()
    with caplog.at_level(logging.WARNING):
        summary = run_loop(src, publisher, interval_s=15, speed=0, max_rounds=2, metrics=metrics)
    sent = publisher.snapshots
    assert summary.snapshots_read == 4  # 2 rounds x 2 GPUs
    assert sorted(s.gpu_uuid for s in sent) == sorted([UUID, OTHER_UUID] * 2)
    # GPU 0 once per round, from whichever URL was read later (its ts is the later clock reading).
    freshest = max(url_ts, key=lambda u: url_ts[u])
    expect_gr = 0.25 if freshest == node else 0.75
    last_gpu0 = [s for s in sent if s.gpu_uuid == UUID][-1]
    assert (last_gpu0.ts, last_gpu0.instances[0].metrics.gr_engine_active) == (url_ts[freshest], expect_gr)
    assert src.stats.skipped == {"duplicate_gpu": 2}
    assert registry.get_sample_value("migmeter_collector_skipped_values_total",
                                     {"source": "dcgm", "reason": "duplicate_gpu"}) == 2.0
    said = [r.getMessage() for r in caplog.records if "serve the same GPU" in r.getMessage()]
    assert len(said) == 1 and node in said[0] and service in said[0]
