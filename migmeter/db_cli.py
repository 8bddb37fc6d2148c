"""``migmeter db ACTION``: the warehouse schema.

Each action is a pair (configure its parser, run it) in ``_ACTIONS``; adding one (e.g.
``retention``) is one more pair and one more entry.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from migmeter import settings

__all__ = ["configure", "run"]


def _add_database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=None,
        help=f"PostgreSQL URL (default ${settings.ENV_DATABASE_URL}, else the local stack's)",
    )


# ----------------------------------------------------------------------------- migrate


def _configure_migrate(parser: argparse.ArgumentParser) -> None:
    _add_database_url(parser)
    parser.add_argument("--sql-dir", type=Path, default=settings.SQL_DIR,
                        help="folder of NNN_name.sql migrations (default: the checkout's sql/)")
    parser.add_argument("--dry-run", action="store_true", help="list pending migrations, apply nothing")


def _run_migrate(args: argparse.Namespace) -> int:
    from warehouse.migrate import migrate, pending

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
# Lives in warehouse/retention.py (it knows the hypertables); imported lazily.


def _configure_retention(parser: argparse.ArgumentParser) -> None:
    from warehouse.retention import configure_cli

    configure_cli(parser)


def _run_retention(args: argparse.Namespace) -> int:
    from warehouse.retention import run_cli

    return run_cli(args)


# ----------------------------------------------------------------------------- table

_Configure = Callable[[argparse.ArgumentParser], None]
_Run = Callable[[argparse.Namespace], int]

# action -> (help, configure, run)
_ACTIONS: dict[str, tuple[str, _Configure, _Run]] = {
    "migrate": ("apply pending sql/NNN_*.sql migrations in order (idempotent)", _configure_migrate, _run_migrate),
    "retention": ("drop usage chunks older than each granularity's limit (drop_chunks; idempotent)",
                  _configure_retention, _run_retention),
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="db_action", metavar="ACTION", required=True)
    for name, (help_text, configure_action, run_action) in _ACTIONS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure_action(p)
        p.set_defaults(_db_run=run_action)


def run(args: argparse.Namespace) -> int:
    return int(args._db_run(args))
