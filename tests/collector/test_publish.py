"""Publishers without a broker: stdout/in-memory, and Kafka when the broker cannot be reached.

A closed loopback port is a real unreachable broker (connection refused), so these run with
no services; delivery into a real broker and outage recovery are in
tests/integration/test_collector_kafka.py.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from collector.publish import InMemoryPublisher, KafkaPublisher, StdoutPublisher
from collector.snapshot import from_json
from collector.spool import Spool
from migmeter.errors import ConfigError
from migmeter.kafka_security import describe_security, kafka_security
from tests.processor.build import series

# Port 1 on loopback: nothing listens there, connecting is refused at once.
_UNREACHABLE = "127.0.0.1:1"


def _kafka(spool: Spool | None, **kw: object) -> KafkaPublisher:
    return KafkaPublisher(_UNREACHABLE, "t", spool=spool, connect_timeout_s=0.3, **kw)  # type: ignore[arg-type]


def _spooled(directory: Path) -> list[tuple[str, str]]:
    with Spool(directory) as spool:
        out = []
        for rec in spool.peek(10_000):
            snap = from_json(rec.value)
            assert rec.key == snap.key
            out.append((snap.gpu_uuid, snap.ts.isoformat()))
        return out


def test_stdout_writes_wire_json_lines() -> None:
    out = io.StringIO()
    pub = StdoutPublisher(out)
    snaps = series(["GPU-a", "GPU-b"], 2)
    for s in snaps:
        pub.send(s)
    pub.close()
    assert [from_json(line) for line in out.getvalue().splitlines()] == snaps
    assert pub.stats.delivered == 4


class _ClosedPipe(io.StringIO):
    """A stdout whose reader went away after ``keep`` lines (``collect --stdout | head``)."""

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep

    def write(self, s: str) -> int:
        if self.getvalue().count("\n") >= self.keep:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(s)


def test_stdout_closed_by_its_reader_stops_the_run_quietly() -> None:
    stop = threading.Event()
    out = _ClosedPipe(keep=2)
    pub = StdoutPublisher(out, stop=stop)
    for s in series(["GPU-a"], 4):
        pub.send(s)
    pub.close()
    assert stop.is_set() and pub.pipe_closed
    assert len(out.getvalue().splitlines()) == 2
    assert (pub.stats.sent, pub.stats.delivered) == (4, 2)


def test_in_memory_keeps_everything() -> None:
    pub = InMemoryPublisher()
    snaps = series(["GPU-a"], 3)
    for s in snaps:
        pub.send(s)
    pub.flush(1.0)
    assert pub.snapshots == snaps
    assert (pub.stats.sent, pub.stats.delivered, pub.flushes) == (3, 3, 1)


def test_unreachable_broker_spools_everything_in_order(tmp_path: Path) -> None:
    snaps = series(["GPU-a", "GPU-b", "GPU-c"], 4)
    pub = _kafka(Spool(tmp_path))
    for s in snaps:
        pub.send(s)
    pub.flush(0.5)
    assert (pub.stats.spooled, pub.stats.delivered, pub.stats.dropped) == (12, 0, 0)
    assert pub.stats.spool_depth == 12
    assert pub.stats.send_failures >= 1
    pub.close(0.5)
    assert _spooled(tmp_path) == [(s.gpu_uuid, s.ts.isoformat()) for s in snaps]


def test_close_twice_is_harmless(tmp_path: Path) -> None:
    pub = _kafka(Spool(tmp_path))
    pub.send(series(["GPU-a"], 1)[0])
    pub.close(0.2)
    pub.close(0.2)
    assert pub.stats.spool_depth == 1


def test_new_snapshots_queue_behind_a_spool_left_by_a_previous_run(tmp_path: Path) -> None:
    first, second = series(["GPU-a", "GPU-b"], 2), series(["GPU-a", "GPU-b"], 4)[4:]
    pub = _kafka(Spool(tmp_path))
    for s in first:
        pub.send(s)
    pub.close(0.2)
    restarted = _kafka(Spool(tmp_path))
    assert restarted.stats.spool_depth == 4
    for s in second:
        restarted.send(s)
    restarted.close(0.2)
    assert _spooled(tmp_path) == [(s.gpu_uuid, s.ts.isoformat()) for s in first + second]


def test_without_a_spool_undeliverable_snapshots_are_dropped_and_counted() -> None:
    pub = _kafka(None)
    for s in series(["GPU-a"], 3):
        pub.send(s)
    pub.close(0.2)
    assert (pub.stats.sent, pub.stats.delivered, pub.stats.dropped) == (3, 0, 3)


def test_full_spool_drop_oldest_counts_drops(tmp_path: Path) -> None:
    snaps = series(["GPU-a"], 5)
    pub = _kafka(Spool(tmp_path, max_count=3, full_policy="drop-oldest"))
    for s in snaps:
        pub.send(s)
    pub.close(0.2)
    assert pub.stats.dropped == 2
    assert _spooled(tmp_path) == [(s.gpu_uuid, s.ts.isoformat()) for s in snaps[2:]]


class _StopOnFirstWait(threading.Event):
    """A stop event that records that the publisher waited, and stops it on its first wait."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        self.set()
        return True


def test_full_spool_block_waits_for_room_and_keeps_everything_on_stop(tmp_path: Path) -> None:
    snaps = series(["GPU-a"], 4)
    stop = _StopOnFirstWait()
    pub = _kafka(Spool(tmp_path, max_count=3, full_policy="block"), stop=stop)
    for s in snaps[:3]:
        pub.send(s)
    assert stop.waits == 0
    pub.send(snaps[3])  # full: waits (back-pressure) until stopped, then stores past the bound
    assert stop.waits == 1
    pub.close(0.2)
    assert pub.stats.dropped == 0
    assert _spooled(tmp_path) == [(s.gpu_uuid, s.ts.isoformat()) for s in snaps]


def test_security_comes_from_env_and_files(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    env = {"MIGMETER_KAFKA_SASL_USERNAME": "meter", "MIGMETER_KAFKA_SECURITY_PROTOCOL": "sasl_ssl"}
    sec = kafka_security(sasl_mechanism="scram-sha-512", sasl_password_file=str(pw), environ=env)
    assert sec == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "meter", "sasl_plain_password": "s3cret",
    }
    assert "s3cret" not in describe_security(sec)
    pub = KafkaPublisher(_UNREACHABLE, security=sec)
    assert "s3cret" not in repr(pub)


def test_env_password_defaults_to_sasl_plain() -> None:
    sec = kafka_security(environ={"MIGMETER_KAFKA_SASL_USERNAME": "u", "MIGMETER_KAFKA_SASL_PASSWORD": "p"})
    assert sec["sasl_mechanism"] == "PLAIN"


def test_plaintext_needs_nothing() -> None:
    assert kafka_security(environ={}) == {}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"security_protocol": "TLS"},
        {"sasl_mechanism": "PLAIN"},  # no user/password in env
        {"ssl_cafile": "/nonexistent/ca.pem"},
        {"sasl_password_file": "/nonexistent/pw"},
    ],
)
def test_bad_security_settings_are_config_errors(kwargs: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        kafka_security(environ={}, **kwargs)  # type: ignore[arg-type]


def test_unknown_security_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="acks"):
        KafkaPublisher(_UNREACHABLE, security={"acks": 0})
