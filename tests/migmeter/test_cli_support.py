"""``migmeter.cli_support``: one argument type, time parser, signal handler, /metrics server and
logging policy for every command; each test names one rule of its docstring."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client import CollectorRegistry, Counter

from collector.snapshot import TS_MAX, TS_MIN
from migmeter import cli_support
from migmeter.cli import main
from migmeter.errors import ConfigError

_BOUNDS = (TS_MIN, TS_MAX)
_NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


# ----------------------------------------------------------------------------- rule 1: finite numbers


@pytest.mark.parametrize("kind", [cli_support.positive_float, cli_support.non_negative_float])
@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "Infinity", "1e400", "x", ""])
def test_no_float_type_accepts_a_non_finite_or_non_number(kind: object, text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        kind(text)  # type: ignore[operator]


def test_positive_and_non_negative_differ_only_at_zero() -> None:
    assert cli_support.positive_float("2.5") == 2.5
    assert cli_support.non_negative_float("0") == 0.0
    with pytest.raises(argparse.ArgumentTypeError):
        cli_support.positive_float("0")
    with pytest.raises(argparse.ArgumentTypeError):
        cli_support.non_negative_float("-0.5")


@pytest.mark.parametrize(("text", "ok"), [("1", True), ("0", False), ("-3", False), ("1.5", False), ("x", False)])
def test_positive_int(text: str, ok: bool) -> None:
    if ok:
        assert cli_support.positive_int(text) == 1
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            cli_support.positive_int(text)


@pytest.mark.parametrize(("text", "ok"), [("0", True), ("65535", True), ("65536", False), ("-1", False), ("http", False)])
def test_port(text: str, ok: bool) -> None:
    if ok:
        assert cli_support.port(text) == int(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            cli_support.port(text)


@pytest.mark.parametrize("argv", [
    ["collect", "--source", "simulate", "--once", "--stdout", "--interval", "inf"],
    ["process", "--retry-max", "inf"],
    ["process", "--summary-every", "nan"],
    ["process", "--max-future-skew", "inf"],
    ["demo", "--days", "nan"],
])
def test_every_command_refuses_inf_and_nan(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # Before: `collect` refused inf while `process` took it (a backoff capped at inf never wakes).
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "finite" in capsys.readouterr().err


# ----------------------------------------------------------------------------- rule 2: one time syntax


def test_iso_times_dates_and_zones_become_utc() -> None:
    def parse(text: str) -> datetime:
        return cli_support.parse_time(text, "--start", _BOUNDS)

    assert parse("2025-01-06T00:00:00Z") == datetime(2025, 1, 6, tzinfo=timezone.utc)
    # 02:00 at +02:00 is midnight UTC.
    assert parse("2025-01-06 02:00:00+02:00") == datetime(2025, 1, 6, tzinfo=timezone.utc)
    assert parse("2025-11-03") == datetime(2025, 11, 3, tzinfo=timezone.utc)  # a date: midnight UTC


@pytest.mark.parametrize(("text", "back"), [("now", timedelta(0)), ("now-90s", timedelta(seconds=90)),
                                            ("now-15m", timedelta(minutes=15)), ("now-6h", timedelta(hours=6)),
                                            ("now-1.5d", timedelta(hours=36))])
def test_relative_times_count_back_from_the_injected_clock(text: str, back: timedelta) -> None:
    assert cli_support.parse_time(text, "--from", _BOUNDS, now=lambda: _NOW) == _NOW - back


@pytest.mark.parametrize("text", ["now-2w", "yesterday", "now+1h", "2025-13-01", ""])
def test_unknown_forms_name_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match="^--from "):
        cli_support.parse_time(text, "--from", _BOUNDS)


@pytest.mark.parametrize("text", ["now-99999999999d", "0001-01-01T00:00+14:00", "1969-12-31T23:59:59Z"])
def test_times_outside_the_bounds_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="is outside 1970-01-01"):
        cli_support.parse_time(text, "--start", _BOUNDS)


def test_report_and_collect_accept_the_same_forms(caplog: pytest.LogCaptureFixture) -> None:
    # `report utilization --from now-1d` used to be refused while `collect --start now-1d` worked.
    # A closed port: parsing passes, then the connection fails (exit 1, not 2 = usage).
    code = main(["report", "utilization", "--from", "now-1d", "--to", "now",
                 "--database-url", "postgresql://u@127.0.0.1:1/db"])
    assert code == 1
    assert "cannot query" in caplog.text
    code = main(["report", "utilization", "--from", "now-2w", "--to", "now",
                 "--database-url", "postgresql://u@127.0.0.1:1/db"])
    assert code == 2


# ----------------------------------------------------------------------------- rule 3: --database-url


def test_database_url_has_one_help_text_everywhere() -> None:
    from migmeter.cli import build_parser

    texts = set()
    parser = build_parser()
    stack = [parser]
    while stack:  # every parser and sub-parser of the whole CLI
        p = stack.pop()
        for action in p._actions:
            if "--database-url" in action.option_strings:
                texts.add((action.help or "").replace(" of the hypertables' owner", ""))
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    assert len(texts) == 1, texts


# ----------------------------------------------------------------------------- rule 4: signals


def test_first_signal_stops_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stopped = threading.Event()
    with cli_support.stop_on_signals(stopped.set, "stopping"):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopped.wait(5.0)  # the handler runs between bytecodes; wait() lets it
    assert signal.getsignal(signal.SIGTERM) is before


def test_second_sigint_interrupts() -> None:
    calls: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        with cli_support.stop_on_signals(lambda: calls.append(1), "stopping"):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            threading.Event().wait(5.0)  # interrupted by the second signal long before
    assert calls == [1]  # on_stop ran once


# ----------------------------------------------------------------------------- rule 5: /metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_and_extra_routes_are_served_then_stopped() -> None:
    registry = CollectorRegistry()
    Counter("migmeter_test_things", "Things.", registry=registry).inc(3)
    port = _free_port()
    stop = cli_support.serve_metrics(registry, port, "127.0.0.1", {"/readyz": lambda: (False, "db down\n")})
    assert stop is not None
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "migmeter_test_things_total 3.0" in body
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert exc.value.code == 503 and exc.value.read() == b"db down\n"
    finally:
        stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)


def test_port_zero_disables_and_a_taken_port_is_a_config_error() -> None:
    assert cli_support.serve_metrics(CollectorRegistry(), 0, "127.0.0.1") is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="pick another --metrics-port"):
            cli_support.serve_metrics(CollectorRegistry(), taken.getsockname()[1], "127.0.0.1")


# ----------------------------------------------------------------------------- rule 6: logging


def test_kafka_client_logs_are_let_through_once_a_minute() -> None:
    def record(name: str, msg: str, created: float, level: int = logging.ERROR) -> logging.LogRecord:
        r = logging.LogRecord(name, level, __file__, 1, msg, (), None)
        r.created = created
        return r

    f = cli_support.OncePerInterval()
    assert f.filter(record("kafka.net.manager", "Connection failed: %s", 0.0))
    assert not f.filter(record("kafka.net.manager", "Connection failed: %s", 30.0))
    assert f.filter(record("kafka.net.manager", "Bootstrap failed: %s", 30.0))  # another message
    assert f.filter(record("kafka.net.manager", "Connection failed: %s", 61.0))  # 61 - 0 >= 60
    assert f.filter(record("migmeter.collector.publish", "x", 1.0))
    assert f.filter(record("migmeter.collector.publish", "x", 2.0))  # ours are never filtered
    # DEBUG lines show only when asked for, and every one is evidence: never filtered.
    assert f.filter(record("kafka.coordinator", "need_rejoin: %s", 3.0, logging.DEBUG))
    assert f.filter(record("kafka.coordinator", "need_rejoin: %s", 4.0, logging.DEBUG))
    assert not f.filter(record("kafka.net.manager", "Connection failed: %s", 62.0, logging.INFO))  # 62 - 61 < 60


def test_commands_declare_noisy_loggers_and_only_main_applies_them() -> None:
    from migmeter.cli import build_parser

    args = build_parser().parse_args(["collect", "--source", "simulate", "--once", "--stdout"])
    assert args._quiet_loggers == ("kafka",)
    name = "migmeter-test-quiet"
    logger = logging.getLogger(name)
    try:
        cli_support.configure_logging("INFO", (name,))
        assert logger.level == logging.WARNING  # INFO chatter hidden, warnings shown
        cli_support.configure_logging("ERROR", (name,))
        assert logger.level == logging.ERROR  # never louder than asked
    finally:
        logger.setLevel(logging.NOTSET)
