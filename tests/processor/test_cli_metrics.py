"""`migmeter process` flags and the processor's /metrics endpoint."""

from __future__ import annotations

import urllib.request

import pytest

from migmeter.cli import build_parser
from migmeter.stack import free_port
from processor.metrics import ProcessorMetrics, serve


def _parse(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(["process", *argv])


def test_defaults_are_the_documented_ones():
    args = _parse()
    assert (args.batch_records, args.batch_ms) == (10_000, 2_000)
    assert (args.max_future_skew, args.max_backward_skew) == (300.0, 3600.0)
    assert (args.metrics_addr, args.metrics_port) == ("127.0.0.1", 9402)
    assert args.topic == "migmeter.snapshots.v1" and args.dead_letter_topic == "migmeter.snapshots.dlq.v1"
    assert args.metadata_max_age == 30.0  # added partitions are read within 30 s (+ a rebalance)


def test_max_gap_comes_from_the_flag_then_the_environment(monkeypatch):  # type: ignore[no-untyped-def]
    from migmeter.errors import ConfigError
    from processor.cli import ENV_MAX_GAP, _max_gap

    monkeypatch.delenv(ENV_MAX_GAP, raising=False)
    assert _parse().max_gap is None and _max_gap(None) == 0.0  # 0 = 3 x each snapshot's interval_s
    monkeypatch.setenv(ENV_MAX_GAP, "90")
    assert _max_gap(None) == 90.0 and _max_gap(_parse("--max-gap", "120").max_gap) == 120.0
    monkeypatch.setenv(ENV_MAX_GAP, "soon")
    with pytest.raises(ConfigError, match=ENV_MAX_GAP):
        _max_gap(None)


@pytest.mark.parametrize("argv", [["--batch-records", "0"], ["--batch-ms", "-5"], ["--max-future-skew", "0"],
                                  ["--batch-records", "many"], ["--max-gap", "-1"],
                                  ["--metadata-max-age", "0"], ["--metadata-max-age", "86401"],
                                  ["--metadata-max-age", "inf"]])
def test_bad_values_are_usage_errors(argv, capsys):  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        _parse(*argv)
    assert exc.value.code == 2


def test_metrics_are_served_on_loopback():
    m = ProcessorMetrics()
    m.duplicates.inc(3)
    m.consumer_lag.labels("t", "0").set(42)
    m.dead_letters.labels("decode").inc()
    port = free_port()
    stop = serve(m.registry, port)
    assert stop is not None
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        stop()
    assert "migmeter_processor_duplicates_total 3.0" in body
    assert 'migmeter_processor_consumer_lag{partition="0",topic="t"} 42.0' in body
    assert 'migmeter_processor_dead_letters_total{kind="decode"} 1.0' in body


def test_port_zero_disables_metrics():
    assert serve(ProcessorMetrics().registry, 0) is None
