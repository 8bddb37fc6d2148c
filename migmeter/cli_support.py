"""The plumbing every ``migmeter`` command shares: argument types, ``--database-url``, times,
signals, the ``/metrics`` server and the logging policy. One copy, so commands cannot disagree.

Rules kept here:

1. A numeric flag is a finite number: ``nan``, ``inf`` and ``-inf`` are refused by every type
   below (``float()`` accepts them, and a loop that sleeps ``inf`` seconds never wakes).
2. A time flag accepts the same forms everywhere: an ISO-8601 time or date (no zone = UTC),
   ``now``, or ``now-<N><s|m|h|d>``; it must fall within the bounds the caller passes (the times
   a snapshot can carry), else :class:`ConfigError` names the flag.
3. ``--database-url`` has one help text; the URL itself is resolved by
   :func:`migmeter.settings.database_url` (flag, else the environment, else the local stack).
4. The first SIGTERM or SIGINT asks the command to stop (it finishes its round or batch); a
   second SIGINT interrupts. Handlers are installed only on the main thread and restored after.
5. ``/metrics`` is served by one small WSGI server; port 0 disables it; a port that cannot be
   bound is a configuration error (exit 2), never a traceback. Extra plain-text routes (the
   processor's ``/healthz``, ``/readyz``) are ``path -> () -> (ok, text)``.
6. Only ``migmeter.cli.main`` changes logging, through :func:`configure_logging`; a command
   names the loggers it finds noisy with :func:`quiet_loggers` and main applies that.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from migmeter import settings
from migmeter.errors import ConfigError

__all__ = [
    "positive_float",
    "non_negative_float",
    "positive_int",
    "port",
    "add_database_url",
    "parse_time",
    "TIME_FORMS",
    "stop_on_signals",
    "serve_metrics",
    "DEFAULT_METRICS_ADDR",
    "Route",
    "quiet_loggers",
    "configure_logging",
    "OncePerInterval",
]

log = logging.getLogger("migmeter")

# Loopback by default: /metrics shows host names, GPU UUIDs, topics and partitions, which a site
# may not want on every interface; --metrics-addr 0.0.0.0 lets a remote Prometheus scrape it.
DEFAULT_METRICS_ADDR = "127.0.0.1"
TIME_FORMS = "ISO-8601 (no zone = UTC), a date, 'now' or 'now-6h' (s, m, h, d)"
_RELATIVE_TIME = re.compile(r"^now(?:-(\d+(?:\.\d+)?)([smhd]))?$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Seconds a kafka-python message template is let through once: during a broker outage it logs
# every reconnect at ERROR; our own warning already says the broker is down.
RATE_LIMIT_S = 60.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# ----------------------------------------------------------------------------- argument types (rule 1)


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _finite(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} must be a positive number")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (0 usually means "off")."""
    value = _finite(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} must be a number >= 0")
    return value


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not {what}") from None


def positive_int(text: str) -> int:
    value = _integer(text, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} must be at least 1")
    return value


def port(text: str) -> int:
    """A TCP port, 0..65535 (0 = disabled, for ``--metrics-port``)."""
    value = _integer(text, "a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} outside 0..65535")
    return value


# ----------------------------------------------------------------------------- --database-url (rule 3)


def add_database_url(parser: argparse.ArgumentParser | Any, who: str = "") -> None:
    """``--database-url``; ``who`` names the login the command needs (e.g. "the hypertables' owner")."""
    role = f" of {who}" if who else ""
    parser.add_argument(
        "--database-url", default=None, metavar="URL",
        help=f"PostgreSQL URL{role} (default ${settings.ENV_DATABASE_URL}, else the local stack's); "
        "prefer the environment: flags show in ps",
    )


# ----------------------------------------------------------------------------- times (rule 2)


def parse_time(value: str, flag: str, bounds: tuple[datetime, datetime],
               now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> datetime:
    """``value`` as an aware UTC datetime within ``bounds`` (inclusive); see rule 2."""
    text = value.strip()
    m = _RELATIVE_TIME.match(text)
    ts: datetime | None
    try:
        if m:
            ts = now()
            if m.group(1) is not None:
                ts -= timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])
        else:
            ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
            ts = ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)
    except ValueError:
        raise ConfigError(f"{flag} {value[:40]!r} is not {TIME_FORMS}") from None
    except OverflowError:  # now-99999999999d, 0001-01-01T00:00+14:00: before year 1
        ts = None
    lo, hi = bounds
    if ts is None or not lo <= ts <= hi:
        raise ConfigError(f"{flag} {value[:40]!r} is outside {lo:%Y-%m-%d}..{hi:%Y-%m-%d} (UTC), "
                          "the times snapshots can carry")
    return ts


# ----------------------------------------------------------------------------- signals (rule 4)


@contextmanager
def stop_on_signals(on_stop: Callable[[], None], doing: str) -> Iterator[None]:
    """Within the block, SIGTERM/SIGINT call ``on_stop`` once (logging ``doing``, e.g. "finishing
    the round, then exiting"); a second SIGINT raises KeyboardInterrupt."""
    stopping = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stopping.set()
        log.info("received %s: %s", signal.Signals(signum).name, doing)
        on_stop()

    if threading.current_thread() is not threading.main_thread():
        yield  # signals can only be handled on the main thread; an embedding caller stops it itself
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------- /metrics (rule 5)

Route = Callable[[], tuple[bool, str]]


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _app(registry: CollectorRegistry, routes: Mapping[str, Route]) -> Callable[..., Iterable[bytes]]:
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        route = routes.get(environ.get("PATH_INFO", ""))
        if route is None:
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        ok, text = route()
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")])
        return [text.encode()]

    return app


def serve_metrics(registry: CollectorRegistry, port: int, addr: str,
                  routes: Mapping[str, Route] | None = None) -> Callable[[], None] | None:
    """Serve ``registry`` on ``addr:port`` (and ``routes``) in a daemon thread; port 0 disables.
    Returns a function that stops the server."""
    if port == 0:
        return None
    try:
        family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

        class _Server(ThreadingWSGIServer):
            address_family = family

        server = make_server(addr, port, _app(registry, dict(routes or {})), _Server, handler_class=_QuietHandler)
    except OSError as exc:
        raise ConfigError(f"cannot serve /metrics on {addr}:{port}: {exc.strerror or exc}; "
                          "pick another --metrics-port, or 0 to disable") from None
    thread = threading.Thread(target=server.serve_forever, name="migmeter-metrics", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5.0)

    return stop


# ----------------------------------------------------------------------------- logging (rule 6)


class OncePerInterval(logging.Filter):
    """Lets each message template of the loggers under ``prefix`` through once per ``every_s``.

    Auth or TLS errors of the Kafka client still get through (once a minute), so nothing is hidden;
    records of other loggers are never filtered, nor DEBUG records: they show only when someone
    asked for DEBUG, and a repeated line there is the evidence (a join that never ends).
    """

    def __init__(self, prefix: str = "kafka", every_s: float = RATE_LIMIT_S) -> None:
        super().__init__()
        self._prefix = prefix
        self._every_s = every_s
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO or not record.name.startswith(self._prefix):
            return True
        key = (record.name, record.msg)
        if record.created - self._last.get(key, float("-inf")) < self._every_s:
            return False
        self._last[key] = record.created
        return True


def quiet_loggers(parser: argparse.ArgumentParser, *names: str) -> None:
    """Declare loggers whose INFO lines are noise for this command (shown again with DEBUG)."""
    parser.set_defaults(_quiet_loggers=names)


def configure_logging(level: str, quiet: Iterable[str] = ()) -> None:
    """Process-wide logging; called by ``migmeter.cli.main`` only (rule 6)."""
    numeric = getattr(logging, level)
    logging.basicConfig(level=numeric, format=LOG_FORMAT, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, OncePerInterval) for f in handler.filters):
            handler.addFilter(OncePerInterval())
    if numeric > logging.DEBUG:  # debugging: everything shows
        for name in quiet:
            logging.getLogger(name).setLevel(max(logging.WARNING, numeric))
