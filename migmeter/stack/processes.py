"""Process plumbing of the local stack: spawn steps, pid files, stop-and-reap, ports, logs.

Every service of the stack runs in its own session with a pid file and a log in its home
folder; stopping is a first signal, a wait, then SIGKILL to the whole process group, so
nothing is left behind. Package-internal: ``migmeter.stack`` re-exports none of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from migmeter.errors import StackError

__all__ = [
    "STOP_TIMEOUT_S",
    "LOG_ROTATE_BYTES",
    "progress",
    "pid_alive",
    "pid_cmdline",
    "read_pid",
    "stop_pid",
    "quiet_logger",
    "reap_child",
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
# A service log bigger than this is moved aside (one generation kept) when the service starts.
LOG_ROTATE_BYTES = 50 * 1024 * 1024


def progress(message: str) -> None:
    """Long steps say what they are doing; the CLI shows INFO logs on stderr."""
    log.info("%s", message)


def pid_alive(pid: int) -> bool:
    """True when ``pid`` is a live process (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def pid_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_pid(pid_file: Path, must_contain: str) -> int | None:
    """The pid in ``pid_file`` if that process is alive and its command line mentions
    ``must_contain`` (guards against a recycled pid after a reboot)."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid_alive(pid) and must_contain in pid_cmdline(pid):
        return pid
    return None


def stop_pid(
    pid: int,
    first_signal: signal.Signals,
    timeout_s: float,
    reap: Callable[[], object] | None = None,
) -> None:
    """Signal the process group, wait up to ``timeout_s``, then SIGKILL it."""

    def _signal(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    _signal(first_signal)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    else:
        log.warning("pid %d did not stop within %.0f s; killing it", pid, timeout_s)
        _signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            if reap is not None:
                reap()
            time.sleep(0.1)
    # Children of the group (PostgreSQL backends) go with their leader; make sure of it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, 0)
        time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)
    if reap is not None:
        reap()


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


def reap_child(proc: subprocess.Popen[bytes] | None) -> None:
    """Collect a stopped child's exit status: stop_pid sees a zombie as gone, and a Popen
    dropped unwaited keeps the zombie (and warns)."""
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


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
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
