"""``processor.consumer``'s pure parts: its defaults are the CLI's, and the dead-letter message.

The loop itself runs against real Kafka and TimescaleDB in tests/integration and tests/reliability.
"""

from __future__ import annotations

import json

import pytest

from migmeter.cli import build_parser, main
from migmeter.errors import ConfigError
from processor import consumer
from processor.consumer import DLQ_PAYLOAD_MAX, ProcessorConfig, _dlq_value
from processor.fold import DeadLetter


def test_the_cli_defaults_are_the_consumers_constants() -> None:
    # One copy of each default: `migmeter process` with no flags builds the config's defaults.
    args = build_parser().parse_args(["process"])
    config = ProcessorConfig(bootstrap="b", database_url="u", topic="t", dead_letter_topic="d")
    assert args.retry_max == config.retry_max_s == consumer.RETRY_MAX_S == 30.0
    assert args.session_timeout_ms == config.session_timeout_ms == consumer.DEFAULT_SESSION_TIMEOUT_MS == 10_000
    assert args.summary_every == config.summary_every_s == consumer.DEFAULT_SUMMARY_EVERY_S == 30.0
    assert (args.batch_records, args.batch_ms, args.group) == (config.batch_records, config.batch_ms, config.group)
    assert args.writers == config.writers == consumer.DEFAULT_WRITERS == 2
    # --metadata-max-age is in seconds on the command line, milliseconds in the config: 30 s = 30,000 ms.
    assert args.metadata_max_age * 1000 == config.metadata_max_age_ms


def test_writers_out_of_range_is_a_configuration_error(caplog) -> None:  # type: ignore[no-untyped-def]
    # The config holds the bound (library callers too); the CLI turns it into exit 2 and one line.
    with pytest.raises(ConfigError, match=r"--writers must be 1\.\.16, not 17"):
        ProcessorConfig(bootstrap="b", database_url="u", topic="t", dead_letter_topic="d", writers=17)
    ProcessorConfig(bootstrap="b", database_url="u", topic="t", dead_letter_topic="d", writers=16)
    assert main(["process", "--writers", "17", "--database-url", "postgresql://u@127.0.0.1:1/x"]) == 2
    assert "--writers must be 1..16, not 17" in caplog.text


def test_a_dead_letter_message_carries_the_reason_and_a_bounded_payload() -> None:
    payload = b"x" * (DLQ_PAYLOAD_MAX + 10) + b"\xff"
    d = DeadLetter("snaps", 3, 42, b"GPU-\xffa", payload, "interval_s=0 outside (0, 3600]", "decode")
    doc = json.loads(_dlq_value(d))
    assert (doc["reason"], doc["kind"], doc["topic"], doc["partition"], doc["offset"]) == (
        "interval_s=0 outside (0, 3600]", "decode", "snaps", 3, 42)
    assert doc["key"] == "GPU-\ufffda"  # undecodable bytes replaced, not an exception
    assert doc["payload"] == "x" * DLQ_PAYLOAD_MAX  # cut at 64 KiB ...
    assert doc["payload_bytes"] == DLQ_PAYLOAD_MAX + 11  # ... while the full size is told


def test_a_dead_letter_without_a_key() -> None:
    doc = json.loads(_dlq_value(DeadLetter("t", 0, 0, None, b"{}", "not JSON", "decode")))
    assert doc["key"] is None and doc["payload"] == "{}" and doc["payload_bytes"] == 2
