"""Publishing snapshots: to Kafka (with an on-disk spool for outages), to stdout, or to a list.

The poll loop talks to a :class:`Publisher` only: ``send`` per snapshot, ``flush`` once per
round, ``close`` at exit. ``send`` never raises for a broker problem and never loses a
snapshot silently: a snapshot is delivered, spooled, or counted in ``stats.dropped``.

Kafka delivery (:class:`KafkaPublisher`):

- key = GPU UUID, so a GPU's snapshots share a partition and stay in order; ``acks="all"``
  and the idempotent producer, so a retried batch is written once; compression zstd (the
  ``zstandard`` package, a dependency: it decompresses at lz4's speed and stores like gzip,
  ``python -m bench.codec``; gzip if it is missing); ``linger_ms`` batching.
- ``flush(timeout_s)`` is the delivery check: it waits for every record sent since the last
  flush. If any is not acknowledged in time (broker down, unreachable, partition offline),
  the producer is aborted and every unacknowledged record goes to the spool, in send order.
- While the spool holds anything, new snapshots are appended BEHIND it, never sent past it,
  so each GPU's order is kept through an outage. ``flush`` drains the spool oldest first in
  batches, removing records only once the broker acknowledged them (a crash in between
  re-sends them: at-least-once; the processor drops a snapshot whose ts is not newer than
  its GPU's last, so a re-sent duplicate is harmless). After a failure, drain attempts back
  off exponentially so a dead broker does not stall every round.
- A full spool either drops its oldest records (policy ``drop-oldest``, counted) or, with
  ``block``, makes ``send`` wait and retry draining until room frees: back-pressure on the
  poll loop. ``stop`` (a threading.Event) ends the wait at shutdown; the snapshots in hand are
  then stored past the bound rather than lost.
- The spool's disk full or its directory read-only (:class:`SpoolUnwritable`): the same
  policy. ``drop-oldest`` drops (the spool first drops its oldest records to make room;
  if even that cannot be written, the new snapshot is the one dropped), counted; ``block``
  waits for the drain to free room, reading no GPUs meanwhile. A delete the spool cannot
  write leaves the delivered records in it, to be re-sent (duplicates, dropped downstream)
  once it can; until then drains back off like a broker failure.
- Without a spool, records that could not be delivered are dropped and counted.

Credentials (SASL/TLS) come from the caller as ``security``
(built by :func:`migmeter.kafka_security.kafka_security`), are passed through to kafka-python,
and never appear in logs or reprs.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any, Protocol

from kafka import KafkaProducer
from kafka.codec import has_zstd
from kafka.errors import KafkaError, KafkaTimeoutError

from collector.snapshot import Snapshot
from collector.spool import Spool, SpoolFull, SpoolUnwritable
from migmeter import settings
from migmeter.errors import ConfigError
from migmeter.kafka_security import SECURITY_KEYS

__all__ = [
    "PublishStats",
    "Publisher",
    "InMemoryPublisher",
    "StdoutPublisher",
    "KafkaPublisher",
    "default_compression",
]

log = logging.getLogger("migmeter.collector.publish")



# Batching: 20 ms is invisible at a 15 s scrape interval and lets one round of a large fleet
# go out as a few compressed batches instead of one request per GPU.
DEFAULT_LINGER_MS = 20
# Producer batch (bytes, per partition, before compression): a snapshot is ~1-2 KB of JSON,
# so kafka-python's 16 KiB default makes a batch (and a sender wake-up) every ~10 snapshots;
# 256 KiB lets one round of a large fleet go out as a few batches per partition.
_BATCH_BYTES = 256 * 1024
# How long one round may wait for acknowledgements before the broker is declared down and
# the round's records are spooled. Well under a typical 15 s interval.
DEFAULT_FLUSH_TIMEOUT_S = 10.0
# Bounds on blocking inside kafka-python while the broker is unreachable: connecting at start,
# waiting for topic metadata in send(). Longer stalls would delay the poll loop's rounds.
_BOOTSTRAP_TIMEOUT_MS = 5_000
_MAX_BLOCK_MS = 5_000
_REQUEST_TIMEOUT_MS = 10_000
# kafka-python's own retry window for one record; our flush timeout normally fires first.
_DELIVERY_TIMEOUT_MS = 30_000
# Records read from the spool per drain step: one producer batch's worth of work.
_DRAIN_BATCH = 500
# Records sent but not yet confirmed before send() confirms them itself, so memory stays
# bounded when a caller never flushes.
_MAX_UNCONFIRMED = 20_000
# A stop (SIGTERM) ends the wait for acknowledgements after this grace: what is still
# unacknowledged is spooled, and the collector exits within a second or two.
_STOP_GRACE_S = 1.0
# How often a wait for acknowledgements looks at the stop event.
_STOP_CHECK_S = 0.1
# Back-off between drain attempts after a failure: retry soon, then at most every 30 s.
_RETRY_MIN_S = 1.0
_RETRY_MAX_S = 30.0


@dataclass
class PublishStats:
    """Running totals; the poll loop turns them into log lines and Prometheus counters."""

    sent: int = 0  # snapshots handed to send()
    delivered: int = 0  # acknowledged by the broker (or written, for stdout / memory)
    spooled: int = 0  # writes into the spool (a snapshot spooled after a failed send counts once)
    resent: int = 0  # delivered from the spool (included in delivered)
    dropped: int = 0  # lost: spool full with drop-oldest, or no spool to keep them
    send_failures: int = 0  # flushes or sends that found the broker unable to take records
    spool_depth: int = 0
    spool_bytes: int = 0


class Publisher(Protocol):
    """Where the poll loop puts snapshots."""

    stats: PublishStats

    def send(self, snapshot: Snapshot) -> None:
        """Queue one snapshot; never raises for a transport problem (see module doc)."""
        ...

    def flush(self, timeout_s: float) -> None:
        """Make what was sent durable (delivered or spooled) within about ``timeout_s``."""
        ...

    def close(self) -> None: ...


class InMemoryPublisher:
    """Keeps every snapshot in ``snapshots``: for tests and for embedding the loop in code."""

    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []
        self.stats = PublishStats()
        self.flushes = 0
        self.closed = False

    def send(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)
        self.stats.sent += 1
        self.stats.delivered += 1

    def flush(self, timeout_s: float) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True


class StdoutPublisher:
    """One JSON line per snapshot (the wire format) on ``stream``: ``collect --stdout``.

    The stream is looked up at write time when not given, so redirected ``sys.stdout`` works.
    When the reader goes away (``collect --stdout | head``) the publisher sets ``stop`` and
    writes nothing more: a closed pipe ends the run quietly instead of with a traceback.
    """

    def __init__(self, stream: IO[str] | None = None, *, stop: threading.Event | None = None) -> None:
        self._stream = stream
        self._stop = stop
        self.stats = PublishStats()
        self.pipe_closed = False

    def _out(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stdout

    def send(self, snapshot: Snapshot) -> None:
        self.stats.sent += 1
        if self.pipe_closed:
            return
        try:
            self._out().write(snapshot.to_json().decode() + "\n")
        except BrokenPipeError:
            self._closed_pipe()
            return
        self.stats.delivered += 1

    def flush(self, timeout_s: float) -> None:
        if not self.pipe_closed:
            try:
                self._out().flush()
            except BrokenPipeError:
                self._closed_pipe()

    def close(self) -> None:
        self.flush(0.0)

    def _closed_pipe(self) -> None:
        self.pipe_closed = True
        log.info("stdout was closed by its reader; stopping")
        if self._stop is not None:
            self._stop.set()
        if self._stream is None:
            # Python would report the broken pipe again when it flushes stdout at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            finally:
                os.close(devnull)


@dataclass(slots=True)
class _Pending:
    """A record handed to the producer and not yet confirmed."""

    key: bytes
    value: bytes
    future: Any  # kafka.producer.future.FutureRecordMetadata
    spool_seq: int | None  # set when it came from the spool


class KafkaPublisher:
    """Kafka producer with an optional on-disk spool; see the module docstring for the rules."""

    def __init__(
        self,
        bootstrap: str,
        topic: str = settings.SNAPSHOT_TOPIC,
        *,
        spool: Spool | None = None,
        security: Mapping[str, Any] | None = None,
        linger_ms: int = DEFAULT_LINGER_MS,
        compression: str | None = None,
        client_id: str = "migmeter-collector",
        connect_timeout_s: float = _BOOTSTRAP_TIMEOUT_MS / 1000,
        stop: threading.Event | None = None,
        on_latency: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not bootstrap.strip():
            raise ConfigError("Kafka bootstrap servers are empty")
        unknown = set(security or {}) - SECURITY_KEYS
        if unknown:
            raise ConfigError(f"unknown Kafka security settings: {', '.join(sorted(unknown))}")
        self.bootstrap = bootstrap
        self.topic = topic
        self.spool = spool
        self.stats = PublishStats()
        self.compression = compression or default_compression()
        self._security = dict(security or {})
        self._linger_ms = linger_ms
        self._client_id = client_id
        self._connect_timeout_ms = int(connect_timeout_s * 1000)
        self._stop = stop or threading.Event()
        self._on_latency = on_latency
        self._clock = clock
        self._producer: KafkaProducer | None = None
        self._unconfirmed: deque[_Pending] = deque()
        self._down = False  # the last attempt failed; the spool takes new records
        self._retry_at = 0.0
        self._retry_s = _RETRY_MIN_S
        self._closed = False
        self._sync_spool_stats()

    def __repr__(self) -> str:
        # Never the security dict: it may hold a password.
        return f"KafkaPublisher({self.bootstrap!r}, topic={self.topic!r}, spool={self.spool!r})"

    # ------------------------------------------------------------------ Publisher

    def send(self, snapshot: Snapshot) -> None:
        self.stats.sent += 1
        key, value = snapshot.key, snapshot.to_json()
        if self.spool is not None and (self._down or len(self.spool)):
            self._to_spool(key, value)
            return
        self._produce(key, value, spool_seq=None)
        if len(self._unconfirmed) >= _MAX_UNCONFIRMED:
            self._confirm(DEFAULT_FLUSH_TIMEOUT_S)

    def flush(self, timeout_s: float) -> None:
        """Confirm this round's records (spooling the unacknowledged), then drain the spool."""
        deadline = self._clock() + timeout_s
        self._confirm(timeout_s)
        if self.spool is not None and len(self.spool):
            self._drain(deadline)
        self._sync_spool_stats()

    def close(self, timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S) -> None:
        """Deliver or spool everything, then close the producer and the spool (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush(timeout_s)
        finally:
            self._abort_producer(timeout_s=min(timeout_s, 5.0))
            if self.spool is not None:
                if len(self.spool):
                    log.info("closing with %d snapshots in the spool; they are sent on the next start", len(self.spool))
                self.spool.close()

    # ------------------------------------------------------------------ internals

    def _get_producer(self) -> KafkaProducer | None:
        if self._producer is not None:
            return self._producer
        servers = [s.strip() for s in self.bootstrap.split(",") if s.strip()]
        if not _any_reachable(servers, self._connect_timeout_ms / 1000):
            # Checked first because kafka-python's constructor, when it cannot bootstrap,
            # raises after a full timeout and leaks its sockets; an outage would leak a few
            # per retry for as long as it lasts.
            self._failed(f"cannot connect to Kafka at {self.bootstrap}: no bootstrap server accepts connections")
            return None
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=servers,
                client_id=self._client_id,
                acks="all",
                enable_idempotence=True,
                compression_type=self.compression,
                linger_ms=self._linger_ms,
                batch_size=_BATCH_BYTES,
                max_block_ms=min(_MAX_BLOCK_MS, self._connect_timeout_ms),
                request_timeout_ms=_REQUEST_TIMEOUT_MS,
                delivery_timeout_ms=_DELIVERY_TIMEOUT_MS,
                bootstrap_timeout_ms=self._connect_timeout_ms,
                **self._security,
            )
        except (KafkaError, OSError) as exc:
            self._failed(f"cannot connect to Kafka at {self.bootstrap}: {exc.__class__.__name__}: {exc}")
            return None
        return self._producer

    def _produce(self, key: bytes, value: bytes, spool_seq: int | None) -> bool:
        """Hand one record to the producer; on failure spool or drop it. True if handed over."""
        # While the broker is known down, don't stall every send reconnecting: wait for the
        # back-off to pass (the spool path never gets here while down).
        in_backoff = self._down and self._clock() < self._retry_at
        producer = None if in_backoff else self._get_producer()
        if producer is not None:
            t0 = self._clock()
            try:
                future = producer.send(self.topic, key=key, value=value)
            except (KafkaError, OSError) as exc:
                # Records sent before this one must not end up behind it: settle them first.
                self._confirm(0.0)
                self._failed(f"Kafka send failed: {exc.__class__.__name__}: {exc}")
            else:
                if self._on_latency is not None:
                    on_latency, clock = self._on_latency, self._clock
                    future.add_callback(lambda _md: on_latency(clock() - t0))
                self._unconfirmed.append(_Pending(key, value, future, spool_seq))
                return True
        if spool_seq is None:
            self._undeliverable(key, value)
        return False

    def _confirm(self, timeout_s: float) -> bool:
        """Wait for the unconfirmed records; True if all were acknowledged.

        On any failure the producer is aborted (so no record of this batch can still land
        later, behind records sent after it) and the direct records not acknowledged are
        spooled in send order. Spool-sourced records are committed up to the longest
        acknowledged prefix, so the spool never has a hole.
        """
        if not self._unconfirmed:
            return True
        pending = list(self._unconfirmed)
        self._unconfirmed.clear()
        deadline = self._clock() + timeout_s
        errors: set[str] = set()
        for p in pending:
            # One deadline for the whole batch (kafka-python's flush() waits up to its timeout
            # per batch, so a dead broker would stall it for batches x timeout); a stop
            # (SIGTERM) shortens it to a short grace, after which the rest is spooled.
            try:
                deadline = self._wait_acknowledged(p.future, deadline)
            except (KafkaError, OSError) as exc:
                errors.add(exc.__class__.__name__)
                break  # the broker is not taking records: stop waiting, abort below
        ok = all(p.future.is_done and p.future.succeeded() for p in pending)
        if not ok:
            self._abort_producer(timeout_s=0.0)
            failed = sum(1 for p in pending if not (p.future.is_done and p.future.succeeded()))
            self._failed(
                f"Kafka at {self.bootstrap} did not acknowledge {failed} of {len(pending)} snapshots "
                f"within {timeout_s:.1f} s ({', '.join(sorted(errors)) or 'timeout'})"
            )
        commit_upto: int | None = None
        prefix_ok = True
        for p in pending:
            if p.future.is_done and p.future.succeeded():
                self.stats.delivered += 1
                if p.spool_seq is not None:
                    self.stats.resent += 1
                    if prefix_ok:
                        commit_upto = p.spool_seq
            elif p.spool_seq is None:
                self._undeliverable(p.key, p.value)
            else:
                prefix_ok = False  # stays in the spool, and so does everything after it
        if commit_upto is not None and self.spool is not None:
            try:
                self.spool.commit(commit_upto)
            except SpoolUnwritable as exc:
                # Delivered but still spooled: sent again later (the processor drops duplicates).
                self._failed(f"{exc}; delivered snapshots stay spooled and are re-sent later")
                return False
        if ok:
            self._recovered()
        return ok

    def _wait_acknowledged(self, future: Any, deadline: float) -> float:
        """Wait until ``future`` is done (raising its error) or ``deadline`` passes (raising
        KafkaTimeoutError); once ``stop`` is set, the deadline moves to at most _STOP_GRACE_S
        away. Returns the deadline, possibly moved, for the records after this one."""
        while not future.is_done:
            now = self._clock()
            if self._stop.is_set():
                deadline = min(deadline, now + _STOP_GRACE_S)
            left = deadline - now
            if left <= 0:
                raise KafkaTimeoutError("not acknowledged in time")
            try:
                future.get(timeout=min(left, _STOP_CHECK_S))
            except KafkaTimeoutError:
                continue  # this slice ran out, not necessarily the deadline
        future.get(timeout=0)  # raises the record's failure, if any
        return deadline

    def _drain(self, deadline: float) -> None:
        """Send the spool, oldest first, in batches, while the broker acknowledges and time is left."""
        assert self.spool is not None
        if self._down and self._clock() < self._retry_at:
            return
        while len(self.spool) and not self._stop.is_set():
            left = deadline - self._clock()
            if left <= 0:
                return
            handed_all = all(self._produce(r.key, r.value, spool_seq=r.seq) for r in self.spool.peek(_DRAIN_BATCH))
            if not self._confirm(max(deadline - self._clock(), 0.5)) or not handed_all:
                return

    def _to_spool(self, key: bytes, value: bytes) -> None:
        assert self.spool is not None
        spool = self.spool
        waited = False
        while True:
            before = spool.dropped
            try:
                spool.append(key, value, force=self._stop.is_set())
            except SpoolFull as exc:
                self.stats.dropped += spool.dropped - before
                unwritable = isinstance(exc, SpoolUnwritable)
                if (len(key) + len(value) > spool.max_bytes or self._stop.is_set()
                        or (unwritable and spool.full_policy == "drop-oldest")):
                    # Nowhere to keep it: a record over the bound, the disk refusing even after
                    # dropping the oldest, or shutdown with the disk refusing. Counted.
                    log.error("%s; snapshot dropped", exc)
                    self.stats.dropped += 1
                    break
                # Back-pressure: the poll loop waits here until the broker takes some records.
                if not waited:
                    log.warning("%s; waiting for Kafka to take some before reading more", exc)
                    waited = True
                self._drain(self._clock() + DEFAULT_FLUSH_TIMEOUT_S)
                if unwritable or not spool.has_room(len(key) + len(value)):
                    self._stop.wait(max(self._retry_at - self._clock(), _RETRY_MIN_S if unwritable else 0.1))
            else:
                self.stats.dropped += spool.dropped - before
                self.stats.spooled += 1
                break
        self._sync_spool_stats()

    def _undeliverable(self, key: bytes, value: bytes) -> None:
        if self.spool is not None:
            self._to_spool(key, value)
        else:
            self.stats.dropped += 1

    def _failed(self, message: str) -> None:
        self.stats.send_failures += 1
        now = self._clock()
        if not self._down:
            log.warning("%s; %s", message, "spooling to disk" if self.spool is not None else "no spool: dropping")
        else:
            log.debug("%s", message)
        if self._down:
            self._retry_s = min(self._retry_s * 2, _RETRY_MAX_S)
        self._down = True
        self._retry_at = now + self._retry_s

    def _recovered(self) -> None:
        if self._down:
            log.info("Kafka at %s acknowledges again; draining the spool", self.bootstrap)
        self._down = False
        self._retry_s = _RETRY_MIN_S

    def _abort_producer(self, timeout_s: float) -> None:
        """Close the producer, failing whatever it still holds; the next send makes a new one."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=timeout_s)
        except KafkaError:
            # kafka-python's close() flushes first and raises when records are still pending,
            # leaving its sender thread retrying forever. Force-close it as close() would
            # (private API, the only way to abort pending records in kafka-python 3.0).
            sender = getattr(producer, "_sender", None)
            if sender is not None:
                sender.force_close()
                sender.join(5.0)
            try:
                producer.close(timeout=0)
            except KafkaError as exc:
                log.debug("closing the Kafka producer: %s", exc)

    def _sync_spool_stats(self) -> None:
        if self.spool is not None:
            self.stats.spool_depth = len(self.spool)
            self.stats.spool_bytes = self.spool.size_bytes


def _any_reachable(servers: list[str], timeout_s: float) -> bool:
    """True if a TCP connection to any of ``HOST:PORT`` servers succeeds."""
    for server in servers:
        host, _, port = server.rpartition(":")
        host = host.strip("[]") or "localhost"
        try:
            with socket.create_connection((host, int(port) if port.isdigit() else 9092), timeout=timeout_s):
                return True
        except OSError:
            continue
    return False


def default_compression() -> str:
    """zstd (its package is a dependency), else gzip (built into kafka-python)."""
    return "zstd" if has_zstd() else "gzip"
