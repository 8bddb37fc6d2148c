"""One overall deadline per endpoint (issue 18 item 7), against real local servers and a real FIFO.

Each endpoint misbehaves the way a broken exporter does: trickling a byte at a time in the
headers or in the body (a per-read socket timeout never fires), sending less than its
Content-Length, or a ``file:`` FIFO that never yields. A fetch runs in a thread that the
test joins with a generous bound far below the server's misbehaviour (the trickle would go
on for minutes), so code without the deadline fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collector.sources.dcgm import DcgmSource
from collector.sources.fetch import BodyTooLarge, FetchStopped, fetch_bounded
from migmeter.errors import SourceUnavailable

REFERENCE = Path(__file__).parent / "dcgm_reference" / "01-a100-40gb-gpu-plus-gi-nvidia-docs.prom"
# Far above every deadline used here (<= 1 s) and far below how long a server misbehaves
# (TRICKLE_S): a fetch still running this long has no deadline. Not a timing assertion.
JOIN_S = 30.0
TRICKLE_S = 600.0
# The reference scrape's GPU (an A100 with one GPU instance).
REFERENCE_UUID = "GPU-34319582-d595-d1c7-d1d2-179bcfa61660"


class _Server:
    """A raw TCP server on 127.0.0.1 that answers each connection with ``behave(conn)``."""

    def __init__(self, behave: Callable[[socket.socket, threading.Event], None]) -> None:
        self.behave = behave
        self.stop = threading.Event()
        self.connected = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        self.connected.set()
        with conn:
            conn.recv(65536)  # the request
            try:
                self.behave(conn, self.stop)
            except OSError:
                pass  # the client hung up: what a deadline does

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def _trickle(data: bytes, stop: threading.Event, conn: socket.socket) -> None:
    for i in range(len(data)):
        if stop.wait(0.2):
            return
        conn.sendall(data[i:i + 1])


def trickle_headers(conn: socket.socket, stop: threading.Event) -> None:
    """A status line, then headers a byte every 0.2 s for minutes."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    _trickle(b"X-Slow: " + b"a" * int(TRICKLE_S / 0.2) + b"\r\n\r\n", stop, conn)


def trickle_body(conn: socket.socket, stop: threading.Event) -> None:
    """Headers at once, then the body a byte every 0.2 s."""
    body = REFERENCE.read_bytes() * 4
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body))
    _trickle(body, stop, conn)


def short_body(conn: socket.socket, stop: threading.Event) -> None:
    """Content-Length 100, then 50 bytes and the connection closes."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + b"#" * 50)


def healthy(conn: socket.socket, stop: threading.Event) -> None:
    body = REFERENCE.read_bytes()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[socket.socket, threading.Event], None]], _Server]]:
    made: list[_Server] = []

    def make(behave: Callable[[socket.socket, threading.Event], None]) -> _Server:
        made.append(_Server(behave))
        return made[-1]

    yield make
    for s in made:
        s.close()


def in_thread(call: Callable[[], object]) -> object:
    """Run ``call`` in a thread; its result or exception, or a failure if it is still running after JOIN_S."""
    out: list[object] = []

    def target() -> None:
        try:
            out.append(call())
        except BaseException as exc:  # returned for the test to inspect
            out.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(JOIN_S)
    assert not t.is_alive(), f"still fetching after {JOIN_S} s: the deadline did not hold"
    return out[0]


def test_headers_trickling_a_byte_at_a_time_hit_the_deadline(server) -> None:  # type: ignore[no-untyped-def]
    s = server(trickle_headers)
    result = in_thread(lambda: fetch_bounded(s.url, 0.5, 1 << 20))
    assert isinstance(result, TimeoutError) and not isinstance(result, FetchStopped), result


def test_body_trickling_a_byte_at_a_time_hits_the_deadline(server) -> None:  # type: ignore[no-untyped-def]
    s = server(trickle_body)
    result = in_thread(lambda: fetch_bounded(s.url, 0.5, 1 << 20))
    assert isinstance(result, TimeoutError), result


def test_body_shorter_than_content_length_is_an_error(server) -> None:  # type: ignore[no-untyped-def]
    s = server(short_body)
    result = in_thread(lambda: fetch_bounded(s.url, 5.0, 1 << 20))
    assert isinstance(result, OSError) and not isinstance(result, TimeoutError), result
    assert "50 of its Content-Length 100" in str(result)


def test_healthy_endpoint_is_read_whole(server) -> None:  # type: ignore[no-untyped-def]
    s = server(healthy)
    assert in_thread(lambda: fetch_bounded(s.url, 5.0, 1 << 20)) == REFERENCE.read_bytes()


def test_content_length_over_the_cap_is_refused_unread(server) -> None:  # type: ignore[no-untyped-def]
    s = server(healthy)
    size = len(REFERENCE.read_bytes())
    result = in_thread(lambda: fetch_bounded(s.url, 5.0, size - 1))
    assert isinstance(result, BodyTooLarge) and f"Content-Length {size}" in str(result), result


def test_stop_ends_a_fetch_long_before_its_deadline(server) -> None:  # type: ignore[no-untyped-def]
    s = server(trickle_body)
    stop = threading.Event()
    threading.Thread(target=lambda: (s.connected.wait(JOIN_S), stop.set()), daemon=True).start()
    # Deadline 300 s: only the stop event can end this within JOIN_S.
    result = in_thread(lambda: fetch_bounded(s.url, 300.0, 1 << 20, stop=stop))
    assert isinstance(result, FetchStopped), result


def test_fifo_with_a_silent_writer_hits_the_deadline(tmp_path: Path) -> None:
    fifo = tmp_path / "metrics.fifo"
    os.mkfifo(fifo)
    # A writer that holds the FIFO open and never writes: a read would block forever.
    writer = os.open(fifo, os.O_RDWR)
    try:
        result = in_thread(lambda: fetch_bounded(f"file:{fifo}", 0.5, 1 << 20))
    finally:
        os.close(writer)
    assert isinstance(result, TimeoutError), result


def test_fifo_without_a_writer_times_out_instead_of_blocking_the_open(tmp_path: Path) -> None:
    fifo = tmp_path / "metrics.fifo"
    os.mkfifo(fifo)
    # A blocking open() of a FIFO waits for a writer forever; opened non-blocking, the read
    # waits for data (none comes) until the deadline.
    result = in_thread(lambda: fetch_bounded(f"file:{fifo}", 0.5, 1 << 20))
    assert isinstance(result, TimeoutError), result


def test_a_stalled_endpoint_does_not_hold_back_the_others(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    slow_http, good_http = server(trickle_headers), server(healthy)
    fifo = tmp_path / "metrics.fifo"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)
    try:
        src = DcgmSource([slow_http.url, f"file:{fifo}", good_http.url, f"file:{REFERENCE}"],
                         cluster="c", interval_s=15, timeout_s=0.5)
        snaps = in_thread(src.read)
        src.close()
    finally:
        os.close(writer)
    assert not isinstance(snaps, BaseException), snaps
    # The two healthy endpoints serve the same reference scrape: its one GPU, published once
    # per round (one GPU behind two URLs), the second copy counted.
    assert [s.gpu_uuid for s in snaps] == [REFERENCE_UUID]  # type: ignore[union-attr]
    assert src.stats.skipped == {"endpoint_timeout": 2, "duplicate_gpu": 1}


def test_all_endpoints_stalled_is_source_unavailable(server) -> None:  # type: ignore[no-untyped-def]
    src = DcgmSource([server(trickle_headers).url, server(trickle_body).url], cluster="c", interval_s=15,
                     timeout_s=0.5)
    result = in_thread(src.read)
    src.close()
    assert isinstance(result, SourceUnavailable), result
    assert src.stats.skipped == {"endpoint_timeout": 2}


def test_sigterm_stops_the_collector_mid_round(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = server(trickle_body)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGMETER_")}
    log = tmp_path / "collect.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "migmeter.cli", "collect", "--source", "dcgm", "--cluster", "c",
             "--url", s.url, "--url", f"file:{REFERENCE}", "--scrape-timeout", "300", "--stdout"],
            env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
    try:
        assert s.connected.wait(JOIN_S * 2), log.read_text()
        time.sleep(0.3)  # let the round settle into the trickle; not an assertion
        proc.send_signal(signal.SIGTERM)
        # The round's fetch would run 300 s; only honouring SIGTERM ends it within JOIN_S.
        rc = proc.wait(JOIN_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out = log.read_text()
    assert rc == 0, out
    assert "received SIGTERM" in out and "collector stopped" in out, out
    # The healthy endpoint's GPU of the interrupted round was still published.
    assert REFERENCE_UUID in out, out
