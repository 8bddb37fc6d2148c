"""The poll loop: read a source on a fixed schedule, publish every snapshot, keep counting.

Schedule without drift: the next deadline is the previous deadline plus ``interval / speed``,
never "now + interval", so a round that takes 2 s of a 15 s interval does not push every
later round 2 s later. A round that overruns whole intervals skips the missed deadlines
(counted) instead of firing a burst of catch-up reads.

Nothing a source returns or raises stops the loop: a snapshot that breaks the wire contract
is skipped and counted, ``SourceUnavailable`` is logged and counted, and an unexpected
exception from a source is logged with its traceback and counted the same way. The loop
ends on ``stop`` (set by SIGTERM/SIGINT in the CLI), after ``max_rounds`` rounds, or when a
finite source (``exhausted`` is True, e.g. a Prometheus backfill) has nothing more; then the
publisher is flushed and closed, so every snapshot read is delivered, spooled, or counted
as dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.metrics import CollectorMetrics
from collector.publish import DEFAULT_FLUSH_TIMEOUT_S, Publisher, PublishStats
from collector.sources.base import Source
from migmeter.errors import BadSnapshot, SourceUnavailable

__all__ = ["DEFAULT_LOG_EVERY_S", "RunSummary", "run_loop", "next_deadline"]

log = logging.getLogger("migmeter.collector.run")

# A progress line per minute: enough to see a collector is alive in `journalctl`, few enough
# not to drown a node's log.
DEFAULT_LOG_EVERY_S = 60.0
# Log at most this many SourceUnavailable messages in a row at WARNING; after that, one per
# progress line, so a source down for a day does not write 5,760 warnings.
_LOUD_ERRORS = 3
# An unpaced loop (speed 0: a backfill) must not retry a failing source in a tight loop:
# wait 1 s after the first failure, doubling up to a minute.
_ERROR_BACKOFF_MIN_S = 1.0
_ERROR_BACKOFF_MAX_S = 60.0


@dataclass
class RunSummary:
    """What a run did; the CLI logs it and picks the exit code from it."""

    rounds: int = 0
    snapshots_read: int = 0
    invalid: int = 0
    scrape_errors: int = 0
    missed_deadlines: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    publish: PublishStats = field(default_factory=PublishStats)
    stopped_by: str = ""
    gave_up: bool = False  # ended by max_consecutive_errors: the run failed

    def line(self) -> str:
        p = self.publish
        return (
            f"rounds={self.rounds} read={self.snapshots_read} delivered={p.delivered} spooled={p.spooled} "
            f"resent={p.resent} dropped={p.dropped} spool_depth={p.spool_depth} invalid={self.invalid} "
            f"scrape_errors={self.scrape_errors} skipped={sum(self.skipped.values())} "
            f"missed_deadlines={self.missed_deadlines}"
        )


def next_deadline(previous: float, step: float, now: float) -> tuple[float, int]:
    """The first deadline after ``previous`` on the fixed grid that is not in the past, and how
    many grid points were skipped to get there (a round that overran). Step 0 = no pacing."""
    if step <= 0:
        return now, 0
    deadline = previous + step
    if deadline >= now:
        return deadline, 0
    missed = int((now - deadline) // step) + 1
    return deadline + missed * step, missed


def run_loop(
    source: Source,
    publisher: Publisher,
    *,
    interval_s: float,
    speed: float = 1.0,
    max_rounds: int | None = None,
    metrics: CollectorMetrics | None = None,
    stop: threading.Event | None = None,
    flush_timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S,
    log_every_s: float = DEFAULT_LOG_EVERY_S,
    max_consecutive_errors: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    close: bool = True,
) -> RunSummary:
    """Poll ``source`` until stopped; returns the summary.

    ``speed`` > 1 shortens the wait between rounds (a simulated fleet replayed faster);
    ``speed`` 0 does not wait at all, except after a failed read (exponential back-off).
    ``max_consecutive_errors`` ends the run after that many failed reads in a row (a
    one-shot backfill should fail, not retry forever; a daemon leaves it None).
    """
    stop = stop or threading.Event()
    summary = RunSummary()
    step = 0.0 if speed <= 0 else interval_s / speed
    loud_left = _LOUD_ERRORS
    consecutive_errors = 0
    next_log = clock() + log_every_s
    deadline = clock()
    try:
        while not stop.is_set():
            summary.rounds += 1
            errors_before = summary.scrape_errors
            loud_left = _one_round(source, publisher, summary, metrics, loud_left)
            failed = summary.scrape_errors > errors_before
            consecutive_errors = consecutive_errors + 1 if failed else 0
            # Every round, even one that read nothing: this is also what drains the spool.
            publisher.flush(flush_timeout_s)
            summary.publish = publisher.stats
            summary.skipped = dict(source.stats.skipped)
            if metrics is not None:
                metrics.rounds.inc()
                metrics.sync(source.name, source.stats.skipped, publisher.stats)
                metrics.last_round.set_to_current_time()
            if max_consecutive_errors is not None and consecutive_errors >= max_consecutive_errors:
                summary.stopped_by = f"source failed {consecutive_errors} times in a row"
                summary.gave_up = True
                break
            if max_rounds is not None and summary.rounds >= max_rounds:
                summary.stopped_by = f"{max_rounds} round(s) done"
                break
            if source.exhausted:
                summary.stopped_by = "source exhausted"
                break
            now = clock()
            if now >= next_log:
                log.info("progress: %s", summary.line())
                next_log = now + log_every_s
                loud_left = max(loud_left, 1)
            deadline, missed = next_deadline(deadline, step, now)
            if missed:
                summary.missed_deadlines += missed
                log.warning("round %d overran: skipped %d scheduled round(s)", summary.rounds, missed)
            wait = deadline - clock()
            if failed and step <= 0:
                wait = min(_ERROR_BACKOFF_MIN_S * 2 ** (consecutive_errors - 1), _ERROR_BACKOFF_MAX_S)
            if stop.wait(max(wait, 0.0)):
                break
        if stop.is_set() and not summary.stopped_by:
            summary.stopped_by = "stop requested"
    finally:
        if close:
            try:
                publisher.close()
            finally:
                source.close()
        summary.publish = publisher.stats
        summary.skipped = dict(source.stats.skipped)
        if metrics is not None:
            metrics.sync(source.name, source.stats.skipped, publisher.stats)
    log.info("collector stopped (%s): %s", summary.stopped_by or "error", summary.line())
    return summary


def _one_round(
    source: Source,
    publisher: Publisher,
    summary: RunSummary,
    metrics: CollectorMetrics | None,
    loud_left: int,
) -> int:
    """Read once and publish; returns how many more source errors may be logged loudly."""
    try:
        snapshots = source.read()
    except SourceUnavailable as exc:
        return _source_error(source, summary, metrics, loud_left, str(exc), traceback=False)
    except Exception as exc:  # a source bug must not stop metering of every other GPU
        return _source_error(source, summary, metrics, loud_left, f"{exc.__class__.__name__}: {exc}", traceback=True)
    for snap in snapshots:
        summary.snapshots_read += 1
        if metrics is not None:
            metrics.snapshots_read.inc()
        try:
            snap.validate()
        except BadSnapshot as exc:
            summary.invalid += 1
            if metrics is not None:
                metrics.snapshots_invalid.inc()
            log.warning("skipping a snapshot of GPU %s from %s: %s", snap.gpu_uuid[:64], source.name, exc.reason)
            continue
        publisher.send(snap)
        if metrics is not None:
            metrics.observe_layout(snap)
    return _LOUD_ERRORS


def _source_error(
    source: Source,
    summary: RunSummary,
    metrics: CollectorMetrics | None,
    loud_left: int,
    message: str,
    *,
    traceback: bool,
) -> int:
    summary.scrape_errors += 1
    if metrics is not None:
        metrics.scrape_errors.labels(source.name).inc()
    if loud_left > 0:
        log.warning("source %s read nothing this round: %s", source.name, message, exc_info=traceback)
    else:
        log.debug("source %s read nothing this round: %s", source.name, message)
    return loud_left - 1
