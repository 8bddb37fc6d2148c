"""``migmeter.cli``: the dispatch table, exit codes and the one place logging is configured."""

from __future__ import annotations

import argparse
import logging

import pytest

from migmeter import cli
from migmeter.errors import ConfigError, MigmeterError


def test_every_command_in_the_table_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0, name
        assert f"migmeter {name}" in capsys.readouterr().out


def test_no_command_prints_help_and_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == cli.EXIT_USAGE
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)


@pytest.mark.parametrize(("error", "code"), [
    (ConfigError("bad flag"), cli.EXIT_USAGE),
    (MigmeterError("work failed"), cli.EXIT_FAILED),
    (KeyboardInterrupt(), cli.EXIT_INTERRUPTED),
])
def test_errors_map_to_exit_codes(monkeypatch: pytest.MonkeyPatch, error: BaseException, code: int) -> None:
    def failing(args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(cli.COMMANDS["promql"][0], "run", failing)
    assert cli.main(["promql", "rules"]) == code


def test_a_message_with_a_password_is_masked(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def failing(args: argparse.Namespace) -> int:
        raise MigmeterError("cannot reach postgresql://meter:hunter2@db:5432/x")

    monkeypatch.setattr(cli.COMMANDS["promql"][0], "run", failing)
    assert cli.main(["promql", "rules"]) == cli.EXIT_FAILED
    assert "hunter2" not in caplog.text and "meter" in caplog.text


def test_an_argument_that_is_not_utf8_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", "chargeback", "--month", "2025-01\udcff"])
    assert exc.value.code == cli.EXIT_USAGE
    assert "argument 4 is not valid UTF-8" in capsys.readouterr().err


def test_main_applies_the_commands_noisy_loggers(monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = logging.getLogger("kafka")
    before = kafka.level
    monkeypatch.setattr(cli.COMMANDS["collect"][0], "run", lambda args: 0)
    try:
        kafka.setLevel(logging.NOTSET)
        assert cli.main(["--log-level", "INFO", "collect", "--source", "simulate", "--once", "--stdout"]) == 0
        assert kafka.level == logging.WARNING  # `collect` declared it noisy; main quieted it
    finally:
        kafka.setLevel(before)
