"""The default local stack: one broker and one database under ``settings.state_dir()``.

``up()``, ``down()``, ``status()`` and ``env_lines()`` are what ``migmeter stack`` runs; a lock
file in the state dir serializes ``up`` and ``down`` of one stack.
"""

from __future__ import annotations

import contextlib
import fcntl
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from migmeter import settings
from migmeter.errors import StackError
from migmeter.stack.kafka import KAFKA_VERSION, KafkaNode
from migmeter.stack.postgres import PostgresCluster
from migmeter.stack.processes import port_open, progress

__all__ = [
    "ServiceStatus",
    "StackStatus",
    "default_kafka",
    "default_postgres",
    "up",
    "down",
    "status",
    "env_lines",
]


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
            progress(f"another migmeter stack command holds {root / '.lock'}; waiting for it ...")
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
    if not kafka.is_running() and port_open(kafka.port):
        k_details["note"] = "port taken by a process not started by migmeter"
    pg_ready = pg.is_ready() if pg.password_file.exists() else False
    pg_details = pg.versions() if pg_ready else {}
    return StackStatus((
        ServiceStatus("kafka", kafka.bootstrap, kafka.is_running(), k_ready, kafka.pid(), k_details),
        ServiceStatus("postgresql", f"127.0.0.1:{pg.port}", pg.is_running(), pg_ready, pg.pid(), pg_details),
    ))


def env_lines(state: Path | None = None) -> list[str]:
    """``export`` lines pointing every migmeter command at the local stack."""
    pg = default_postgres(state)
    url = pg.url() if pg.password_file.exists() else settings.database_url()
    return [
        f"export {settings.ENV_KAFKA_BOOTSTRAP}={shlex.quote(default_kafka(state).bootstrap)}",
        f"export {settings.ENV_DATABASE_URL}={shlex.quote(url)}",
    ]
