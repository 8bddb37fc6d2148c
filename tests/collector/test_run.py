"""The poll loop: fixed schedule, bad input skipped and counted, clean stop."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

import pytest

from collector.metrics import CollectorMetrics
from collector.publish import InMemoryPublisher
from collector.run import next_deadline, run_loop
from collector.snapshot import Snapshot
from collector.sources.base import ReadStats
from migmeter.errors import SourceUnavailable
from tests.processor.build import T0, TWO_GIS, inst, mig, series

Step = list[Snapshot] | BaseException | Callable[[], list[Snapshot]]


class _ScriptedSource:
    """A source that plays a script: each read returns the next list or raises the next error."""

    name = "scripted"

    def __init__(self, script: list[Step], *, finite: bool = False) -> None:
        self.script = list(script)
        self.stats = ReadStats()
        self.finite = finite
        self.reads = 0
        self.closed = False

    @property
    def exhausted(self) -> bool:
        return self.finite and self.reads >= len(self.script)

    def read(self) -> list[Snapshot]:
        step = self.script[self.reads % len(self.script)]
        self.reads += 1
        if isinstance(step, BaseException):
            raise step
        if callable(step):
            return step()
        return step

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("previous", "step", "now", "expected"),
    [
        (100.0, 15.0, 101.0, (115.0, 0)),  # normal: previous + step, not now + step
        (100.0, 15.0, 115.0, (115.0, 0)),  # exactly on time
        (100.0, 15.0, 116.0, (130.0, 1)),  # overran one deadline: skip it
        (100.0, 15.0, 150.0, (160.0, 3)),  # overran three
        (100.0, 0.0, 150.0, (150.0, 0)),  # no pacing
    ],
)
def test_next_deadline_keeps_the_grid(previous: float, step: float, now: float, expected: tuple[float, int]) -> None:
    assert next_deadline(previous, step, now) == expected


def test_bad_input_and_source_errors_are_counted_never_fatal() -> None:
    good = series(["GPU-a", "GPU-b"], 2)
    broken = dataclasses.replace(mig(T0, TWO_GIS, gpu="GPU-x"), total_slices=9)  # breaks the contract
    source = _ScriptedSource([
        good[:2],
        SourceUnavailable("endpoint down"),
        ValueError("a bug in a source"),
        [broken, *good[2:]],
    ])
    source.stats.skip("bad_value", 3)
    pub = InMemoryPublisher()
    metrics = CollectorMetrics()
    summary = run_loop(source, pub, interval_s=15.0, speed=0, max_rounds=4, metrics=metrics)
    assert pub.snapshots == good
    assert (summary.rounds, summary.snapshots_read, summary.invalid, summary.scrape_errors) == (4, 5, 1, 2)
    assert pub.flushes >= 4  # every round flushes, even one that read nothing
    assert pub.closed and source.closed
    get = metrics.registry.get_sample_value
    assert get("migmeter_collector_scrape_errors_total", {"source": "scripted"}) == 2
    assert get("migmeter_collector_snapshots_invalid_total") == 1
    assert get("migmeter_collector_snapshots_published_total") == 4
    assert get("migmeter_collector_skipped_values_total", {"source": "scripted", "reason": "bad_value"}) == 3
    assert get("migmeter_collector_rounds_total") == 4


def test_a_finite_source_ends_the_loop_when_exhausted() -> None:
    source = _ScriptedSource([series(["GPU-a"], 1), series(["GPU-b"], 1)], finite=True)
    summary = run_loop(source, InMemoryPublisher(), interval_s=15.0, speed=0)
    assert summary.rounds == 2
    assert summary.stopped_by == "source exhausted"


def test_stop_during_a_round_finishes_it_then_closes() -> None:
    stop = threading.Event()
    snaps = series(["GPU-a", "GPU-b"], 1)

    def read_then_stop() -> list[Snapshot]:
        stop.set()  # as SIGTERM would, mid-round
        return snaps

    source = _ScriptedSource([read_then_stop])
    pub = InMemoryPublisher()
    summary = run_loop(source, pub, interval_s=3600.0, stop=stop)
    assert pub.snapshots == snaps
    assert pub.closed
    assert summary.stopped_by == "stop requested"


def test_layout_weights_follow_the_snapshots() -> None:
    metrics = CollectorMetrics()
    source = _ScriptedSource([[mig(T0, TWO_GIS, gpu="GPU-a")], [mig(T0, [inst(0, "7g.80gb", 0.5)], gpu="GPU-a")]])
    run_loop(source, InMemoryPublisher(), interval_s=15.0, speed=0, max_rounds=2, metrics=metrics)
    ids = [s.labels["GPU_I_ID"] for f in metrics.registry.collect() for s in f.samples
           if s.name == "migmeter_instance_slices"]
    assert ids == ["0"]


def test_consecutive_failures_end_a_bounded_run_and_a_success_resets_the_count() -> None:
    good = series(["GPU-a"], 1)
    down = SourceUnavailable("server down")
    source = _ScriptedSource([down, down, good, down, down, down, good])
    summary = run_loop(source, InMemoryPublisher(), interval_s=0.001, max_consecutive_errors=3)
    assert summary.gave_up
    assert summary.rounds == 6  # the success in round 3 reset the count
    assert summary.snapshots_read == 1


def test_without_a_limit_failures_never_end_the_loop() -> None:
    source = _ScriptedSource([SourceUnavailable("down")])
    summary = run_loop(source, InMemoryPublisher(), interval_s=0.001, max_rounds=20)
    assert (summary.rounds, summary.scrape_errors, summary.gave_up) == (20, 20, False)
