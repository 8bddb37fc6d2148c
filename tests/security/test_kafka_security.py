"""Kafka TLS/SASL settings reach the real kafka-python clients of collector and processor.

Unit level (no broker): the client classes are replaced by subclasses of the real ones that
record their keyword arguments, check every name against the real class's ``DEFAULT_CONFIG``
(a misspelt setting would be silently ignored or fail late), and then raise a KafkaError as an
unreachable broker would. The end-to-end check against a SASL broker is in
``test_kafka_sasl_broker.py``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaTimeoutError

from collector import cli as collector_cli
from collector import publish
from collector.sources.simulate import SimulatedFleet
from migmeter import kafka_security
from migmeter.errors import MigmeterError
from processor import cli as processor_cli
from processor import consumer
from processor.fold import DeadLetter

SASL_PASSWORD = "sasl-pw-unit-5531"
SECURITY_ENV = {
    "MIGMETER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "MIGMETER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "MIGMETER_KAFKA_SASL_USERNAME": "meter",
    "MIGMETER_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
}
EXPECTED = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "meter",
            "sasl_plain_password": SASL_PASSWORD}


def _recorder(real: type, seen: list[dict[str, Any]]) -> type:
    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            unknown = set(kwargs) - set(real.DEFAULT_CONFIG)
            assert not unknown, f"{real.__name__} has no settings {unknown}"
            seen.append(kwargs)
            raise KafkaTimeoutError("recorded; no broker in a unit test")

        def __del__(self) -> None:  # the real one would tidy up a client that was never built
            pass

    return Recording


def _collect_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    collector_cli.configure(parser)
    return parser.parse_args(["--source", "simulate", "--bootstrap", "127.0.0.1:9", "--spool-dir",
                              str(tmp_path / "spool"), *extra])


def test_collector_flags_and_env_reach_the_producer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    for k, v in SECURITY_ENV.items():
        monkeypatch.setenv(k, v)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(publish, "KafkaProducer", _recorder(KafkaProducer, seen))
    # _get_producer checks a TCP connect first; give it something that accepts.
    monkeypatch.setattr(publish, "_any_reachable", lambda servers, timeout_s: True)
    args = _collect_args(tmp_path, "--ssl-cafile", str(ca), "--security-protocol", "SASL_SSL")
    caplog.set_level(logging.DEBUG)
    pub = publish.KafkaPublisher(args.bootstrap, spool=None, security=kafka_security.kafka_security(
        security_protocol=args.security_protocol, sasl_mechanism=args.sasl_mechanism,
        ssl_cafile=args.ssl_cafile, sasl_password_file=args.sasl_password_file))
    pub.send(SimulatedFleet(hosts=1, gpus_per_host=1).read()[0])
    assert pub.stats.dropped == 1  # no broker, no spool: counted, not lost silently
    assert seen, "KafkaProducer was never constructed"
    for key, value in {**EXPECTED, "ssl_cafile": str(ca)}.items():
        assert seen[0][key] == value, key
    assert seen[0]["acks"] == "all" and seen[0]["enable_idempotence"] is True  # security cannot override these
    assert SASL_PASSWORD not in repr(pub) and SASL_PASSWORD not in caplog.text


def test_collector_cli_wiring_passes_security_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in SECURITY_ENV.items():
        monkeypatch.setenv(k, v)
    args = _collect_args(tmp_path)
    import threading

    from collector.metrics import CollectorMetrics
    pub = collector_cli._make_publisher(args, threading.Event(), CollectorMetrics())
    try:
        assert {k: pub._security[k] for k in EXPECTED} == EXPECTED  # type: ignore[attr-defined]
    finally:
        pub.close(timeout_s=0.1)  # type: ignore[call-arg]


def test_security_settings_cannot_change_delivery_semantics() -> None:
    with pytest.raises(MigmeterError):
        publish.KafkaPublisher("127.0.0.1:9", security={"acks": 0})
    with pytest.raises(MigmeterError):
        publish.KafkaPublisher("127.0.0.1:9", security={"enable_idempotence": False})


def test_processor_env_reaches_consumer_and_dead_letter_producer(monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    for k, v in SECURITY_ENV.items():
        monkeypatch.setenv(k, v)
    consumers: list[dict[str, Any]] = []
    producers: list[dict[str, Any]] = []
    monkeypatch.setattr(consumer, "KafkaConsumer", _recorder(KafkaConsumer, consumers))
    monkeypatch.setattr(consumer, "KafkaProducer", _recorder(KafkaProducer, producers))
    parser = argparse.ArgumentParser()
    processor_cli.configure(parser)
    args = parser.parse_args(["--bootstrap", "127.0.0.1:9", "--database-url", "postgresql://u@127.0.0.1:9/d",
                              "--metrics-port", "0"])
    caplog.set_level(logging.DEBUG)
    with pytest.raises(MigmeterError, match="cannot reach Kafka"):
        processor_cli.run(args)
    assert consumers and {k: consumers[0][k] for k in EXPECTED} == EXPECTED
    # The dead-letter producer is built from the same settings.
    config = consumer.ProcessorConfig(bootstrap="127.0.0.1:9", database_url="postgresql://u@127.0.0.1:9/d",
                                      topic="t", dead_letter_topic="t.dlq",
                                      kafka_options=tuple(sorted(kafka_security.kafka_security().items())))
    proc = consumer.Processor(config)
    proc._publish_dead_letters([DeadLetter("t", 0, 1, b"k", b"x", "not JSON", "decode")])
    assert producers and {k: producers[0][k] for k in EXPECTED} == EXPECTED
    assert proc.metrics.dead_letter_publish_failures._value.get() == 1
    assert SASL_PASSWORD not in caplog.text
