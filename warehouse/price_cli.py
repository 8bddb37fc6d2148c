"""``migmeter price``: set, list and delete the GPU-hour prices chargeback uses.

``price set MODEL PRICE --from DATE`` is idempotent (same model and date replace the price);
``price list`` also names GPU models that have usage but no price at all, since their cost
shows as '-' in every report until someone prices them.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from decimal import Decimal

import psycopg

from migmeter import cli_support, settings
from migmeter.errors import MigmeterError
from warehouse import prices, profile_pricing
from warehouse.render import FORMATS, Column, Report, render

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("set", help="price of one GPU of MODEL per hour, from a UTC day on")
    s.add_argument("model", help="GPU model exactly as reported (see `migmeter price list`), e.g. 'NVIDIA A100-SXM4-80GB'")
    s.add_argument("price", help="price of one whole GPU for one hour (a MIG slice costs its share)")
    s.add_argument("--from", dest="effective_from", required=True, help="first UTC day it applies (YYYY-MM-DD)")
    s.add_argument("--currency", default=prices.DEFAULT_CURRENCY, help="three-letter code (default USD)")
    s.add_argument("--profile", help="price of one instance of this MIG profile per hour (e.g. 1g.10gb) instead of"
                                     " the whole GPU's; wins over the model's share rule")
    ru = sub.add_parser("rule", help="how instances without a profile price share their GPU's price, from a UTC day on")
    ru.add_argument("model", help="GPU model exactly as reported")
    ru.add_argument("rule", choices=profile_pricing.SHARE_RULES,
                    help="compute slices (default), memory slices, or the larger of the two")
    ru.add_argument("--from", dest="effective_from", required=True, help="first UTC day it applies (YYYY-MM-DD)")
    ls = sub.add_parser("list", help="all prices, and models seen without a price")
    ls.add_argument("--model", help="only this model")
    ls.add_argument("--format", choices=FORMATS, default="table")
    d = sub.add_parser("delete", help="remove one dated price (e.g. a typo)")
    d.add_argument("model")
    d.add_argument("--from", dest="effective_from", required=True, help="the day of the price to remove (YYYY-MM-DD)")
    for p in (s, ru, ls, d):
        cli_support.add_database_url(p)


def run(args: argparse.Namespace) -> int:
    # Bad values are usage errors, found before connecting.
    price = _price(args) if args.action == "set" and not args.profile else None
    profile_price = _profile_price(args) if args.action == "set" and args.profile else None
    day = prices.parse_day(args.effective_from) if args.action in ("delete", "rule") else None
    url = settings.database_url(args.database_url)
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            return _dispatch(conn, args, price, profile_price, day)
    except psycopg.errors.InsufficientPrivilege:
        raise MigmeterError(f"this database role may not {args.action} prices; changing prices needs the "
                            "warehouse owner's login") from None
    except psycopg.errors.UndefinedTable as exc:
        raise MigmeterError(f"the warehouse is not migrated ({settings.database_error(exc, url)}): "
                            "run `migmeter db migrate`") from None
    except psycopg.OperationalError as exc:
        raise MigmeterError(f"cannot reach {settings.redact_url(url)}: {settings.database_error(exc, url)}") from None
    except psycopg.Error as exc:
        raise MigmeterError(f"price {args.action} failed on {settings.redact_url(url)}: "
                            f"{settings.database_error(exc, url)}") from None


def _price(args: argparse.Namespace) -> prices.Price:
    return prices.Price(
        gpu_model=args.model,
        price_per_gpu_hour=prices.parse_price(args.price),
        currency=prices.parse_currency(args.currency),
        effective_from=prices.parse_day(args.effective_from),
    )


def _profile_price(args: argparse.Namespace) -> tuple[Decimal, str, date]:
    return prices.parse_price(args.price), prices.parse_currency(args.currency), prices.parse_day(args.effective_from)


def _dispatch(conn: psycopg.Connection[object], args: argparse.Namespace, p: prices.Price | None,
              profile_price: tuple[Decimal, str, date] | None, day: date | None) -> int:
    if profile_price is not None:
        amount, currency, since = profile_price
        profile_pricing.set_profile_price(conn, args.model, args.profile, amount, currency, since)
        conn.commit()
        print(f"{args.model} {args.profile}: {amount} {currency} per instance-hour from {since}")
        return 0
    if args.action == "rule" and day is not None:
        recorded = profile_pricing.set_share_rule(conn, args.model, args.rule, day)
        conn.commit()
        print(f"{args.model}: instances share the GPU's price by {args.rule} slices from {day}"
              f" (memory shares of {recorded} profiles recorded)")
        return 0
    if p is not None:
        prices.set_price(conn, p)
        conn.commit()
        print(f"{p.gpu_model}: {p.price_per_gpu_hour} {p.currency} per GPU-hour from {p.effective_from}")
        return 0
    if args.action == "delete" and day is not None:
        if prices.delete_price(conn, args.model, day):
            conn.commit()
            print(f"deleted the price of {args.model} from {day}")
            return 0
        print(f"no price of {args.model} from {day}", file=sys.stderr)
        return 1
    rows = prices.list_prices(conn, args.model)
    report = Report(
        "GPU-hour prices",
        (Column("gpu_model"), Column("price_per_gpu_hour", "number"), Column("currency"), Column("effective_from", "day")),
        tuple((p.gpu_model, p.price_per_gpu_hour, p.currency, p.effective_from) for p in rows),
        tuple(f"warning: no price for GPU model {m!r}" for m in prices.unpriced_models(conn)),
    )
    sys.stdout.write(render(report, args.format))
    return 0
