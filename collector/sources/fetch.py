"""Fetching an endpoint's body with ONE overall deadline: ``http(s)://`` or ``file:PATH``.

A scrape must never stall the poll loop's round, whatever the endpoint does:

1. One deadline per fetch covers everything — connecting, the status line, every header,
   every byte of the body. Socket timeouts alone bound each ``recv`` only, so a server that
   trickles a byte a second (in the headers or in the body) would run on indefinitely; here a
   watchdog thread shuts the socket down at the deadline, which wakes the blocked read.
2. The same watchdog also fires when ``stop`` (the collector's SIGTERM event) is set, so a
   shutdown mid-round does not wait for the slowest endpoint.
3. A body shorter than its ``Content-Length`` is an error, never a complete scrape (half an
   exposition would publish half the GPUs and look healthy).
4. ``file:PATH`` is opened non-blocking: a FIFO with no data (or no writer) cannot block the
   open or the read; the read waits with ``select`` until the same deadline.
5. Bodies over ``max_bytes`` are refused (:class:`BodyTooLarge`) without reading them whole.

Everything an endpoint can do wrong surfaces as :class:`BodyTooLarge`, ``TimeoutError``
(deadline or stop) or ``OSError`` (refused, HTTP errors, malformed responses), which the
sources count per reason.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from migmeter.errors import SourceUnavailable

__all__ = ["BodyTooLarge", "FetchStopped", "fetch_bounded", "stoppable"]

# Bytes per read: large enough that a healthy exporter's page (a few hundred KiB) takes a
# handful of reads.
_READ_CHUNK = 64 * 1024
# How much of an HTTP error body goes into the error message (Prometheus explains itself there).
_ERROR_DETAIL_BYTES = 300
# How often the watchdog looks at the stop event: SIGTERM must end a round within a second.
_STOP_CHECK_S = 0.1

# (url, timeout_s, max_bytes) -> body; what the sources accept as their HTTP getter.
HttpGet = Callable[[str, float, int], bytes]


class BodyTooLarge(SourceUnavailable):
    """An endpoint sent more than ``max_bytes``; the body is discarded, not parsed."""


class FetchStopped(SourceUnavailable, TimeoutError):
    """The collector is stopping: the fetch was cut short (a TimeoutError, counted as one)."""


def stoppable(stop: threading.Event) -> HttpGet:
    """A getter for :class:`collector.sources.dcgm.DcgmSource` that also ends when ``stop`` is set."""

    def get(url: str, timeout_s: float, max_bytes: int) -> bytes:
        return fetch_bounded(url, timeout_s, max_bytes, stop=stop)

    return get


def fetch_bounded(url: str, timeout_s: float, max_bytes: int, *, stop: threading.Event | None = None) -> bytes:
    """GET ``url`` within ``timeout_s`` seconds in all, at most ``max_bytes`` (see module doc)."""
    if url.startswith("file:"):
        path = Path(url[len("file://"):] if url.startswith("file://") else url[len("file:"):])
        return _read_file(path, time.monotonic() + timeout_s, timeout_s, max_bytes, stop)
    return _get_http(url, timeout_s, max_bytes, stop)


# ------------------------------------------------------------------ files


def _read_file(path: Path, deadline: float, timeout_s: float, max_bytes: int, stop: threading.Event | None) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        body = _Capped(max_bytes, str(path))
        while True:
            if not regular:
                # A FIFO or device: wait for data, but never past the deadline or a stop.
                _wait_readable(fd, deadline, timeout_s, stop, path)
            try:
                chunk = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                continue  # readable raced with another reader; wait again
            if not chunk:
                return body.joined()
            body.add(chunk)
    finally:
        os.close(fd)


def _wait_readable(fd: int, deadline: float, timeout_s: float, stop: threading.Event | None, path: Path) -> None:
    while True:
        if stop is not None and stop.is_set():
            raise FetchStopped(f"{path}: the collector is stopping")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{path} gave no complete body within {timeout_s}s")
        ready, _, _ = select.select([fd], [], [], min(left, _STOP_CHECK_S))
        if ready:
            return


# ------------------------------------------------------------------ HTTP


class _Watchdog:
    """Shuts a connection's socket down at the deadline or on stop, waking any blocked read."""

    def __init__(self, conn: http.client.HTTPConnection, deadline: float, stop: threading.Event | None) -> None:
        self._conn = conn
        self._deadline = deadline
        self._stop = stop
        self._done = threading.Event()
        self.fired: str | None = None  # "deadline" or "stop" once it cut the connection
        self._thread = threading.Thread(target=self._run, name="fetch-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            left = self._deadline - time.monotonic()
            wait = left if self._stop is None else min(left, _STOP_CHECK_S)
            if self._done.wait(max(wait, 0.0)):
                return
            if self._stop is not None and self._stop.is_set():
                self.fired = "stop"
            elif time.monotonic() >= self._deadline:
                self.fired = "deadline"
            else:
                continue
            sock = self._conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by the reader: nothing left to wake
            return


def _connection(url: str, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OSError(f"not an http(s) URL with a host: {parts.scheme}://...")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    try:
        port = parts.port
    except ValueError as exc:
        raise OSError(f"bad port in URL: {exc}") from None
    return cls(parts.hostname, port, timeout=timeout_s), target


def _get_http(url: str, timeout_s: float, max_bytes: int, stop: threading.Event | None) -> bytes:
    deadline = time.monotonic() + timeout_s
    conn, target = _connection(url, timeout_s)
    watchdog = _Watchdog(conn, deadline, stop)
    resp: http.client.HTTPResponse | None = None
    try:
        with watchdog:
            conn.request("GET", target, headers={"Accept": "text/plain;version=0.0.4"})
            resp = conn.getresponse()
            body = _read_body(resp, max_bytes)
    except (http.client.HTTPException, OSError, ValueError) as exc:
        # What a cut connection looks like from inside http.client varies (EOF, RemoteDisconnected,
        # IncompleteRead, a closed-file ValueError): the watchdog says what really happened.
        if watchdog.fired == "stop":
            raise FetchStopped("the collector is stopping") from None
        if watchdog.fired == "deadline":
            raise TimeoutError(f"no complete response within {timeout_s}s") from None
        if isinstance(exc, OSError):
            raise
        raise OSError(f"{exc.__class__.__name__}: {exc}") from None
    finally:
        if resp is not None:
            resp.close()  # the response holds its own reference to the socket
        conn.close()
    if watchdog.fired == "stop":
        raise FetchStopped("the collector is stopping")
    if watchdog.fired == "deadline":
        raise TimeoutError(f"no complete response within {timeout_s}s")
    return body


def _read_body(resp: http.client.HTTPResponse, max_bytes: int) -> bytes:
    """Status check, then the body in pieces (the watchdog bounds how long they may take)."""
    if resp.status >= 400:
        detail = resp.read(_ERROR_DETAIL_BYTES).decode("utf-8", errors="replace").strip()
        raise OSError(f"HTTP {resp.status} {resp.reason}: {detail}")
    if resp.status != 200:
        raise OSError(f"HTTP {resp.status} {resp.reason}: expected 200 (redirects are not followed)")
    length_header = resp.getheader("Content-Length")
    expected: int | None = None
    if length_header is not None:
        if not length_header.strip().isdigit():
            raise OSError(f"malformed Content-Length {length_header[:40]!r}")
        expected = int(length_header)
        if expected > max_bytes:
            raise BodyTooLarge(f"Content-Length {expected} is over {max_bytes} bytes")
    body = _Capped(max_bytes, "the body")
    while chunk := resp.read(_READ_CHUNK):
        body.add(chunk)
    if expected is not None and body.size != expected:
        raise OSError(f"body ended after {body.size} of its Content-Length {expected} bytes")
    return body.joined()


class _Capped:
    """Body pieces, refused past ``max_bytes`` as they arrive (never read whole first)."""

    def __init__(self, max_bytes: int, what: str) -> None:
        self.max_bytes = max_bytes
        self.what = what
        self.size = 0
        self._parts: list[bytes] = []

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise BodyTooLarge(f"{self.what} is over {self.max_bytes} bytes")
        self._parts.append(chunk)

    def joined(self) -> bytes:
        return b"".join(self._parts)
