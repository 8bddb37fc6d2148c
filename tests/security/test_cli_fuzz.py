"""Fuzz the whole CLI: every subcommand, hostile arguments, no traceback, no secret (issue 18).

The commands are not listed here: they are walked from the argparse tree that
``migmeter.cli.COMMANDS`` builds, so a command added later is fuzzed too. For each leaf
(``report chargeback``, ``db retention``, ``collect``...) hypothesis builds an argv from the
leaf's own flags and positionals, filled with hostile values: calendar edges with ±14:00
offsets, numbers of 400 digits, NaN, 1e-30, undecodable bytes (surrogateescape), four-byte
characters, SQL and PromQL fragments, paths that cannot be written, URLs that carry the secret.

Every run must end with exit 0, 1 or 2 (2 when argparse or migmeter refuses a value), and
nothing may escape ``main()`` (in a real process that is a traceback). The database URL in
the environment holds a known password, ``SECRET``: for a real login role of a fresh
database (reader and writer: it may report, it may not change prices or the schema, so no
run changes anything that matters), or for a port nobody listens on, or malformed. Neither
stdout, stderr nor any log record may contain it.

How each command runs: in-process ``main(argv)`` wherever it returns promptly. ``collect``
always gets ``--once --stdout`` appended (one round, nothing to Kafka) and never the
prometheus source (a backfill retries an unreachable server for ~15 s by design).
``process`` and ``demo`` run for real in a few subprocesses, ``process`` against a private
empty topic with ``--stop-when-idle``; one still running after 15 s (a processor retries an
unreachable database forever, by design) gets SIGTERM and must then exit cleanly. ``stack up``/``stack down`` always get an extra
argument, so argparse refuses them: the shared local stack is never started or stopped.
``stack env`` prints the database URL by design (its job is ``eval "$(migmeter stack env)"``),
so it is exempt from the secret check only.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from psycopg import sql

from migmeter import settings as mm_settings
from migmeter.cli import COMMANDS, build_parser, main

pytestmark = pytest.mark.integration

SECRET = "Fz-S3CRET-pw-5521"
# Bounded so the whole module runs in about a minute on the shared 2-core machine.
IN_PROCESS_EXAMPLES = 400
SUBPROCESS_EXAMPLES = 4
_TIMEOUT_S = 120  # a guard against a hang, not a timing assertion
# CI runs the same inputs every time (a red build names a change, not a lucky draw); a developer's
# run draws new ones, which is how this fuzzer finds what it has not seen yet.
_IN_CI = os.environ.get("CI") == "true"
# How long a subprocess runs before SIGTERM: a processor whose database is unreachable retries forever.
_RUN_S = 15
# A failing subprocess example is reported as found: shrinking it would rerun many slow processes.
_NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_CLOSED = _closed_port()
HOSTILE = [
    "", " ", "-", "--", "0", "-1", "1e-30", "1e400", "nan", "inf", "-inf", "9" * 400, "-" + "9" * 400, "0x10",
    "0000-01", "9999-12", "2026-13", "0001-01-01", "9999-12-31", "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00", "2026-11-03T12:00:00+25:00", "now-99999999999d", "now-1e400d", "now",
    "\udcff\udcfe", "caf\udce9", "\U0001F600" * 300, "é" * 300, "x" * 5000, "\u202e",
    "'; DROP TABLE gpus; --", "namespace) or vector(1", '{__name__=~".+"}', "%s%n%x", "{0}", "$(id)",
    "../../../../etc/passwd", "/proc/self/mem", "/proc/nope/x.png", "/etc/hostname/x.png", "/", "/tmp",
    "file:/etc/passwd", f"http://u:{SECRET}@127.0.0.1:{_CLOSED}/metrics", f"http://127.0.0.1:{_CLOSED}/",
    f"postgresql://u:{SECRET}@127.0.0.1:{_CLOSED}/x", f"postgresql://u:{SECRET} x@h/d", f"password={SECRET}",
    f"127.0.0.1:{_CLOSED}", "NVIDIA A100-SXM4-80GB", "2026-11", "2026-11-03", "USD", "eur", "30d", "forever",
]
# Leaves that never run in-process: they run in subprocesses below, or (stack up/down) only
# ever with an argument argparse refuses.
_SUBPROCESS = {("process",), ("demo",)}
_NEVER_RUN = {("stack", "up"), ("stack", "down")}
_PRINTS_THE_URL = {("stack", "env")}
_SUFFIX = {("collect",): ["--once", "--stdout"]}
_EXCLUDED_CHOICES = {"--source": {"prometheus"}}


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaves(child, (*path, name))


LEAVES = dict(_leaves(build_parser()))


def test_every_command_of_the_table_is_fuzzed() -> None:
    assert {path[0] for path in LEAVES} == set(COMMANDS)
    assert len(LEAVES) >= 15, sorted(LEAVES)  # report x4, price x3, db x2, stack x4, promql x2, collect...


def _value(action: argparse.Action) -> st.SearchStrategy[str]:
    hostile = st.sampled_from(HOSTILE) | st.text(st.characters(blacklist_characters="\x00"), max_size=12)  # argv holds no NUL
    if action.choices:
        allowed = [str(c) for c in action.choices if str(c) not in _EXCLUDED_CHOICES.get(action.option_strings[0]
                                                                                          if action.option_strings
                                                                                          else "", set())]
        return st.sampled_from(allowed) | hostile
    return hostile


@st.composite
def _argv(draw: st.DrawFn, path: tuple[str, ...]) -> list[str]:
    parser = LEAVES[path]
    argv = list(path)
    optionals = [a for a in parser._actions if a.option_strings and not isinstance(
        a, (argparse._HelpAction, argparse._VersionAction))]
    chosen = [a for a in optionals if a.required] + draw(st.lists(st.sampled_from(optionals), max_size=4)
                                                         if optionals else st.just([]))
    for action in chosen:
        flag = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            argv.append(flag)
        else:
            argv += [flag, draw(_value(action))]
    for action in parser._actions:
        if not action.option_strings:
            argv.append(draw(_value(action)))
    if path in _NEVER_RUN:
        argv.append(draw(st.sampled_from(HOSTILE[1:])) or "x")  # argparse refuses any extra argument
    return argv + _SUFFIX.get(path, [])


@pytest.fixture(scope="module")
def secret_urls(admin_url: str) -> Iterator[list[str]]:
    """A fresh database and a login (reader + writer) whose password is SECRET; the URLs to try."""
    from warehouse.migrate import migrate

    name, role = f"migmeter_fuzz_{uuid.uuid4().hex[:8]}", f"migmeter_fuzz_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(admin_url)
    owner_url = parts._replace(path="/" + name).geturl()
    try:
        migrate(owner_url)
        with psycopg.connect(owner_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE migmeter_reader, migmeter_writer").format(
                sql.Identifier(role), sql.Literal(SECRET)))
        yield [f"postgresql://{role}:{quote(SECRET)}@{parts.hostname}:{parts.port}/{name}",
               f"postgresql://{role}:{SECRET}@127.0.0.1:{_CLOSED}/{name}",
               f"host={parts.hostname} port={parts.port} dbname={name} user={role} password={SECRET} x"]
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _in_process(argv: list[str]) -> tuple[int, str, list[logging.LogRecord]]:
    """``main(argv)``: exit code, everything printed, every log record; an exception escapes."""
    out, err, handler = io.StringIO(), io.StringIO(), _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse: usage error (2) or --help (0)
                rc = exc.code if isinstance(exc.code, int) else 2
    finally:
        root.removeHandler(handler)
    return rc, out.getvalue() + err.getvalue(), handler.records


def _check(path: tuple[str, ...], argv: list[str], rc: int, printed: str, logged: str) -> None:
    shown = " ".join(argv).encode("ascii", "backslashreplace").decode()[:300]
    assert rc in (0, 1, 2), f"{shown} -> rc {rc}\n{printed}{logged}"
    assert "Traceback" not in printed + logged, f"{shown}\n{printed}{logged}"
    if path not in _PRINTS_THE_URL:
        assert SECRET not in printed + logged, f"{shown} printed the secret:\n{printed}{logged}"
    if path in _NEVER_RUN:
        assert rc in (0, 2), f"{shown} ran: rc {rc}"  # refused by argparse (or --help)


def test_every_subcommand_survives_hostile_arguments(secret_urls: list[str], tmp_path: Path) -> None:
    in_process = sorted(p for p in LEAVES if p not in _SUBPROCESS)
    counts: Counter[str] = Counter()
    saved = {k: os.environ.get(k) for k in (mm_settings.ENV_DATABASE_URL, mm_settings.ENV_STATE_DIR,
                                             mm_settings.ENV_KAFKA_BOOTSTRAP, "XDG_STATE_HOME")}
    os.environ[mm_settings.ENV_STATE_DIR] = str(tmp_path / "state")  # stack status/env: a private, empty stack
    os.environ[mm_settings.ENV_KAFKA_BOOTSTRAP] = f"127.0.0.1:{_CLOSED}"
    os.environ["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    try:
        @settings(max_examples=IN_PROCESS_EXAMPLES, deadline=None, database=None, derandomize=_IN_CI,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(st.sampled_from(in_process).flatmap(lambda p: st.tuples(st.just(p), _argv(p))),
               st.sampled_from(secret_urls))
        def fuzz(case: tuple[tuple[str, ...], list[str]], url: str) -> None:
            path, argv = case
            os.environ[mm_settings.ENV_DATABASE_URL] = url
            rc, printed, records = _in_process(argv)
            logged = "\n".join(logging.Formatter("%(message)s").format(r) for r in records)
            assert not any(r.exc_info for r in records), f"a log record carries a traceback: {argv}"
            _check(path, argv, rc, printed, logged)
            counts[f"rc{rc}"] += 1
            counts[" ".join(path)] += 1

        fuzz()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    tried = sum(v for k, v in counts.items() if k.startswith("rc"))
    print(f"\nCLI fuzz, in-process: {tried} argv tried, {tried} handled (exit 0/1/2, no traceback, no secret): "
          f"{dict(sorted(counts.items()))}")
    assert tried >= IN_PROCESS_EXAMPLES // 2
    # Every in-process leaf was reached, and the fuzz got past argparse into the commands themselves.
    assert all(counts[" ".join(p)] for p in in_process), counts
    assert counts["rc0"] and counts["rc1"] and counts["rc2"], counts


def _bounded(cmd: list[bytes], env: dict[str, str]) -> tuple[int, str]:
    """Run ``cmd``; one still running after _RUN_S (a processor retrying an unreachable database
    forever, as designed) gets SIGTERM and must then exit on its own, cleanly."""
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=_RUN_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise AssertionError(f"still running {_TIMEOUT_S} s after SIGTERM:\n{out.decode(errors='replace')}") from None
    return proc.returncode, out.decode(errors="replace")


def test_process_and_demo_survive_hostile_arguments(kafka_bootstrap: str, new_topic, secret_urls: list[str],  # type: ignore[no-untyped-def]
                                                    tmp_path: Path) -> None:
    topic = new_topic(partitions=1)  # empty: a processor that gets going stops once idle
    suffix = {("process",): ["--bootstrap", kafka_bootstrap, "--topic", topic, "--dead-letter-topic", topic + ".dlq",
                             "--stop-when-idle", "1", "--metrics-port", "0"],
              ("demo",): ["--bootstrap", f"127.0.0.1:{_CLOSED}", "--out", str(tmp_path / "demo")]}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGMETER_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    tried = 0

    @settings(max_examples=SUBPROCESS_EXAMPLES * 2, deadline=None, database=None, phases=_NO_SHRINK, derandomize=_IN_CI,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.sampled_from(sorted(_SUBPROCESS)).flatmap(lambda p: st.tuples(st.just(p), _argv(p))),
           st.sampled_from(secret_urls))
    def fuzz(case: tuple[tuple[str, ...], list[str]], url: str) -> None:
        nonlocal tried
        path, argv = case
        full = argv + suffix[path]
        rc, printed = _bounded([sys.executable.encode(), b"-m", b"migmeter.cli", *map(os.fsencode, full)],
                               {**env, mm_settings.ENV_DATABASE_URL: url})
        _check(path, full, rc, printed, "")
        tried += 1

    fuzz()
    print(f"\nCLI fuzz, subprocesses (process, demo): {tried} argv tried, {tried} handled")
    assert tried >= SUBPROCESS_EXAMPLES
