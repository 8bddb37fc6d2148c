"""The ``migmeter`` command: parses arguments and calls library code, nothing else.

Each subcommand lives in its own module exposing ``configure(parser)`` (adds its flags and
sub-subcommands) and ``run(args) -> int`` (the exit code). The table below is the whole CLI.
Exit codes: 0 ok, 1 the work failed, 2 bad usage or configuration, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

import collector.cli
import collector.promql_cli
import processor.cli
import warehouse.price_cli
import warehouse.report_cli
from migmeter import __version__, cli_support, db_cli, demo, settings, stack_cli
from migmeter.errors import ConfigError, MigmeterError

__all__ = ["main", "build_parser", "COMMANDS"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# name -> (module implementing it, one-line help). Plain imports above, so static tools (and
# tests/migmeter/test_layers.py) see that the shell is the only room importing every other.
COMMANDS: dict[str, tuple[ModuleType, str]] = {
    "stack": (stack_cli, "run the local Kafka + TimescaleDB stack (up, down, status, env)"),
    "db": (db_cli, "warehouse schema: migrate, retention"),
    "collect": (collector.cli, "read GPUs (dcgm, nvml, prometheus, simulate) and publish snapshots"),
    "process": (processor.cli, "consume snapshots, write exactly-once aggregates to TimescaleDB"),
    "report": (warehouse.report_cli, "chargeback, utilization and layout reports"),
    "price": (warehouse.price_cli, "GPU-hour prices used by chargeback"),
    "promql": (collector.promql_cli, "MIG-weighted Prometheus recording and alert rules"),
    "demo": (demo, "simulated fleet end to end on the local stack, then reports"),
}


class _Parser(argparse.ArgumentParser):
    """argparse repeats a bad argument verbatim in its usage error ("unrecognized arguments:
    --databse-url=postgresql://u:PASSWORD@..."); mask passwords there. Subcommand parsers
    are of the parent's class, so this covers every command."""

    def error(self, message: str) -> NoReturn:
        super().error(settings.redact_text(message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="migmeter",
        description="MIG-aware GPU metering: collectors -> Kafka -> processor -> TimescaleDB -> reports.",
        epilog="Environment: MIGMETER_KAFKA_BOOTSTRAP (default 127.0.0.1:9092), "
        "MIGMETER_DATABASE_URL (default: the local stack's PostgreSQL). "
        "Run 'migmeter COMMAND --help' for each command.",
    )
    parser.add_argument("--version", action="version", version=f"migmeter {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default INFO); logs go to stderr",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def _is_text(arg: str) -> bool:
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    undecodable = [i for i, arg in enumerate(argv, 1) if not _is_text(arg)]
    if undecodable:
        # Bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape): they can be
        # neither sent to PostgreSQL nor printed, so every later use of the value would crash.
        # The value itself is not echoed (it may be anything, a secret included).
        parser.error(f"argument {undecodable[0]} is not valid UTF-8 text")
    args = parser.parse_args(argv)
    # The one place logging is configured; commands only name their noisy loggers.
    cli_support.configure_logging(args.log_level, getattr(args, "_quiet_loggers", ()))
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(run(args))
    except ConfigError as exc:
        # A message may quote a flag's value, and an operator may paste a URL into the wrong flag.
        logging.getLogger("migmeter").error("%s", settings.redact_text(str(exc)))
        return EXIT_USAGE
    except MigmeterError as exc:
        logging.getLogger("migmeter").error("%s", settings.redact_text(str(exc)))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
