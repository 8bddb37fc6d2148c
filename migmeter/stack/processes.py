"""Process plumbing of the local stack: spawn steps, pid files, stop-and-reap, ports, logs.

Every service of the stack runs in its own session with a pid file and a log in its home
folder; stopping is a first signal, a wait, then SIGKILL to the whole process group, so
nothing is left behind. Package-internal: ``migmeter.stack`` re-exports only ``free_port``
and ``STOP_TIMEOUT_S``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from migmeter.errors import StackError

__all__ = [
    "STOP_TIMEOUT_S",
    "KILL_WAIT_S",
    "PRIVATE_PORTS",
    "LOG_ROTATE_BYTES",
    "progress",
    "pid_alive",
    "pid_cmdline",
    "read_pid",
    "stop_pid",
    "wait_ports_closed",
    "ServiceProcess",
    "quiet_logger",
    "log_tail",
    "rotate_log",
    "port_open",
    "free_port",
    "run_step",
    "require_tool",
    "is_root",
    "apt_install",
]

log = logging.getLogger("migmeter.stack")

# SIGTERM, then this long, then SIGKILL: Kafka's controlled shutdown takes a few seconds.
STOP_TIMEOUT_S = 30.0
# Private services (test brokers and databases) get ports from here, below Linux's default
# ephemeral range (32768-60999) and above most well-known services; see free_port().
PRIVATE_PORTS = (20000, 32767)
# After SIGKILL, how long a process may take to go (a thread in uninterruptible disk I/O).
KILL_WAIT_S = 10.0
# A service log bigger than this is moved aside (one generation kept) when the service starts.
LOG_ROTATE_BYTES = 50 * 1024 * 1024


def progress(message: str) -> None:
    """Long steps say what they are doing; the CLI shows INFO logs on stderr."""
    log.info("%s", message)


def pid_alive(pid: int) -> bool:
    """True while any thread of process ``pid`` runs.

    A zombie leader is not enough to call a process gone: the leader thread of a JVM shows
    state Z as soon as it has exited while its other threads are still shutting down, holding
    the process's files, locks and listening ports (seen: ``State: Z``, ``Threads: 2`` for
    0.1-0.3 s after SIGTERM or SIGKILL of a broker). Only a zombie without other threads is gone.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    state = fields.get("State", "").split()
    threads = fields.get("Threads", "").split()
    if not state or state[0] not in ("Z", "X"):
        return True
    return bool(threads) and threads[0].isdigit() and int(threads[0]) > 1


def pid_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_pid(pid_file: Path, must_contain: str) -> int | None:
    """The pid in ``pid_file`` if that process is alive and its command line mentions
    ``must_contain`` (guards against a recycled pid after a reboot).

    Only for a process another process started: a command line reads empty while the
    process is still inside ``exec`` (for a few milliseconds after ``Popen`` returns, longer on
    a loaded machine) and while it exits, so a process of our own is judged by its handle
    (:class:`ServiceProcess`)."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid_alive(pid) and must_contain in pid_cmdline(pid):
        return pid
    return None


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_pid(pid: int, first_signal: signal.Signals, timeout_s: float,
             child: subprocess.Popen[bytes] | None = None) -> None:
    """Signal the process group, wait up to ``timeout_s`` until every thread of ``pid`` has
    exited, then SIGKILL it and wait again. ``child``: its handle when we started it; it is
    reaped here (a zombie we never wait for is a process that never ends)."""

    def gone() -> bool:
        if child is not None:
            return child.poll() is not None
        return not pid_alive(pid)

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    send(first_signal)
    if not _wait_for(gone, timeout_s):
        log.warning("pid %d did not stop within %.0f s; killing it", pid, timeout_s)
        send(signal.SIGKILL)
        if not _wait_for(gone, KILL_WAIT_S):
            raise StackError(f"pid {pid} is still there {KILL_WAIT_S:.0f} s after SIGKILL")
    # Children of the group (PostgreSQL backends) go with their leader; make sure of it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, 0)
        time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_ports_closed(ports: Sequence[int], timeout_s: float, what: str) -> None:
    """Return once nothing accepts connections on ``ports`` of 127.0.0.1 (a stopped service's
    listeners are closed with its last thread); StackError naming the port after ``timeout_s``."""
    for port in ports:
        if not _wait_for(lambda: not port_open(port), timeout_s):
            raise StackError(f"{what} stopped, but port {port} on 127.0.0.1 still accepts connections "
                             f"after {timeout_s:.0f} s (another process holds it?)")


class ServiceProcess:
    """One long-running service of the stack: started in its own session with its output appended
    to ``log_path`` and its pid in ``pid_file``; stopped with a signal, a wait, then SIGKILL.

    Whether it runs is judged by the process handle when this object started it (alive until its
    last thread has exited; exit code known), else by the pid file and ``/proc`` (a service that
    another process, e.g. an earlier ``migmeter stack up``, started). ``must_contain`` is a word of
    its command line, to tell it from a recycled pid.
    """

    def __init__(self, name: str, pid_file: Path, log_path: Path, must_contain: str) -> None:
        self.name = name
        self.pid_file = pid_file
        self.log_path = log_path
        self.must_contain = must_contain
        self._proc: subprocess.Popen[bytes] | None = None

    def spawn(self, cmd: list[str], *, cwd: Path, user: str | None = None) -> int:
        """Start ``cmd`` (log rotated, a banner line first); returns its pid."""
        self._end_leftovers()
        rotate_log(self.log_path)
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n=== migmeter: starting {self.name} at {time.ctime()} ===\n".encode())
            logf.flush()
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=cwd,
                start_new_session=True, user=user,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        return self._proc.pid

    def _end_leftovers(self) -> None:
        """A previous run that ended by itself (SIGKILL, SIGQUIT, a crash) may leave members of its
        process group behind, e.g. PostgreSQL backends after an immediate shutdown, still holding
        its shared memory: SIGKILL them and wait until the group is empty before the next start."""
        if self._proc is None or self._proc.poll() is None:
            return
        group = self._proc.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
        _wait_for(lambda: not _group_exists(group), KILL_WAIT_S)

    def pid(self) -> int | None:
        """Its pid while it runs, else None."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        return read_pid(self.pid_file, self.must_contain)

    def exit_code(self) -> int | None:
        """The exit status of the process this object started, once it has ended (negative: the
        signal that ended it); None while it runs or when another process started it."""
        return None if self._proc is None else self._proc.poll()

    def exit_report(self) -> str:
        """Why it is not running, with the last lines of its log (its stdout and stderr)."""
        code = self.exit_code()
        how = "is not running" if code is None else f"exited with code {code}"
        return f"{self.name} {how}; last lines of {self.log_path}:\n{log_tail(self.log_path)}"

    def halt(self, sig: signal.Signals, timeout_s: float, ports: Sequence[int]) -> int | None:
        """Signal, wait until every thread has exited (reaped when it is ours) and ``ports`` are
        closed, SIGKILL after ``timeout_s``. Returns the pid it stopped (None: nothing ran)."""
        pid = self.pid()
        if pid is not None:
            child = self._proc if self._proc is not None and self._proc.pid == pid else None
            stop_pid(pid, sig, timeout_s, child)
            wait_ports_closed(ports, timeout_s, self.name)
        self._proc = None
        self.pid_file.unlink(missing_ok=True)
        return pid


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.WARNING) -> Iterator[None]:
    """Readiness probes connect often; the client's INFO chatter would drown the progress lines."""
    logger = logging.getLogger(name)
    old = logger.level
    if logger.getEffectiveLevel() < level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def rotate_log(log_path: Path) -> None:
    """Keep one previous log: a long-lived dev stack must not fill the disk with INFO lines."""
    with contextlib.suppress(OSError):
        if log_path.stat().st_size > LOG_ROTATE_BYTES:
            log_path.replace(log_path.with_name(log_path.name + ".1"))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    """A TCP port that nothing on 127.0.0.1 holds now, chosen outside the kernel's ephemeral range.

    A port from that range (what ``bind(0)`` hands out) can become, at any moment, the local
    port of some outgoing connection, or of a client connecting to itself while it retries a
    stopped broker on that very port (TCP simultaneous open); a service restarted on it then
    fails to bind. Below the range only explicit binds take ports.
    """
    low, _ = _ephemeral_range()
    lo, hi = PRIVATE_PORTS
    hi = min(hi, low - 1)
    rng = random.Random()
    for _ in range(200) if hi > lo else ():
        port = rng.randint(lo, hi)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no room below the ephemeral range: the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2]
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def run_step(cmd: list[str], what: str, *, cwd: Path | None = None, user: str | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a setup step; on failure raise StackError with the step's output tail."""
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, user=user, env=env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, check=False,
        )
    except FileNotFoundError as exc:
        raise StackError(f"{what}: {cmd[0]} not found ({exc})") from exc
    if proc.returncode != 0:
        out = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise StackError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{out}")
    return proc


def require_tool(tool: str, fix: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StackError(f"'{tool}' is required for the local stack but not installed; fix: {fix}")
    return path


def is_root() -> bool:
    return os.geteuid() == 0


def apt_install(packages: list[str], why: str) -> None:
    """Install Debian packages (root only); otherwise say exactly what to run."""
    cmd = "apt-get install -y " + " ".join(packages)
    if not is_root():
        raise StackError(f"{why}: missing packages; fix: sudo {cmd}")
    if shutil.which("apt-get") is None:
        raise StackError(f"{why}: needs {' '.join(packages)} and there is no apt-get; install them by hand")
    progress(f"installing {' '.join(packages)} with apt-get ({why}) ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        run_step(["apt-get", "install", "-y", "--no-install-recommends", *packages], "apt-get install", env=env)
    except StackError:
        # A fresh machine may have no package lists yet.
        run_step(["apt-get", "update"], "apt-get update", env=env)
        run_step(["apt-get", "install", "-y", "--no-install-recommends", *packages], "apt-get install", env=env)
