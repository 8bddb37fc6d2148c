"""The local stack's process plumbing (``migmeter.stack.processes``), with real processes, no services.

The private-broker restarts of the outage tests failed at random on a loaded machine because
/proc was asked about processes it cannot describe yet, or any more: a child's command line
reads empty until its ``exec`` has finished (after ``Popen`` returned), and a JVM's leader
thread shows state Z while its other threads are still shutting down. These tests build both
situations on purpose, every time.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from migmeter.errors import StackError
from migmeter.stack import processes
from migmeter.stack.processes import ServiceProcess, free_port, pid_alive

# A guard against hanging forever, not a timing assertion.
_DEADLINE_S = 60.0

# The main thread leaves with pthread_exit while a second thread sleeps on: the leader is a
# zombie ("State: Z") for as long as the process lives, exactly like a JVM in its shutdown.
_LEADER_EXITS_FIRST = (
    "import ctypes, threading, time\n"
    "threading.Thread(target=time.sleep, args=(120,)).start()\n"
    "ctypes.CDLL(None).pthread_exit(None)\n"
)


def _service(tmp_path: Path, name: str = "sleeper") -> ServiceProcess:
    return ServiceProcess(name, tmp_path / f"{name}.pid", tmp_path / f"{name}.log", "sleep")


def _status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def _wait(check, what: str) -> None:  # type: ignore[no-untyped-def]
    assert processes._wait_for(check, _DEADLINE_S), f"gave up waiting for {what}"


def test_a_service_is_running_from_the_moment_it_is_spawned(tmp_path: Path) -> None:
    # Asked right after Popen returned, /proc/<pid>/cmdline is often still empty (exec
    # unfinished: 20 of 30 spawns here on an idle machine, longer windows under load), which
    # made a live broker look "not running (it exited?)" and the stopgap retry start a second
    # JVM beside it. Our own child is judged by its handle, whatever /proc says.
    svc = _service(tmp_path)
    for _ in range(30):
        pid = svc.spawn(["sleep", "60"], cwd=tmp_path)
        assert svc.pid() == pid
        assert svc.halt(signal.SIGTERM, 30, ()) == pid
        assert svc.pid() is None and not svc.pid_file.exists()


def test_an_unfinished_exec_does_not_make_a_child_look_dead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The exec window made deterministic: /proc shows the empty command line it shows then.
    svc = _service(tmp_path)
    pid = svc.spawn(["sleep", "60"], cwd=tmp_path)
    try:
        monkeypatch.setattr(processes, "pid_cmdline", lambda _pid: "")
        assert processes.read_pid(svc.pid_file, "sleep") is None  # the pid file alone cannot tell
        assert svc.pid() == pid
    finally:
        svc.halt(signal.SIGTERM, 30, ())


def test_a_zombie_leader_with_live_threads_is_alive(tmp_path: Path) -> None:
    svc = ServiceProcess("half-exited", tmp_path / "h.pid", tmp_path / "h.log", "pthread_exit")
    pid = svc.spawn([sys.executable, "-c", _LEADER_EXITS_FIRST], cwd=tmp_path)
    try:
        _wait(lambda: _status(pid)["State"].startswith("Z"), "the leader thread to exit")
        assert int(_status(pid)["Threads"]) == 2  # the leader (a zombie) and the sleeper
        assert pid_alive(pid)      # was False: "a zombie counts as gone"
        assert svc.pid() == pid    # its handle agrees: the process has not ended
    finally:
        stopped = svc.halt(signal.SIGTERM, 30, ())
    assert stopped == pid
    assert svc.exit_code() is None and svc.pid() is None  # reaped, handle dropped
    assert not Path(f"/proc/{pid}").exists()


def test_stop_of_a_process_started_elsewhere_waits_for_its_last_thread(tmp_path: Path) -> None:
    # `migmeter stack down` stops a broker that an earlier `stack up` started: no handle, only
    # the pid file. It must not return while a thread still holds the broker's files and ports.
    owner = ServiceProcess("half-exited", tmp_path / "h.pid", tmp_path / "h.log", "pthread_exit")
    pid = owner.spawn([sys.executable, "-c", _LEADER_EXITS_FIRST], cwd=tmp_path)
    _wait(lambda: _status(pid)["State"].startswith("Z"), "the leader thread to exit")
    stranger = ServiceProcess("half-exited", tmp_path / "h.pid", tmp_path / "h.log", "pthread_exit")
    # a zombie leader's command line reads empty: the pid file alone cannot identify it
    assert processes.pid_cmdline(pid) == ""
    processes.stop_pid(pid, signal.SIGTERM, 30)
    assert not pid_alive(pid)
    assert owner.exit_code() == -signal.SIGTERM  # the owner reaps it: the SIGTERM ended it
    assert stranger.pid() is None


def test_an_immediate_exit_is_reported_with_its_code_and_output(tmp_path: Path) -> None:
    svc = ServiceProcess("failing", tmp_path / "f.pid", tmp_path / "f.log", "python")
    svc.spawn([sys.executable, "-c", "import sys; print('bad config: no such listener'); sys.exit(3)"], cwd=tmp_path)
    _wait(lambda: svc.pid() is None, "the process to exit")
    report = svc.exit_report()
    assert report.startswith("failing exited with code 3;")
    assert "bad config: no such listener" in report
    assert "=== migmeter: starting failing" in report  # the banner of this start


def test_a_restart_ends_what_the_last_run_left_in_its_group(tmp_path: Path) -> None:
    # PostgreSQL after SIGQUIT: the postmaster is gone at once, its backends (same process
    # group) linger and hold the old shared memory a new postmaster refuses to share.
    svc = _service(tmp_path)
    leader = svc.spawn(["sh", "-c", "sleep 120 & echo child $!; exec sleep 121"], cwd=tmp_path)
    _wait(lambda: "child " in svc.log_path.read_text(), "the child's pid in the log")
    child = int(svc.log_path.read_text().rsplit("child ", 1)[1].split()[0])
    os.kill(leader, signal.SIGKILL)
    _wait(lambda: svc.pid() is None, "the leader to be reaped")
    assert pid_alive(child)  # left behind
    try:
        svc.spawn(["sleep", "60"], cwd=tmp_path)
        assert not pid_alive(child)
    finally:
        svc.halt(signal.SIGTERM, 30, ())


def test_halt_waits_for_the_port_to_close(tmp_path: Path) -> None:
    port = free_port()
    server = (f"import socket, time\ns = socket.create_server(('127.0.0.1', {port}))\nprint('listening', flush=True)\n"
              "time.sleep(120)\n")
    svc = ServiceProcess("listener", tmp_path / "l.pid", tmp_path / "l.log", "create_server")
    svc.spawn([sys.executable, "-c", server], cwd=tmp_path)
    _wait(lambda: processes.port_open(port), "the listener")
    svc.halt(signal.SIGTERM, 30, (port,))
    assert not processes.port_open(port)
    with socket.socket() as s:  # and a restart could bind it again
        s.bind(("127.0.0.1", port))


def test_a_port_held_by_someone_else_after_stop_is_a_clear_error(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", free_port())) as squatter:
        port = squatter.getsockname()[1]
        with pytest.raises(StackError, match=f"port {port} on 127.0.0.1 still accepts connections"):
            processes.wait_ports_closed((port,), 0.5, "listener")


def test_free_ports_are_below_the_ephemeral_range() -> None:
    # bind(0) would hand out a port any outgoing connection may take next (32768-60999 on Linux)
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(processes.PRIVATE_PORTS[0] <= p < low for p in ports), sorted(ports)
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))
