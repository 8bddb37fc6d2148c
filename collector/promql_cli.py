"""``migmeter promql``: print MIG-weighted Prometheus rules, or check a rules file with promtool.

``rules`` only formats text (``collector.promql.rules_yaml``); ``check`` shells out to
``promtool check rules`` because promtool is the one authority on what Prometheus accepts.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from collector.promql import BY_LABELS, RuleOptions, rules_yaml
from migmeter import settings
from migmeter.errors import ConfigError, MigmeterError

__all__ = ["configure", "run", "PROMTOOL_HINT"]

PROMTOOL_HINT = (
    "promtool not found on PATH; install it with `apt-get install prometheus` (Debian/Ubuntu) "
    "or take it from a Prometheus release tarball"
)
# promtool checks one file in well under a second; a minute means something is wrong.
_PROMTOOL_TIMEOUT_S = 60


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="promql_command", metavar="ACTION")
    defaults = RuleOptions()
    r = sub.add_parser("rules", help="print a Prometheus rules file (recording + alerts) to stdout")
    r.add_argument(
        "--selector",
        default="",
        help="extra label matchers for the DCGM series, e.g. '{job=\"dcgm-exporter\",namespace=\"gpu\"}'",
    )
    r.add_argument(
        "--weights-selector",
        default="",
        help="extra label matchers for the migmeter_* weight gauges, e.g. '{job=\"migmeter\"}'",
    )
    r.add_argument(
        "--by",
        action="append",
        default=None,
        metavar="LABEL",
        help=f"tenant grouping, repeatable: {', '.join(BY_LABELS)} (default: namespace)",
    )
    r.add_argument(
        "--util-threshold",
        type=float,
        default=defaults.util_threshold,
        help=f"alert when weighted utilization (0..1) exceeds this (default {defaults.util_threshold})",
    )
    r.add_argument(
        "--for",
        dest="util_for",
        default=defaults.util_for,
        help=f"... for this long (default {defaults.util_for})",
    )
    r.add_argument(
        "--idle-threshold",
        type=float,
        default=defaults.idle_threshold,
        help=f"an allocated instance below this activity (0..1) is idle (default {defaults.idle_threshold})",
    )
    r.add_argument(
        "--idle-for",
        default=defaults.idle_for,
        help=f"alert when an allocated instance is idle this long (default {defaults.idle_for})",
    )
    r.add_argument(
        "--layout-window",
        default=defaults.layout_window,
        help=f"MIG layout-change alert window (default {defaults.layout_window})",
    )
    c = sub.add_parser("check", help="run `promtool check rules FILE`")
    c.add_argument("file", help="rules file to check")


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "promql_command", None)
    if action == "rules":
        # A bad option raises PromqlOptionError, a ConfigError: exit 2.
        text = rules_yaml(
            RuleOptions(
                selector=args.selector,
                weights_selector=args.weights_selector,
                by=tuple(args.by) if args.by else ("namespace",),
                util_threshold=args.util_threshold,
                util_for=args.util_for,
                idle_threshold=args.idle_threshold,
                idle_for=args.idle_for,
                layout_window=args.layout_window,
            )
        )
        sys.stdout.write(text)
        return 0
    if action == "check":
        promtool = shutil.which("promtool")
        if promtool is None:
            raise ConfigError(PROMTOOL_HINT)
        try:
            regular = Path(args.file).is_file()  # not a FIFO or device promtool would wait on
        except OSError as exc:  # e.g. a name too long for the file system
            raise ConfigError(f"rules file {args.file[:200]!r}: {exc.strerror or exc}") from None
        if not regular:
            raise ConfigError(f"rules file {args.file[:200]!r} is not a regular file")
        try:
            proc = subprocess.run(
                [promtool, "check", "rules", args.file],
                capture_output=True,
                text=True,
                timeout=_PROMTOOL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise MigmeterError(f"promtool did not finish within {_PROMTOOL_TIMEOUT_S} s") from None
        # promtool quotes the path it was given: whatever was pasted there is masked like our own messages.
        sys.stdout.write(settings.redact_text(proc.stdout))
        sys.stderr.write(settings.redact_text(proc.stderr))
        return 0 if proc.returncode == 0 else 1
    raise ConfigError("usage: migmeter promql {rules,check} ... (see migmeter promql --help)")
