"""``migmeter db ACTION``: the warehouse schema.

Each action is a pair (configure its parser, run it) in ``_ACTIONS``; adding one (e.g.
``retention``) is one more pair and one more entry.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from migmeter import cli_support, settings
from warehouse import retention
from warehouse.migrate import migrate, pending

__all__ = ["configure", "run"]


# ----------------------------------------------------------------------------- migrate


def _configure_migrate(parser: argparse.ArgumentParser) -> None:
    cli_support.add_database_url(parser)
    parser.add_argument("--sql-dir", type=Path, default=settings.SQL_DIR,
                        help="folder of NNN_name.sql migrations (default: the checkout's sql/)")
    parser.add_argument("--dry-run", action="store_true", help="list pending migrations, apply nothing")


def _run_migrate(args: argparse.Namespace) -> int:
    url = settings.database_url(args.database_url)
    where = settings.redact_url(url)
    if args.dry_run:
        names = pending(url, args.sql_dir)
        print(f"{len(names)} pending on {where}" + "".join(f"\n  {n}" for n in names))
        return 0
    names = migrate(url, args.sql_dir)
    if names:
        print(f"applied {len(names)} migration(s) to {where}:" + "".join(f"\n  {n}" for n in names))
    else:
        print(f"{where} is up to date")
    return 0


# ----------------------------------------------------------------------------- retention
# Lives in warehouse/retention.py (it knows the hypertables).


# ----------------------------------------------------------------------------- table

_Configure = Callable[[argparse.ArgumentParser], None]
_Run = Callable[[argparse.Namespace], int]

# action -> (help, configure, run)
_ACTIONS: dict[str, tuple[str, _Configure, _Run]] = {
    "migrate": ("apply pending sql/NNN_*.sql migrations in order (idempotent)", _configure_migrate, _run_migrate),
    "retention": ("drop usage chunks older than each granularity's limit (drop_chunks; idempotent)",
                  retention.configure_cli, retention.run_cli),
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="db_action", metavar="ACTION", required=True)
    for name, (help_text, configure_action, run_action) in _ACTIONS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure_action(p)
        p.set_defaults(_db_run=run_action)


def run(args: argparse.Namespace) -> int:
    return int(args._db_run(args))
