"""Liveness and readiness of a processor, served as /healthz and /readyz next to /metrics.

A probe round checks what the processor needs, from its own thread, every ``interval_s``:

- database: connect (bounded by a timeout) with the processor's own login and read
  ``sink_offsets``: the server answers, the login works, the schema is migrated and the
  login may read its offsets;
- Kafka: a metadata request to the bootstrap servers with the processor's TLS/SASL
  settings: a broker answers and accepts the credentials.

Rules (:class:`HealthState`, pure; the clock is injected):

1. Ready (/readyz 200) when the last finished round found both reachable and finished at most
   ``stale_after_s`` ago. Before the first round, or when probing itself is stuck: not ready.
2. Live (/healthz 200) while the processing loop has not ended and the prober keeps finishing
   rounds (a round older than ``stale_after_s`` means the process is wedged). A dependency
   being down never makes a processor not live: restarting it would not bring Kafka back.
3. The answer is text, one line per check with its reason; reasons never hold credentials
   (URLs are redacted).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from migmeter import settings

__all__ = [
    "DEFAULT_INTERVAL_S",
    "STALE_ROUNDS",
    "Check",
    "HealthState",
    "Prober",
    "probe_database",
    "probe_kafka",
]

log = logging.getLogger("migmeter.processor.health")

# Kubernetes probes every 10 s by default; a round per 10 s keeps the answer that fresh.
DEFAULT_INTERVAL_S = 10.0
# A round is stale after this many intervals (one slow round must not flip readiness).
STALE_ROUNDS = 3
# Each check gives up after this long, so a black-holed address cannot stall a round.
PROBE_TIMEOUT_S = 5.0
_REASON_MAX = 200


@dataclass(frozen=True)
class Check:
    """One dependency's outcome: ``error`` is None when it answered."""

    name: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class HealthState:
    """What /healthz and /readyz answer (rules in the module docstring)."""

    def __init__(self, stale_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after_s = stale_after_s
        self.clock = clock
        self._lock = threading.Lock()
        self._checks: tuple[Check, ...] = ()
        self._round_at: float | None = None
        self._loop_ended = False

    def record(self, checks: tuple[Check, ...]) -> None:
        with self._lock:
            self._checks = checks
            self._round_at = self.clock()

    def loop_ended(self) -> None:
        with self._lock:
            self._loop_ended = True

    def _round_age(self) -> float | None:
        return None if self._round_at is None else self.clock() - self._round_at

    def ready(self) -> tuple[bool, str]:
        with self._lock:
            age = self._round_age()
            if age is None:
                return False, "not ready: no probe round finished yet\n"
            if age > self.stale_after_s:
                return False, f"not ready: last probe round finished {age:.0f} s ago\n"
            ok = all(c.ok for c in self._checks)
            lines = [f"{c.name}: {'ok' if c.ok else 'failed: ' + str(c.error)}" for c in self._checks]
            return ok, ("ready" if ok else "not ready") + f" (probed {age:.0f} s ago)\n" + "\n".join(lines) + "\n"

    def live(self) -> tuple[bool, str]:
        with self._lock:
            if self._loop_ended:
                return False, "not live: the processing loop has ended\n"
            age = self._round_age()
            if age is not None and age > self.stale_after_s:
                return False, f"not live: the prober has not finished a round for {age:.0f} s\n"
            return True, "live\n"


def probe_database(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> Check:
    """Connect with the processor's login and read its offsets table."""
    try:
        with psycopg.connect(url, connect_timeout=max(1, int(timeout_s)), autocommit=True) as conn:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(timeout_s * 1000)}ms",))
            conn.execute("SELECT 1 FROM sink_offsets LIMIT 1").fetchall()
    except psycopg.Error as exc:
        return Check("database", _reason(_describe(exc)))
    return Check("database")


def probe_kafka(bootstrap: str, security: Mapping[str, Any], timeout_s: float = PROBE_TIMEOUT_S) -> Check:
    """A metadata request to the brokers with the processor's TLS/SASL settings.

    A TCP connect comes first: when no bootstrap server accepts one, the Kafka client is not
    even built (it would retry for the whole timeout and leave its sockets to the collector).
    """
    refused = _unreachable(bootstrap, timeout_s)
    if refused is not None:
        return Check("kafka", _reason(refused))
    timeout_ms = int(timeout_s * 1000)
    admin = None
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="migmeter-process-health",
                                 request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms,
                                 **dict(security))
        admin.list_topics()
    except (KafkaError, OSError, ValueError) as exc:
        return Check("kafka", _reason(_describe(exc)))
    finally:
        if admin is not None:
            admin.close()
    return Check("kafka")


class Prober(threading.Thread):
    """Runs the checks every ``interval_s`` into ``state`` until :meth:`stop`."""

    def __init__(self, state: HealthState, checks: tuple[Callable[[], Check], ...], interval_s: float) -> None:
        super().__init__(name="migmeter-health", daemon=True)
        self.state = state
        self.checks = checks
        self.interval_s = interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        previous: tuple[Check, ...] = ()
        while not self._stop_event.is_set():
            results = tuple(check() for check in self.checks)
            self.state.record(results)
            for now, before in zip(results, previous or results):
                if now.ok != before.ok or (not previous and not now.ok):
                    log.log(logging.INFO if now.ok else logging.WARNING, "health: %s %s", now.name,
                            "reachable again" if now.ok else f"unreachable: {now.error}")
            previous = results
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()


def _unreachable(bootstrap: str, timeout_s: float) -> str | None:
    """None if some bootstrap server accepts a TCP connection, else why none did."""
    errors = []
    for server in filter(None, (s.strip() for s in bootstrap.split(","))):
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return None
        except (OSError, ValueError) as exc:
            errors.append(f"{server}: {_describe(exc)}")
    return "no bootstrap server accepts a connection (" + "; ".join(errors) + ")"


def _describe(exc: BaseException) -> str:
    """``ClassName: first line of the message`` (kafka-python's messages already start with the name)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    name = exc.__class__.__name__
    return first if first.startswith(name) else f"{name}: {first}".rstrip(": ")


def _reason(text: str) -> str:
    return settings.redact_text(text)[:_REASON_MAX]
