"""``migmeter stack up | down | status | env``: the local Kafka + TimescaleDB stack."""

from __future__ import annotations

import argparse
import sys

from migmeter import stack

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="stack_action", metavar="ACTION", required=True)
    sub.add_parser("up", help="install what is missing, start Kafka and PostgreSQL/TimescaleDB (idempotent)")
    sub.add_parser("down", help="stop both services (data is kept under the state dir)")
    sub.add_parser("status", help="what runs where, with versions; exit 0 only when both are ready")
    sub.add_parser("env", help="print export lines for MIGMETER_KAFKA_BOOTSTRAP and MIGMETER_DATABASE_URL")


def _print_status(st: stack.StackStatus) -> None:
    for svc in st:
        print(svc.line())


def run(args: argparse.Namespace) -> int:
    action = args.stack_action
    if action == "up":
        st = stack.up()
        _print_status(st)
        print("next: eval \"$(migmeter stack env)\"  # points every command at this stack", file=sys.stderr)
        return 0 if st.all_ready else 1
    if action == "down":
        stack.down()
        print("stack stopped")
        return 0
    if action == "status":
        st = stack.status()
        _print_status(st)
        return 0 if st.all_ready else 1
    if action == "env":
        for line in stack.env_lines():
            print(line)
        return 0
    raise AssertionError(action)
