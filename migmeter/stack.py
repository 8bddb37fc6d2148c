"""The Docker-free local stack: real Apache Kafka (KRaft) and PostgreSQL + TimescaleDB on loopback.

Why not mocks: the processor's exactly-once design rests on real consumer-group rebalances,
committed offsets and database transactions, so tests, CI and the README run against the
real services. Why not Docker: the machines this runs on have none, and a developer needs
only Java, Maven and the distribution's PostgreSQL.

Two building blocks, each usable on its own ports so a test can run a PRIVATE broker or
database (outage tests stop and restart their own, never the shared stack):

- :class:`KafkaNode` — one combined broker+controller KRaft node from Maven Central jars.
- :class:`PostgresCluster` — a private ``initdb`` cluster with TimescaleDB preloaded, run as
  an unprivileged user (PostgreSQL refuses root).

``up()``, ``down()``, ``status()`` and ``env_lines()`` drive the default stack under
``settings.state_dir()``. Every process is started in its own session with a pid file and a
log in its home folder; stopping is SIGTERM (SIGINT for PostgreSQL's fast shutdown), a
wait, then SIGKILL, so ``down`` leaves nothing behind.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import grp
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from kafka import KafkaAdminClient
from kafka.errors import KafkaConfigurationError, KafkaError
from psycopg import sql

from migmeter import settings
from migmeter.errors import StackError

__all__ = [
    "KAFKA_VERSION",
    "KAFKA_PORT",
    "KAFKA_CONTROLLER_PORT",
    "KAFKA_DEFAULT_PARTITIONS",
    "PG_MAJOR",
    "SOCKET_DIR_MODE",
    "pg_hba",
    "pg_ident",
    "KafkaNode",
    "KafkaCluster",
    "KafkaTls",
    "PostgresTls",
    "PostgresCluster",
    "ServiceStatus",
    "StackStatus",
    "default_kafka",
    "default_postgres",
    "up",
    "down",
    "status",
    "env_lines",
]

log = logging.getLogger("migmeter.stack")

# Pinned broker. kafka-python 3.0.x (our client) is tested against 4.x brokers. The same pin
# is the default in compose/local/kafka-pom.xml and compose/docker-compose.yml.
KAFKA_VERSION = "4.1.1"
# log4j-core version that kafka-server 4.1.x depends on; the SLF4J binding must match it.
KAFKA_LOG4J_VERSION = "2.24.3"
KAFKA_PORT = 9092
KAFKA_CONTROLLER_PORT = 9093
# Default partitions of auto-created topics: more than one so consumer-group tests see a
# real assignment split, few enough that a 2-core machine creates topics instantly.
KAFKA_DEFAULT_PARTITIONS = 4
# A broker needs little memory for tests and demos; keep it small on 2-core CI machines.
KAFKA_HEAP = "-Xmx512m"
# Maven's default dependency plugin on 3.8 is old; pin one that behaves.
_MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"

PG_MAJOR = 15
PG_BIN = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
# The unix socket directory belongs to the server user alone: no other OS user can reach the
# socket at all (defence in depth on top of peer authentication in pg_hba.conf).
SOCKET_DIR_MODE = 0o700
# pg_ident.conf map naming the OS users allowed to log in as the server's superuser role.
PG_IDENT_MAP = "migmeter"
# Debian 13 ships TimescaleDB's source (Apache-only build); it builds against PG 15 in seconds.
_TIMESCALEDB_SUITE = "trixie"
_TIMESCALEDB_SOURCE_PACKAGE = "timescaledb"

# How long a service may take to become ready. A cold JVM on a 2-core machine needs ~10 s.
KAFKA_START_TIMEOUT_S = 90.0
# A JVM that dies at once on start gets one more try (see KafkaNode.start), after a short pause.
KAFKA_START_RETRIES = 1
KAFKA_RESTART_PAUSE_S = 2.0
PG_START_TIMEOUT_S = 60.0
# SIGTERM, then this long, then SIGKILL: Kafka's controlled shutdown takes a few seconds.
STOP_TIMEOUT_S = 30.0
# A service log bigger than this is moved aside (one generation kept) when the service starts.
LOG_ROTATE_BYTES = 50 * 1024 * 1024

_REPO_COMPOSE = settings.PROJECT_ROOT / "compose" / "local"
KAFKA_POM = _REPO_COMPOSE / "kafka-pom.xml"


# --------------------------------------------------------------------------- processes


def _progress(message: str) -> None:
    """Long steps say what they are doing; the CLI shows INFO logs on stderr."""
    log.info("%s", message)


def _pid_alive(pid: int) -> bool:
    """True when ``pid`` is a live process (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _pid_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _read_pid(pid_file: Path, must_contain: str) -> int | None:
    """The pid in ``pid_file`` if that process is alive and its command line mentions
    ``must_contain`` (guards against a recycled pid after a reboot)."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if _pid_alive(pid) and must_contain in _pid_cmdline(pid):
        return pid
    return None


def _stop_pid(
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
        if not _pid_alive(pid):
            break
        time.sleep(0.1)
    else:
        log.warning("pid %d did not stop within %.0f s; killing it", pid, timeout_s)
        _signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
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
def _quiet_logger(name: str, level: int = logging.WARNING) -> Iterator[None]:
    """Readiness probes connect often; the client's INFO chatter would drown the progress lines."""
    logger = logging.getLogger(name)
    old = logger.level
    if logger.getEffectiveLevel() < level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def _reap(proc: subprocess.Popen[bytes] | None) -> None:
    """Collect a stopped child's exit status: _stop_pid sees a zombie as gone, and a Popen
    dropped unwaited keeps the zombie (and warns)."""
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _rotate(log_path: Path) -> None:
    """Keep one previous log: a long-lived dev stack must not fill the disk with INFO lines."""
    with contextlib.suppress(OSError):
        if log_path.stat().st_size > LOG_ROTATE_BYTES:
            log_path.replace(log_path.with_name(log_path.name + ".1"))


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _run(cmd: list[str], what: str, *, cwd: Path | None = None, user: str | None = None,
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


def _require(tool: str, fix: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StackError(f"'{tool}' is required for the local stack but not installed; fix: {fix}")
    return path


def _is_root() -> bool:
    return os.geteuid() == 0


def _apt_install(packages: list[str], why: str) -> None:
    """Install Debian packages (root only); otherwise say exactly what to run."""
    cmd = "apt-get install -y " + " ".join(packages)
    if not _is_root():
        raise StackError(f"{why}: missing packages; fix: sudo {cmd}")
    if shutil.which("apt-get") is None:
        raise StackError(f"{why}: needs {' '.join(packages)} and there is no apt-get; install them by hand")
    _progress(f"installing {' '.join(packages)} with apt-get ({why}) ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        _run(["apt-get", "install", "-y", "--no-install-recommends", *packages], "apt-get install", env=env)
    except StackError:
        # A fresh machine may have no package lists yet.
        _run(["apt-get", "update"], "apt-get update", env=env)
        _run(["apt-get", "install", "-y", "--no-install-recommends", *packages], "apt-get install", env=env)


# --------------------------------------------------------------------------- Kafka


def _kafka_jars_complete(jars_dir: Path) -> bool:
    return (jars_dir / ".complete").exists() and any(jars_dir.glob("kafka_2.13-*.jar"))


@dataclass(frozen=True)
class KafkaTls:
    """The client listener of a :class:`KafkaNode` speaks TLS (security protocol ``SSL``).

    ``keystore`` is one PEM file with the node's unencrypted PKCS#8 key and its certificate
    chain, ``truststore`` the PEM of the CA that signs client certificates (and the node's own,
    for inter-broker traffic on the same listener). ``client_auth`` requires a client
    certificate (mutual TLS). Paths only: nothing secret is copied into ``server.properties``.
    """

    keystore: Path
    truststore: Path
    client_auth: bool = False


class KafkaNode:
    """One Apache Kafka KRaft node (broker + controller in one JVM) on 127.0.0.1.

    ``jars_dir`` holds the broker's jars (resolved once from Maven Central, shared by every
    node of the same version); ``home`` holds this node's config, data, log and pid file.

    Alone by default. For a cluster, give each node its ``node_id``, the same ``voters``
    (``id@127.0.0.1:controller_port`` of every node, comma-separated) and ``cluster_id``, and a
    ``replication`` factor and ``min_insync`` replicas for every topic, the internal ones too.
    ``tls`` turns the client listener into TLS (see :class:`KafkaTls`).
    """

    def __init__(
        self,
        jars_dir: Path,
        home: Path,
        port: int = KAFKA_PORT,
        controller_port: int = KAFKA_CONTROLLER_PORT,
        *,
        partitions: int = KAFKA_DEFAULT_PARTITIONS,
        version: str = KAFKA_VERSION,
        node_id: int = 1,
        voters: str | None = None,
        cluster_id: str | None = None,
        replication: int = 1,
        min_insync: int = 1,
        tls: KafkaTls | None = None,
    ) -> None:
        self.jars_dir = Path(jars_dir)
        self.home = Path(home)
        self.port = port
        self.controller_port = controller_port
        self.partitions = partitions
        self.version = version
        self.node_id = node_id
        self.voters = voters or f"{node_id}@127.0.0.1:{controller_port}"
        self.cluster_id = cluster_id
        self.replication = replication
        self.min_insync = min_insync
        self.tls = tls
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"KafkaNode({self.bootstrap!r}, home={str(self.home)!r})"

    # paths
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_path(self) -> Path:
        return self.home / "kafka.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def config_path(self) -> Path:
        return self.home / "server.properties"

    # install
    def ensure_installed(self) -> None:
        """Resolve the broker's jars from Maven Central into ``jars_dir`` unless already there."""
        if _kafka_jars_complete(self.jars_dir):
            return
        _require("java", "apt-get install -y openjdk-17-jre-headless")
        mvn = _require("mvn", "apt-get install -y maven")
        self.jars_dir.mkdir(parents=True, exist_ok=True)
        for old in self.jars_dir.glob("*.jar"):
            old.unlink()  # never mix versions in one jars dir
        pom = self.jars_dir / "pom.xml"
        shutil.copyfile(KAFKA_POM, pom)
        # Keep Maven's download cache with the rest of the stack, so removing the state dir
        # is a full reset and CI can cache one folder.
        repo = self.jars_dir.parent / "m2"
        _progress(f"resolving Apache Kafka {self.version} jars from Maven Central (first run only) ...")
        _run(
            [
                mvn, "-B", "-q", f"-Dmaven.repo.local={repo}", "-f", str(pom),
                f"{_MAVEN_DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime", f"-DoutputDirectory={self.jars_dir}",
                f"-Dkafka.version={self.version}", f"-Dlog4j.version={KAFKA_LOG4J_VERSION}",
            ],
            "resolving Kafka jars with Maven",
            cwd=self.jars_dir,
        )
        found = _run(
            ["java", "-cp", f"{self.jars_dir}/*", "kafka.Kafka", "--version"],
            "Kafka smoke test (kafka.Kafka --version)",
        )
        if self.version not in found.stdout + found.stderr:
            raise StackError(f"Kafka jars report {found.stdout.strip()!r}, expected {self.version}")
        (self.jars_dir / ".complete").write_text(self.version + "\n")
        _progress(f"Kafka {self.version}: {len(list(self.jars_dir.glob('*.jar')))} jars in {self.jars_dir}")

    # config
    def _write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        rf, isr = str(self.replication), str(self.min_insync)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": str(self.partitions),
            "auto.create.topics.enable": "true",
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "share.coordinator.state.topic.num.partitions": "1",
            # Tests start consumers one after another; don't wait 3 s for more to join.
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "log.retention.hours": "168",
        }
        props.update(self._tls_props())
        self.config_path.write_text(
            "# written by migmeter/stack.py on every start; edit the code, not this file\n"
            + "".join(f"{k}={v}\n" for k, v in props.items())
        )
        (self.home / "log4j2.properties").write_text(_KAFKA_LOG4J2)

    def _tls_props(self) -> dict[str, str]:
        """The client listener as TLS (named SSL; inter-broker traffic uses it too)."""
        if self.tls is None:
            return {}
        return {
            "listeners": f"SSL://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"SSL://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "SSL",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SSL:SSL",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.tls.keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.tls.truststore),
            "ssl.client.auth": "required" if self.tls.client_auth else "none",
        }

    def _format_storage(self) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cp = f"{self.jars_dir}/*"
        cluster_id = self.cluster_id or _run(["java", "-cp", cp, "kafka.tools.StorageTool", "random-uuid"],
                                             "Kafka cluster id").stdout.strip().splitlines()[-1]
        _progress(f"formatting Kafka storage in {self.data_dir}")
        _run(["java", "-cp", cp, "kafka.tools.StorageTool", "format", "-t", cluster_id,
              "-c", str(self.config_path), "-g"], "formatting Kafka storage")

    # lifecycle
    def pid(self) -> int | None:
        """The broker's pid when it runs (from its pid file), else None."""
        if self._proc is not None:
            self._proc.poll()
        return _read_pid(self.pid_file, "kafka.Kafka")

    def is_running(self) -> bool:
        return self.pid() is not None

    def is_ready(self, timeout_s: float = 3.0) -> bool:
        """True when the broker answers a metadata request (an open port is not enough)."""
        if not _port_open(self.port):
            return False
        ms = int(timeout_s * 1000)
        with _quiet_logger("kafka"):
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=self.bootstrap, request_timeout_ms=ms,
                    bootstrap_timeout_ms=ms, client_id="migmeter-stack-probe",
                    **self.client_options(),
                )
            except KafkaConfigurationError:
                raise  # our bug, not a broker that is down
            except (KafkaError, OSError, ValueError):
                return False
            try:
                admin.list_topics()
                return True
            except (KafkaError, OSError, ValueError):
                return False
            finally:
                admin.close()

    def client_options(self) -> dict[str, Any]:
        """Extra kafka-python settings clients need to reach this node (none: plaintext).

        A node configured for SASL overrides this, and the readiness probe follows. A TLS node
        is probed with its own certificate (a client certificate when ``client_auth``).
        """
        if self.tls is None:
            return {}
        opts: dict[str, Any] = {"security_protocol": "SSL", "ssl_cafile": str(self.tls.truststore)}
        if self.tls.client_auth:
            opts["ssl_certfile"] = str(self.tls.keystore)
        return opts

    def start(self, wait: bool = True, timeout_s: float = KAFKA_START_TIMEOUT_S) -> None:
        """Start the node (idempotent); with ``wait``, return once it is ready."""
        if self.is_running():
            if wait:
                self.wait_ready(timeout_s)
            return
        if _port_open(self.port) or _port_open(self.controller_port):
            raise StackError(
                f"port {self.port} or {self.controller_port} on 127.0.0.1 is taken by another "
                f"process; stop it or pick other ports (home {self.home})"
            )
        self.ensure_installed()
        self._write_config()
        self._format_storage()
        cmd = [
            "java", "-Xms128m", KAFKA_HEAP, "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            f"-Dmigmeter.home={self.home}",  # lets pid checks tell our brokers apart
            "-cp", f"{self.jars_dir}/*", "kafka.Kafka", str(self.config_path),
        ]
        _rotate(self.log_path)
        for attempt in range(1 + KAFKA_START_RETRIES):
            self._spawn(cmd)
            if not wait:
                return
            try:
                self.wait_ready(timeout_s)
                return
            except StackError:
                # A JVM that exits at once, writing nothing, right after the previous one on the
                # same home stopped (seen on loaded machines when a test restarts a private node):
                # one more try; a lasting cause (a bad config) fails the same way again.
                if attempt == KAFKA_START_RETRIES or self.is_running():
                    raise
                log.warning("Kafka on %s exited during start (exit code %s); starting it once more",
                            self.bootstrap, self._proc.poll() if self._proc is not None else "?")
                self.pid_file.unlink(missing_ok=True)
                time.sleep(KAFKA_RESTART_PAUSE_S)

    def _spawn(self, cmd: list[str]) -> None:
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n=== migmeter: starting Kafka {self.version} at {time.ctime()} ===\n".encode())
            logf.flush()
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                cwd=self.home, start_new_session=True,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        _progress(f"Kafka {self.version} starting on {self.bootstrap} (pid {self._proc.pid}, log {self.log_path})")

    def wait_ready(self, timeout_s: float = KAFKA_START_TIMEOUT_S) -> None:
        """Wait until a metadata request answers; fail fast with the log tail if the JVM dies."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.is_running():
                raise StackError(
                    f"Kafka on {self.bootstrap} is not running (it exited?); last lines of "
                    f"{self.log_path}:\n{_tail(self.log_path)}"
                )
            if self.is_ready(timeout_s=2.0):
                _progress(f"Kafka ready on {self.bootstrap}")
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"Kafka on {self.bootstrap} not ready after {timeout_s:.0f} s; last lines of "
                    f"{self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL, no controlled shutdown (a crashed broker); a later :meth:`start` recovers its log."""
        self._halt(signal.SIGKILL, STOP_TIMEOUT_S, "killing")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (controlled shutdown), wait, then SIGKILL. Idempotent."""
        self._halt(signal.SIGTERM, timeout_s, "stopping")

    def _halt(self, sig: signal.Signals, timeout_s: float, verb: str) -> None:
        pid = self.pid()
        if pid is not None:
            _progress(f"{verb} Kafka on {self.bootstrap} (pid {pid})")
            reap = self._proc.poll if self._proc is not None and self._proc.pid == pid else None
            _stop_pid(pid, sig, timeout_s, reap)
        _reap(self._proc)
        self._proc = None
        self.pid_file.unlink(missing_ok=True)


class KafkaCluster:
    """``size`` KRaft nodes on loopback from the same jars, each broker and controller, one quorum.

    Every topic (the internal ones too) gets ``replication`` replicas and needs ``min_insync``
    of them to accept a write with ``acks=all``. Ports are free ones picked now; node ids are
    1..size. Test and release-soak kit: nodes are killed, stopped and restarted one by one.
    """

    def __init__(self, jars_dir: Path, home: Path, size: int = 3, *, replication: int = 3, min_insync: int = 2,
                 partitions: int = KAFKA_DEFAULT_PARTITIONS) -> None:
        ports = [(_free_port(), _free_port()) for _ in range(size)]
        voters = ",".join(f"{i}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports, 1))
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.nodes = {i: KafkaNode(jars_dir, home / f"node{i}", p, c, partitions=partitions, node_id=i, voters=voters,
                                   cluster_id=cluster_id, replication=replication, min_insync=min_insync)
                      for i, (p, c) in enumerate(ports, 1)}

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes.values())

    def start(self, timeout_s: float = KAFKA_START_TIMEOUT_S) -> None:
        """Start every node that is not running (in parallel: a quorum needs a majority up)."""
        for node in self.nodes.values():
            node.start(wait=False)
        for node in self.nodes.values():
            node.wait_ready(timeout_s)

    def kill(self) -> None:
        """Tear down: SIGKILL every node (a controlled shutdown of the last nodes would wait for
        a quorum that is already gone)."""
        for node in self.nodes.values():
            node.kill()

    def admin(self) -> KafkaAdminClient:
        return KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="migmeter-cluster", request_timeout_ms=10000)

    def leaders(self, topic: str) -> dict[int, tuple[int, tuple[int, ...]]]:
        """partition -> (leader node id, -1 while none; in-sync replicas)."""
        with _quiet_logger("kafka"):
            admin = self.admin()
            try:
                (desc,) = admin.describe_topics([topic])
            finally:
                admin.close()
        return {p["partition_index"]: (p["leader_id"], tuple(sorted(p["isr_nodes"]))) for p in desc["partitions"]}

    def quorum_leader(self) -> int:
        """The node id of the active controller (the KRaft quorum's leader)."""
        with _quiet_logger("kafka"):
            admin = self.admin()
            try:
                quorum = admin.describe_metadata_quorum()
            finally:
                admin.close()
        return int(quorum["topics"][0]["partitions"][0]["leader_id"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_KAFKA_LOG4J2 = """\
# written by migmeter/stack.py: broker logs go to stdout, which the stack sends to kafka.log
name = migmeter-kafka
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
logger.requestlog.name = kafka.request.logger
logger.requestlog.level = WARN
logger.controller.name = kafka.controller
logger.controller.level = INFO
"""


# --------------------------------------------------------------------------- PostgreSQL


def _server_user() -> str:
    """The OS user PostgreSQL runs as. Root (what CI runs as) is refused by PostgreSQL, so
    root uses the Debian ``postgres`` user, creating a ``migmeter`` system user if absent."""
    if not _is_root():
        return pwd.getpwuid(os.geteuid()).pw_name
    for name in ("postgres", settings.LOCAL_PG_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    _require("useradd", "apt-get install -y passwd")
    _progress(f"creating system user {settings.LOCAL_PG_USER!r} to run PostgreSQL (it refuses root)")
    _run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
          settings.LOCAL_PG_USER], "useradd")
    return settings.LOCAL_PG_USER


def _invoking_user() -> str:
    """The OS user running ``stack up`` (root in CI): it bootstraps roles over the socket."""
    return pwd.getpwuid(os.geteuid()).pw_name


def pg_hba(os_user: str) -> str:
    """``pg_hba.conf`` of a local-stack cluster (rewritten on every start).

    The server's own role (a superuser) is reachable over the unix socket only by ``peer``
    authentication through the ``migmeter`` ident map, never ``trust``: another OS user on the
    machine must not become database superuser. Every other login is scram-sha-256."""
    return (
        "# written by migmeter/stack.py on every start: the server role over the socket by peer\n"
        f"# (ident map {PG_IDENT_MAP!r}), everything else scram-sha-256; TCP on loopback only\n"
        f"local all {os_user} peer map={PG_IDENT_MAP}\n"
        "local all all scram-sha-256\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
        "host all all ::1/128 scram-sha-256\n"
    )


def pg_ident(os_user: str, invoker: str) -> str:
    """``pg_ident.conf``: the server user and the stack's invoker log in as the server role."""
    lines = [f"{PG_IDENT_MAP} {os_user} {os_user}\n"]
    if invoker != os_user:
        lines.append(f"{PG_IDENT_MAP} {invoker} {os_user}\n")
    return "# written by migmeter/stack.py on every start\n" + "".join(lines)


def _pg_config(flag: str) -> str:
    return _run([str(PG_BIN / "pg_config"), flag], f"pg_config {flag}").stdout.strip()


def _apt_debian_mirror() -> str:
    """The machine's own Debian mirror (from its apt sources), for the trixie deb-src line."""
    candidates: list[Path] = [Path("/etc/apt/sources.list")]
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    for path in candidates:
        with contextlib.suppress(OSError):
            for m in re.finditer(r"(https?://\S+?/debian)/?(?:\s|$)", path.read_text()):
                return m.group(1)
    return "http://deb.debian.org/debian"


@dataclass(frozen=True)
class PostgresTls:
    """``ssl = on`` for a :class:`PostgresCluster`: the server's PEM certificate (chain) and
    unencrypted key. Copied into the data directory on every start (the server wants its key
    0600 and its own), so a restart picks up a replaced certificate."""

    certfile: Path
    keyfile: Path


class PostgresCluster:
    """A private PostgreSQL cluster with TimescaleDB: ``initdb`` into ``home/data``, served on
    127.0.0.1:``port`` only, with role and database ``migmeter`` (password in ``home/password``).

    The owner role is SUPERUSER: migrations ``CREATE EXTENSION timescaledb`` (not a trusted
    extension) and create roles, and tests create a database per module. Local stack only.
    """

    def __init__(
        self,
        home: Path,
        port: int = settings.LOCAL_PG_PORT,
        *,
        user: str = settings.LOCAL_PG_USER,
        database: str = settings.LOCAL_PG_DATABASE,
        tls: PostgresTls | None = None,
    ) -> None:
        self.home = Path(home)
        self.port = port
        self.user = user
        self.database = database
        self.tls = tls
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"PostgresCluster(127.0.0.1:{self.port}, home={str(self.home)!r})"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_path(self) -> Path:
        return self.home / "postgresql.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "postgres.pid"

    @property
    def password_file(self) -> Path:
        return self.home / "password"

    def password(self) -> str:
        """This cluster's owner password, created (0600) on first use."""
        if not self.password_file.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24) + "\n")
        return self.password_file.read_text().strip()

    def url(self, database: str | None = None) -> str:
        """Connection URL of the owner role over TCP (contains the password: never log it)."""
        return (f"postgresql://{self.user}:{self.password()}@127.0.0.1:{self.port}/"
                f"{database or self.database}")

    # install
    def ensure_installed(self) -> None:
        """PostgreSQL 15 server binaries and the TimescaleDB extension, installed if missing."""
        if not (PG_BIN / "postgres").exists() or not (PG_BIN / "initdb").exists():
            _apt_install([f"postgresql-{PG_MAJOR}"], f"PostgreSQL {PG_MAJOR} server")
        sharedir = Path(_pg_config("--sharedir"))
        libdir = Path(_pg_config("--pkglibdir"))
        if (sharedir / "extension" / "timescaledb.control").exists() and (libdir / "timescaledb.so").exists():
            return
        _ensure_timescaledb(settings.state_dir() / "timescaledb")

    # lifecycle
    def pid(self) -> int | None:
        if self._proc is not None:
            self._proc.poll()
        return _read_pid(self.pid_file, "postgres")

    def is_running(self) -> bool:
        return self.pid() is not None

    def _superuser_conninfo(self, dbname: str = "postgres") -> str:
        # Over the private unix socket (0700, server user), peer-authenticated: only the
        # server's OS user and the one running the stack (root in CI) map to this role.
        return psycopg.conninfo.make_conninfo(
            host=str(self.socket_dir), port=self.port, user=self._bootstrap_user(), dbname=dbname,
            connect_timeout=3,
        )

    def _bootstrap_user(self) -> str:
        with contextlib.suppress(OSError):
            return (self.home / "superuser").read_text().strip()
        return "postgres"

    def is_ready(self, timeout_s: float = 3.0) -> bool:
        """True when the owner role can log in over TCP and TimescaleDB is installed."""
        try:
            with psycopg.connect(self.url(), connect_timeout=max(1, int(timeout_s))) as conn:
                row = conn.execute(
                    "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
                ).fetchone()
                return row is not None
        except psycopg.Error:
            return False

    def _init(self, os_user: str) -> None:
        pw = pwd.getpwnam(os_user)
        for d in (self.home, self.data_dir, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
        if _is_root():
            for d in (self.data_dir, self.socket_dir):
                os.chown(d, pw.pw_uid, pw.pw_gid)
            os.chmod(self.data_dir, 0o700)
            self._check_reachable(os_user)
        # Every start, so a state dir made by older code (world-writable socket dir) is fixed:
        # no other OS user may even reach the socket.
        os.chmod(self.socket_dir, SOCKET_DIR_MODE)
        if (self.data_dir / "PG_VERSION").exists():
            return
        _progress(f"initdb: new PostgreSQL {PG_MAJOR} cluster in {self.data_dir} (server user {os_user})")
        _run(
            [str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", os_user, "-E", "UTF8",
             "--locale=C.UTF-8", "--auth-local=peer", "--auth-host=scram-sha-256"],
            "initdb", user=os_user if _is_root() else None,
            env=dict(os.environ, LC_ALL="C.UTF-8"),
        )
        (self.home / "superuser").write_text(os_user + "\n")
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write("\n# migmeter: local-stack settings, rewritten on every start\ninclude 'migmeter.conf'\n")

    def _check_reachable(self, os_user: str) -> None:
        """The server user must be able to reach its data dir through every parent folder."""
        pw = pwd.getpwnam(os_user)
        groups = {g.gr_gid for g in grp.getgrall() if os_user in g.gr_mem} | {pw.pw_gid}
        for parent in self.home.resolve().parents:
            st = parent.stat()
            if st.st_uid == pw.pw_uid:
                ok = bool(st.st_mode & stat.S_IXUSR)
            elif st.st_gid in groups:
                ok = bool(st.st_mode & stat.S_IXGRP)
            else:
                ok = bool(st.st_mode & stat.S_IXOTH)
            if not ok:
                raise StackError(
                    f"PostgreSQL runs as {os_user!r}, who cannot enter {parent}; put the state dir "
                    f"elsewhere (export {settings.ENV_STATE_DIR}=/var/tmp/migmeter-stack) or "
                    f"run: chmod o+x {parent}"
                )

    def _write_config(self, os_user: str) -> None:
        conf = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "unix_socket_permissions": f"0{SOCKET_DIR_MODE:o}",
            "shared_preload_libraries": "'timescaledb'",
            "timescaledb.telemetry_level": "off",
            "password_encryption": "'scram-sha-256'",
            # Tests create a database per module and many connections; small machines.
            "max_connections": "200",
            "shared_buffers": "128MB",
            "fsync": "on",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        conf.update(self._tls_conf(os_user))
        target = self.data_dir / "migmeter.conf"
        target.write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))
        (self.data_dir / "pg_hba.conf").write_text(pg_hba(os_user))
        (self.data_dir / "pg_ident.conf").write_text(pg_ident(os_user, _invoking_user()))
        if _is_root():
            pw = pwd.getpwnam(os_user)
            for p in (target, self.data_dir / "pg_hba.conf", self.data_dir / "pg_ident.conf"):
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def _tls_conf(self, os_user: str) -> dict[str, str]:
        """``ssl = on`` with this start's certificate and key, copied in for the server user."""
        if self.tls is None:
            return {"ssl": "off"}
        for src, name, mode in ((self.tls.certfile, "server.crt", 0o644), (self.tls.keyfile, "server.key", 0o600)):
            dest = self.data_dir / name
            dest.unlink(missing_ok=True)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(Path(src).read_bytes())
            if _is_root():
                pw = pwd.getpwnam(os_user)
                os.chown(dest, pw.pw_uid, pw.pw_gid)
        return {"ssl": "on", "ssl_cert_file": "'server.crt'", "ssl_key_file": "'server.key'"}

    def start(self, wait: bool = True, timeout_s: float = PG_START_TIMEOUT_S) -> None:
        """Init (first time), configure and start the cluster; create role, database and
        extension. Idempotent."""
        if self.is_running():
            if wait:
                self.wait_ready(timeout_s)
            return
        stale = self.data_dir / "postmaster.pid"
        if _port_open(self.port):
            raise StackError(f"port {self.port} on 127.0.0.1 is taken by another process; "
                             f"stop it or pick another port (home {self.home})")
        self.ensure_installed()
        os_user = _server_user()
        self._init(os_user)
        self._write_config(os_user)
        if stale.exists():
            with contextlib.suppress(ValueError, OSError, IndexError):
                if not _pid_alive(int(stale.read_text().split()[0])):
                    stale.unlink()
        _rotate(self.log_path)
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n=== migmeter: starting PostgreSQL at {time.ctime()} ===\n".encode())
            logf.flush()
            self._proc = subprocess.Popen(
                [str(PG_BIN / "postgres"), "-D", str(self.data_dir)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=self.home,
                start_new_session=True, user=os_user if _is_root() else None,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        _progress(f"PostgreSQL {PG_MAJOR} starting on 127.0.0.1:{self.port} (pid {self._proc.pid}, log {self.log_path})")
        if wait:
            self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = PG_START_TIMEOUT_S) -> None:
        """Wait for the server, then make sure role, database and extension exist."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.is_running():
                raise StackError(f"PostgreSQL on port {self.port} is not running (it exited?); "
                                 f"last lines of {self.log_path}:\n{_tail(self.log_path)}")
            try:
                with psycopg.connect(self._superuser_conninfo(), autocommit=True):
                    break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise StackError(f"PostgreSQL on port {self.port} not ready after {timeout_s:.0f} s; "
                                     f"last lines of {self.log_path}:\n{_tail(self.log_path)}") from None
                time.sleep(0.2)
        self._bootstrap()
        if not self.is_ready():
            raise StackError(f"PostgreSQL on port {self.port} runs but the {self.user!r} role cannot "
                             f"log in or TimescaleDB is missing; see {self.log_path}")
        _progress(f"PostgreSQL + TimescaleDB ready on 127.0.0.1:{self.port}")

    def _bootstrap(self) -> None:
        """Owner role (password from the 0600 file), database and extension; idempotent."""
        password = self.password()
        with psycopg.connect(self._superuser_conninfo(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.user,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            # Utility statements take no bind parameters: quote the password as a literal.
            conn.execute(
                sql.SQL("{} ROLE {} WITH LOGIN SUPERUSER PASSWORD {}").format(
                    sql.SQL(verb), sql.Identifier(self.user), sql.Literal(password)
                )
            )
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(self.database), sql.Identifier(self.user)))
        with psycopg.connect(self._superuser_conninfo(self.database), autocommit=True) as conn:
            conn.execute("SET client_min_messages = warning")
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Fast shutdown (SIGINT: disconnect clients, checkpoint), wait, then SIGKILL."""
        pid = self.pid()
        if pid is not None:
            _progress(f"stopping PostgreSQL on port {self.port} (pid {pid})")
            reap = self._proc.poll if self._proc is not None and self._proc.pid == pid else None
            _stop_pid(pid, signal.SIGINT, timeout_s, reap)
        _reap(self._proc)
        self._proc = None
        self.pid_file.unlink(missing_ok=True)

    def versions(self) -> dict[str, str]:
        """Server version, TimescaleDB version and license (empty when unreachable)."""
        try:
            with psycopg.connect(self.url(), connect_timeout=3) as conn:
                server = conn.execute("SHOW server_version").fetchone()
                ext = conn.execute(
                    "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
                lic = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
        except psycopg.Error:
            return {}
        return {
            "postgresql": str(server[0]) if server else "?",
            "timescaledb": str(ext[0]) if ext else "missing",
            "license": str(lic[0]) if lic and lic[0] else "?",
        }


def _ensure_timescaledb(cache: Path) -> None:
    """Build TimescaleDB (Apache-only) from Debian trixie's source package and install it
    into this machine's PostgreSQL; the unpacked, built tree is cached under ``cache`` so a
    reinstall is just ``make install``. See shared/notes/timescaledb-build.md."""
    if not _is_root():
        raise StackError(
            "TimescaleDB is not installed for PostgreSQL 15 and installing it needs root; run "
            "'sudo migmeter stack up' once (it builds TimescaleDB from Debian's source package)")
    includedir = Path(_pg_config("--includedir-server"))
    if not (includedir / "postgres.h").exists() or shutil.which("cmake") is None:
        _apt_install([f"postgresql-server-dev-{PG_MAJOR}", "cmake", "gcc", "make", "libc6-dev"],
                     "building TimescaleDB")
    cache.mkdir(parents=True, exist_ok=True)
    built = sorted(cache.glob("timescaledb-*/build/Makefile"))
    if not built:
        tarballs = sorted(cache.glob("timescaledb_*.orig.tar.*"))
        if not tarballs:
            _download_timescaledb_source(cache)
            tarballs = sorted(cache.glob("timescaledb_*.orig.tar.*"))
            if not tarballs:
                raise StackError(f"apt-get source timescaledb left no orig tarball in {cache}")
        _progress(f"unpacking {tarballs[-1].name}")
        _run(["tar", "xf", str(tarballs[-1])], "unpacking TimescaleDB source", cwd=cache)
        srcs = sorted(p for p in cache.glob("timescaledb-*") if p.is_dir())
        if not srcs:
            raise StackError(f"no timescaledb-* folder after unpacking in {cache}")
        src = srcs[-1]
        _progress(f"building TimescaleDB (Apache-only) in {src} (about a minute on 2 cores) ...")
        _run(["./bootstrap", "-DAPACHE_ONLY=1", "-DREGRESS_CHECKS=OFF", "-DTAP_CHECKS=OFF",
              "-DWARNINGS_AS_ERRORS=OFF", f"-DPG_CONFIG={PG_BIN / 'pg_config'}"],
             "TimescaleDB bootstrap (cmake)", cwd=src)
        _run(["make", "-C", "build", f"-j{os.cpu_count() or 2}"], "building TimescaleDB", cwd=src)
        built = [src / "build" / "Makefile"]
    src = built[-1].parent.parent
    _progress(f"installing TimescaleDB from {src}")
    _run(["make", "-C", "build", "install"], "installing TimescaleDB", cwd=src)


def _download_timescaledb_source(cache: Path) -> None:
    """``apt-get source --download-only`` from trixie through a private apt config, so the
    machine's own sources and lists are left as they are."""
    _require("apt-get", "this step needs Debian's apt; install TimescaleDB for PostgreSQL 15 by hand")
    apt = cache / "apt"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = apt / "trixie-src.list"
    sources.write_text(
        "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        f"{_apt_debian_mirror()} {_TIMESCALEDB_SUITE} main\n"
    )
    opts = [f"-oDir::Etc::SourceList={sources}", "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={apt / 'lists'}", f"-oDir::Cache::Archives={apt / 'archives'}"]
    _progress(f"downloading the {_TIMESCALEDB_SUITE} '{_TIMESCALEDB_SOURCE_PACKAGE}' source package with apt-get ...")
    _run(["apt-get", *opts, "update"], "apt-get update (trixie deb-src)")
    _run(["apt-get", *opts, "source", "--download-only", _TIMESCALEDB_SOURCE_PACKAGE],
         "apt-get source timescaledb", cwd=cache)


# --------------------------------------------------------------------------- default stack


def default_kafka(state: Path | None = None) -> KafkaNode:
    """The shared stack's broker: 127.0.0.1:9092 (controller 9093), home ``<state>/kafka``."""
    root = state or settings.state_dir()
    return KafkaNode(root / "kafka" / f"jars-{KAFKA_VERSION}", root / "kafka" / "node")


def default_postgres(state: Path | None = None) -> PostgresCluster:
    """The shared stack's database: 127.0.0.1:55432, home ``<state>/postgres``."""
    root = state or settings.state_dir()
    return PostgresCluster(root / "postgres", settings.LOCAL_PG_PORT)


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    running: bool
    ready: bool
    pid: int | None
    details: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        state = "ready" if self.ready else ("running, not ready" if self.running else "down")
        extra = ", ".join(f"{k} {v}" for k, v in self.details.items())
        pid = f" pid {self.pid}" if self.pid else ""
        return f"{self.name:<11} {self.address:<16} {state}{pid}" + (f"  ({extra})" if extra else "")


@dataclass(frozen=True)
class StackStatus:
    services: tuple[ServiceStatus, ...]

    @property
    def all_ready(self) -> bool:
        return all(s.ready for s in self.services)

    def __iter__(self) -> Iterator[ServiceStatus]:
        return iter(self.services)


@contextlib.contextmanager
def _stack_lock(state: Path | None) -> Iterator[None]:
    """Serialize ``up``/``down`` of one state dir: two developers (or a test run and a
    developer) running ``up`` at once must not both spawn a broker and race on its pid file."""
    root = state or settings.state_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _progress(f"another migmeter stack command holds {root / '.lock'}; waiting for it ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def up(state: Path | None = None) -> StackStatus:
    """Install what is missing and start Kafka and PostgreSQL/TimescaleDB (idempotent).

    The JVM boots while PostgreSQL starts, so a warm ``up`` costs about one Kafka start."""
    kafka, pg = default_kafka(state), default_postgres(state)
    with _stack_lock(state):
        kafka.ensure_installed()
        pg.ensure_installed()
        started_kafka = not kafka.is_running()
        kafka.start(wait=False)
        try:
            pg.start(wait=True)
            kafka.wait_ready()
        except BaseException:
            if started_kafka:
                kafka.stop()
            raise
    return status(state)


def down(state: Path | None = None) -> None:
    """Stop both services; data stays for the next ``up``."""
    errors: list[str] = []
    with _stack_lock(state):
        for svc in (default_kafka(state), default_postgres(state)):
            try:
                svc.stop()
            except (StackError, OSError) as exc:
                errors.append(str(exc))
    if errors:
        raise StackError("; ".join(errors))


def status(state: Path | None = None) -> StackStatus:
    """What runs where, with versions."""
    kafka, pg = default_kafka(state), default_postgres(state)
    k_ready = kafka.is_ready()
    k_details = {"version": kafka.version}
    if not kafka.is_running() and _port_open(kafka.port):
        k_details["note"] = "port taken by a process not started by migmeter"
    pg_ready = pg.is_ready() if pg.password_file.exists() else False
    pg_details = pg.versions() if pg_ready else {}
    return StackStatus((
        ServiceStatus("kafka", kafka.bootstrap, kafka.is_running(), k_ready, kafka.pid(), k_details),
        ServiceStatus("postgresql", f"127.0.0.1:{pg.port}", pg.is_running(), pg_ready, pg.pid(), pg_details),
    ))


def env_lines(state: Path | None = None) -> list[str]:
    """``export`` lines pointing every migmeter command at the local stack."""
    import shlex

    pg = default_postgres(state)
    url = pg.url() if pg.password_file.exists() else settings.database_url()
    return [
        f"export {settings.ENV_KAFKA_BOOTSTRAP}={shlex.quote(default_kafka(state).bootstrap)}",
        f"export {settings.ENV_DATABASE_URL}={shlex.quote(url)}",
    ]
