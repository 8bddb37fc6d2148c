"""/healthz and /readyz of the processor: the rules of processor.health on a fake clock, the
HTTP routing next to /metrics, and the probes against real closed ports (no service needed)."""

from __future__ import annotations

import pytest

from migmeter.cli import build_parser
from migmeter.stack import free_port
from processor.health import Check, HealthState, probe_database, probe_kafka
from processor.metrics import ProcessorMetrics, serve
from tests.processor.health_kit import http_get


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _state(stale_after_s: float = 30.0) -> tuple[HealthState, FakeClock]:
    clock = FakeClock()
    return HealthState(stale_after_s, clock), clock


def test_not_ready_before_the_first_round_but_live():
    state, _ = _state()
    assert state.ready() == (False, "not ready: no probe round finished yet\n")
    assert state.live() == (True, "live\n")


def test_ready_when_both_checks_passed_recently():
    state, clock = _state()
    state.record((Check("kafka"), Check("database")))
    clock.now += 12.0
    ok, text = state.ready()
    assert ok
    assert text == "ready (probed 12 s ago)\nkafka: ok\ndatabase: ok\n"


def test_one_failed_check_is_not_ready_and_says_why():
    state, _ = _state()
    state.record((Check("kafka"), Check("database", "OperationalError: connection refused")))
    ok, text = state.ready()
    assert not ok
    assert "database: failed: OperationalError: connection refused" in text
    assert "kafka: ok" in text
    # A dependency being down never makes the process "not live" (a restart would not help).
    assert state.live()[0]


def test_a_stale_round_is_neither_ready_nor_live():
    state, clock = _state(stale_after_s=30.0)
    state.record((Check("kafka"), Check("database")))
    clock.now += 30.0  # exactly the limit: still fresh
    assert state.ready()[0] and state.live()[0]
    clock.now += 1.0  # 31 s > 30 s
    assert state.ready() == (False, "not ready: last probe round finished 31 s ago\n")
    assert state.live() == (False, "not live: the prober has not finished a round for 31 s\n")


def test_an_ended_loop_is_not_live():
    state, _ = _state()
    state.record((Check("kafka"), Check("database")))
    state.loop_ended()
    assert state.live() == (False, "not live: the processing loop has ended\n")


def test_health_paths_are_served_next_to_metrics():
    state, _ = _state()
    metrics = ProcessorMetrics()
    metrics.duplicates.inc(2)
    port = free_port()
    stop = serve(metrics.registry, port, "127.0.0.1", state)
    assert stop is not None
    try:
        assert http_get(port, "/readyz") == (503, "not ready: no probe round finished yet\n")
        state.record((Check("kafka"), Check("database")))
        assert http_get(port, "/readyz") == (200, "ready (probed 0 s ago)\nkafka: ok\ndatabase: ok\n")
        assert http_get(port, "/healthz") == (200, "live\n")
        status, body = http_get(port, "/metrics")
        assert status == 200 and "migmeter_processor_duplicates_total 2.0" in body
    finally:
        stop()


def test_without_health_every_path_is_metrics():
    port = free_port()
    stop = serve(ProcessorMetrics().registry, port)
    assert stop is not None
    try:
        status, body = http_get(port, "/readyz")
    finally:
        stop()
    assert status == 200 and "migmeter_processor_batches_total" in body


def test_database_probe_of_a_closed_port_fails_without_the_password():
    port = free_port()  # bound then released: nothing listens there
    check = probe_database(f"postgresql://writer:s3cret-pw@127.0.0.1:{port}/migmeter", timeout_s=2)
    assert check.name == "database" and not check.ok
    assert check.error is not None and check.error.startswith("OperationalError")
    assert "s3cret-pw" not in check.error


def test_kafka_probe_of_closed_ports_fails():
    ports = (free_port(), free_port())
    check = probe_kafka(f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", {}, timeout_s=2)
    assert check.name == "kafka" and not check.ok
    assert check.error == (f"no bootstrap server accepts a connection (127.0.0.1:{ports[0]}: ConnectionRefusedError: "
                           f"[Errno 111] Connection refused; 127.0.0.1:{ports[1]}: ConnectionRefusedError: "
                           "[Errno 111] Connection refused)")


def test_health_interval_flag():
    assert build_parser().parse_args(["process"]).health_interval == 10.0
    assert build_parser().parse_args(["process", "--health-interval", "2.5"]).health_interval == 2.5
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["process", "--health-interval", "0"])
    assert exc.value.code == 2


def test_database_up_needs_both_the_loop_and_the_probe():
    from prometheus_client import generate_latest

    from processor.metrics import DatabaseUp

    metrics = ProcessorMetrics()
    up = metrics.database_up

    def value() -> float | None:
        return metrics.registry.get_sample_value("migmeter_processor_database_up")

    assert value() == 0  # nothing known before the first attempt
    up.mark(DatabaseUp.PROBE, True)
    assert value() == 1
    # An idle processor writes nothing: only the probe sees the outage, and that is enough.
    up.mark(DatabaseUp.PROBE, False)
    assert value() == 0
    up.mark(DatabaseUp.LOOP, True)  # a loop success does not hide the probe's failure
    assert value() == 0
    up.mark(DatabaseUp.PROBE, True)
    assert value() == 1
    # A write refused while the probe's read still works: down, and a probe round keeps it down.
    up.mark(DatabaseUp.LOOP, False)
    up.mark(DatabaseUp.PROBE, True)
    assert value() == 0
    up.mark(DatabaseUp.LOOP, True)
    assert value() == 1
    assert b"\nmigmeter_processor_database_up 1.0\n" in generate_latest(metrics.registry)
