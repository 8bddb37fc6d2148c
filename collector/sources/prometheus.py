"""Backfill from a Prometheus server that already scrapes dcgm-exporter (HTTP API ``query_range``).

A site that has run dcgm-exporter behind Prometheus for months can meter that history
without re-collecting it: each :meth:`PrometheusSource.read` fetches the next time chunk of
the DCGM fields migmeter reads and turns each evaluation step into one snapshot per GPU,
with exactly the label/instance logic of the live scrape
(:func:`collector.sources.dcgm.snapshots_from_samples`).

Prometheus semantics worth knowing: each step is an instant-vector evaluation, so a value
is the latest sample at or before that step (within the 5-minute lookback); a step smaller
than the scrape interval repeats samples, each standing for ``step_s`` seconds.

Target labels: a scrape config that attaches target labels (kube-prometheus ServiceMonitor/
PodMonitor) gives every DCGM series the exporter pod's ``namespace``/``pod``/``container``;
the workload's own labels arrive as ``exported_*`` (``honor_labels: false``) or replace them
(``true``), and an instance without a workload keeps only the exporter's. Each chunk
therefore also reads the ``up`` series of the targets that exported DCGM series: ``up``
carries exactly a target's labels, and a pod label equal to its target's is the exporter's,
never a tenant (:class:`collector.sources.labels.TargetFilter`). No configuration is needed;
``exporter_pod`` (a regex) covers sites whose relabelling makes ``up`` differ.
"""

from __future__ import annotations

import json
import logging
import math
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from collector.snapshot import MAX_INTERVAL_S, Snapshot
from collector.sources.base import ReadStats
from collector.sources.dcgm import (
    METRIC_FIELDS,
    MIG_MODE_METRIC,
    POD_UTIL_METRIC,
    BodyTooLarge,
    HttpGet,
    LabelledSample,
    LayoutMemory,
    fetch_bounded,
    snapshots_from_samples,
)
from collector.sources.labels import TargetFilter
from migmeter.errors import ConfigError, SourceUnavailable
from migmeter.settings import redact_url

__all__ = ["PrometheusSource", "DCGM_SELECTOR", "targets_query", "MAX_POINTS_PER_SERIES", "MAX_RESPONSE_BYTES"]

log = logging.getLogger(__name__)

# Every field the dcgm logic reads, in one selector: one request per chunk instead of seven.
# Case-insensitive ((?i), RE2 syntax): some remote-write pipelines lower-case metric names.
DCGM_SELECTOR = '{__name__=~"(?i)%s"}' % "|".join(sorted([*METRIC_FIELDS, MIG_MODE_METRIC, POD_UTIL_METRIC]))
# Prometheus refuses a query_range over 11,000 points per series; stay under it.
MAX_POINTS_PER_SERIES = 10_000
# A chunk's JSON is held in memory; past this the chunk is halved and asked again, so a
# large fleet costs more requests instead of an out-of-memory collector.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024


def targets_query(jobs: Iterable[str]) -> str:
    """The ``up`` series of these scrape jobs: they carry exactly each target's labels. Selecting
    by job keeps the query as cheap as the targets (the DCGM series are not read twice)."""
    alternatives = "|".join(re.escape(job) for job in sorted(jobs))
    # A PromQL string literal: backslashes and quotes escaped (Go string syntax).
    literal = alternatives.replace("\\", "\\\\").replace('"', '\\"')
    return f'up{{job=~"{literal}"}}'


def _epoch(ts: datetime) -> float:
    if ts.tzinfo is None:
        raise ConfigError("backfill start/end must be timezone-aware (UTC)")
    return ts.timestamp()


class PrometheusSource:
    """Reads [start, end] at ``step_s`` from Prometheus, one chunk per :meth:`read`, in time order."""

    name = "prometheus"

    def __init__(
        self,
        url: str,
        *,
        start: datetime,
        end: datetime,
        step_s: float,
        cluster: str,
        total_slices_overrides: Mapping[str, int] | None = None,
        chunk_s: float = 6 * 3600,
        timeout_s: float = 30.0,
        http_get: HttpGet | None = None,
        exporter_pod: re.Pattern[str] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"Prometheus URL {redact_url(url)!r} must be http(s)://...")
        if not (0 < step_s <= MAX_INTERVAL_S):
            raise ConfigError(f"step must be in (0, {MAX_INTERVAL_S:.0f}] seconds, got {step_s}")
        if chunk_s <= 0:
            raise ConfigError(f"chunk must be positive, got {chunk_s}")
        start_s, end_s = _epoch(start), _epoch(end)
        if end_s < start_s:
            raise ConfigError("backfill end is before its start")
        self.url = url.rstrip("/")
        self.step_s = float(step_s)
        self.cluster = cluster
        self.total_slices_overrides = total_slices_overrides
        self.timeout_s = timeout_s
        self.stats = ReadStats()
        # Steps are read in time order, so what earlier steps showed carries over a glitch.
        self.memory = LayoutMemory()
        self.exporter_pod = exporter_pod
        self._get: HttpGet = http_get or fetch_bounded
        self._start_s = start_s
        # Evaluation steps are start + k*step, k = 0..n-1 (query_range includes both ends).
        self._n_steps = int(math.floor((end_s - start_s) / self.step_s + 1e-9)) + 1
        self._per_chunk = max(1, min(MAX_POINTS_PER_SERIES, int(chunk_s // self.step_s)))
        self._next = 0  # index of the first step not yet returned

    @property
    def exhausted(self) -> bool:
        """True once every step up to ``end`` has been returned."""
        return self._next >= self._n_steps

    def _query(self, first: int, last: int, query: str = DCGM_SELECTOR) -> bytes:
        params = {
            "query": query,
            "start": f"{self._start_s + first * self.step_s:.3f}",
            "end": f"{self._start_s + last * self.step_s:.3f}",
            "step": f"{self.step_s:g}",
        }
        return self._get(f"{self.url}/api/v1/query_range?{urllib.parse.urlencode(params)}",
                         self.timeout_s, MAX_RESPONSE_BYTES)

    def _fetch_chunk(self) -> tuple[int, bytes]:
        """Body of the next chunk and its last step; halves the chunk while the body is too large."""
        while True:
            last = min(self._next + self._per_chunk, self._n_steps) - 1
            try:
                return last, self._query(self._next, last)
            except BodyTooLarge:
                if self._per_chunk == 1:
                    raise SourceUnavailable(
                        f"Prometheus at {redact_url(self.url)}: one step is over {MAX_RESPONSE_BYTES} bytes"
                    ) from None
                self._per_chunk = max(1, self._per_chunk // 2)
                self.stats.skip("chunk_halved")
                log.info("Prometheus response too large; chunk now %d steps", self._per_chunk)
            except (OSError, ValueError) as exc:
                raise SourceUnavailable(f"Prometheus at {redact_url(self.url)} failed: {exc}") from None

    def read(self) -> list[Snapshot]:
        """Snapshots of the next chunk, ordered by time then GPU; ``[]`` once exhausted.

        A failed request raises SourceUnavailable and does not advance, so calling again
        retries the same chunk: a backfill never silently leaves a gap.
        """
        if self.exhausted:
            return []
        last, body = self._fetch_chunk()
        by_ts, jobs = self._samples_by_ts(body)
        targets = self._targets(last, jobs)
        out: list[Snapshot] = []
        for ms in sorted(by_ts):
            out.extend(snapshots_from_samples(
                by_ts[ms], ts=datetime.fromtimestamp(ms / 1000, tz=timezone.utc), interval_s=self.step_s,
                source=self.name, cluster=self.cluster, total_slices_overrides=self.total_slices_overrides,
                stats=self.stats, memory=self.memory, targets=targets,
            ))
        self._next = last + 1
        return out

    def _targets(self, last: int, jobs: set[str]) -> TargetFilter:
        """The target labels of the chunk's exporters, from their ``up`` series (any step of the
        chunk: an exporter pod replaced mid-chunk is a new target with its own labels). Series
        without a ``job`` label (remote write, imported blocks) have no target to ask about."""
        if not jobs:
            return TargetFilter(exporter_pod=self.exporter_pod)
        try:
            body = self._query(self._next, last, targets_query(jobs))
        except (OSError, ValueError, BodyTooLarge) as exc:
            raise SourceUnavailable(f"Prometheus at {redact_url(self.url)} failed (up query): {exc}") from None
        targets: dict[tuple[str, str], list[dict[str, str]]] = {}
        for series in self._matrix(body):
            labels = {str(k).lower(): str(v) for k, v in (series.get("metric") or {}).items() if k != "__name__"}
            targets.setdefault((labels.get("job", ""), labels.get("instance", "")), []).append(labels)
        return TargetFilter(targets=targets, exporter_pod=self.exporter_pod)

    def _matrix(self, body: bytes) -> list[dict[str, Any]]:
        """The series of a ``query_range`` answer; anything else is SourceUnavailable."""
        try:
            doc = json.loads(body)
        except ValueError:
            raise SourceUnavailable(f"Prometheus at {redact_url(self.url)} did not answer JSON") from None
        if not isinstance(doc, dict) or doc.get("status") != "success":
            raise SourceUnavailable(f"Prometheus at {redact_url(self.url)} answered: {str(doc)[:200]}")
        data = doc.get("data") or {}
        if data.get("resultType") != "matrix":
            raise SourceUnavailable(f"Prometheus answered resultType {data.get('resultType')!r}, not matrix")
        return [s for s in data.get("result") or [] if isinstance(s, dict)]

    def _samples_by_ts(self, body: bytes) -> tuple[dict[int, list[LabelledSample]], set[str]]:
        """Samples grouped by evaluation step (ms), and the scrape jobs they came from."""
        by_ts: dict[int, list[LabelledSample]] = {}
        jobs: set[str] = set()
        for series in self._matrix(body):
            labels: dict[str, str] = series.get("metric") or {}
            name = labels.get("__name__", "")
            if labels.get("job"):
                jobs.add(labels["job"])
            for point in series.get("values") or []:
                try:
                    ms = round(float(point[0]) * 1000)
                    value = float(point[1])  # "NaN" and "+Inf" parse; the dcgm logic rejects them
                except (TypeError, ValueError, IndexError):
                    self.stats.skip("bad_value")
                    continue
                by_ts.setdefault(ms, []).append((name, labels, value))
        return by_ts, jobs

    def close(self) -> None:
        """Nothing to release: each request opens and closes its own connection."""

