"""The /metrics endpoints of collector and processor listen on loopback unless told otherwise.

Each process runs for real; the test reads the kernel's socket table (/proc/net/tcp, tcp6)
for the listening socket on the chosen port and tries to connect through a non-loopback
address of this machine. ``--metrics-addr 0.0.0.0`` is run too, to show the check can fail.
"""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from tests.fix_faults import Proc, free_port, spawn, wait_until

_LISTEN = "0A"


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as the kernel writes them) of sockets listening on ``port``."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == _LISTEN:
                out.add(addr)
    return out


def _non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (the one outbound traffic would use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent by a UDP connect
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def _answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2) as resp:  # noqa: S310
            return resp.status == 200
    except OSError:
        return False


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _collector(tmp_path: Path, port: int, *extra: str) -> Proc:
    return spawn(f"collect-{port}", ["collect", "--source", "simulate", "--stdout", "--interval", "15",
                                     "--metrics-port", str(port), *extra], tmp_path)


def _processor(tmp_path: Path, port: int) -> Proc:
    # Nothing to reach: /metrics is served before the processor looks for Kafka or the database.
    return spawn(f"process-{port}", ["process", "--bootstrap", f"127.0.0.1:{free_port()}", "--database-url",
                                     f"postgresql://nobody:pw@127.0.0.1:{free_port()}/none", "--metrics-port",
                                     str(port)], tmp_path)


@pytest.mark.parametrize("start", [_collector, _processor], ids=["collector", "processor"])
def test_metrics_bind_to_loopback_by_default(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    proc = start(tmp_path, port)
    try:
        wait_until(lambda: _answers(port), "/metrics to answer on 127.0.0.1", alive=[proc], timeout_s=60)
        assert _listening_addresses(port) == {"0100007F"}, _listening_addresses(port)  # 127.0.0.1 only
        other = _non_loopback_address()
        if other is not None:
            assert not _reachable(other, port), f"/metrics answers on {other}"
    finally:
        proc.kill()  # binding is checked, not shutdown (a processor with no broker waits 30 s to bootstrap)


def test_the_check_sees_an_explicit_wildcard_bind(tmp_path: Path) -> None:
    port = free_port()
    proc = _collector(tmp_path, port, "--metrics-addr", "0.0.0.0")
    try:
        wait_until(lambda: _answers(port), "/metrics to answer", alive=[proc], timeout_s=60)
        assert _listening_addresses(port) == {"00000000"}
        other = _non_loopback_address()
        if other is not None:
            assert _reachable(other, port)
    finally:
        proc.kill()  # binding is checked, not shutdown (a processor with no broker waits 30 s to bootstrap)
