"""The processor loop: Kafka consumer group -> micro-batches -> one transaction each.

Exactly-once rests on three rules kept here:

- Positions come from the database. On start and on every partition assignment the loop
  reads ``sink_offsets`` and seeks there (a partition without a row starts at the earliest
  offset Kafka still has). Kafka's own commits are made only as a convenience for tooling.
- A batch is written in one transaction that also advances the stored offsets by
  compare-and-set (``processor.sink``). Records already covered by a stored offset are never
  folded again, and a batch from a processor that lost its partition cannot land.
- After ANY failure (offset conflict, database down, commit outcome unknown) nothing in
  memory is trusted: the GPU-state cache is dropped, the partitions are paused, and once the
  database answers again the loop re-reads the stored offsets and seeks back to them. A
  batch that committed is therefore never re-applied, and one that did not is re-consumed.

Pipelining: while batch N is being written (in a writer thread, on its own connection), the
loop already consumes and folds batch N+1 on top of N's expected result (its GPU states and
offsets). N+1 is handed to the writer only once N has committed; if N fails, N+1 is thrown
away with everything else in memory. Even a mistake here could not double count: N+1's
offsets compare-and-set expects N's end, which is only stored if N committed. Python's CPU
work (decode, fold) and PostgreSQL's (merge) thus overlap instead of adding up.

Broker outages: every call into the Kafka client from the loop goes through
:meth:`Processor._kafka_call`. A call that fails (broker gone, coordinator lost, connection
refused) is logged once per outage, the loop drops what is not in the database exactly as
after a database failure (so the batch and the offsets stay consistent: positions are re-read
from ``sink_offsets`` and sought to once the broker answers), and it retries with a short,
capped backoff. Calls that are local bookkeeping in kafka-python (seek, pause, resume,
highwater, assignment) are guarded the same way in case a client version does I/O there.

Refusals: a batch the database refuses for a data reason (SQLSTATE class 22/23, 54000; see
``processor.refusals``) is retried ``REFUSED_RETRIES`` times, then bisected: halves are re-folded
from the same records and written one after the other, each on top of the one before, down to
single records; a single refused record becomes a dead letter with the server's message and
SQLSTATE, and metering goes on. A refusal for a system reason (privilege revoked, table missing,
disk full) is retried with backoff for as long as it lasts and dead-letters nothing.

Partitions that grow: the loop subscribes to the topic, so the group picks up partitions added
later by itself, but only once a client refreshes the topic's metadata, every
``metadata_max_age_ms`` (kafka-python's default is 5 minutes; ours 30 s). A new partition has
no ``sink_offsets`` row, so it is read from its beginning: records produced to it before it
was assigned are not skipped. A GPU whose key now hashes to another partition may briefly
have records in two partitions held by two processors; the sink's per-GPU fence (step 1 of
``processor.sink``) still bills each of its seconds once.

Backpressure: while the database is down the loop consumes nothing (partitions paused, polls
kept going so the group membership stays alive) and retries with exponential backoff,
capped. Several processors in one consumer group share the partitions; a GPU's snapshots are
keyed to one partition, so each usage row has exactly one writer.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from collector.snapshot import Snapshot, from_json
from migmeter.errors import BadSnapshot, ConfigError, MigmeterError, SinkError
from processor.fold import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_BACKWARD_SKEW_S,
    DEFAULT_MAX_FUTURE_SKEW_S,
    BatchFold,
    DeadLetter,
    FoldedBatch,
)
from processor.kafka_join import finish_orphaned_join, kafka_threads
from processor.layout import GpuState
from processor.metrics import DatabaseUp, ProcessorMetrics
from processor.refusals import REFUSED_RETRIES, DatabaseRefused, DataRefused
from processor.sink import OffsetConflict, Sink

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_BATCH_RECORDS",
    "DEFAULT_BATCH_MS",
    "DEFAULT_WRITERS",
    "MAX_WRITERS",
    "DEFAULT_METADATA_MAX_AGE_MS",
    "DEFAULT_SESSION_TIMEOUT_MS",
    "JOIN_STALL_SESSIONS",
    "DEFAULT_SUMMARY_EVERY_S",
    "RETRY_MAX_S",
    "BACKLOG_BATCH_FACTOR",
    "GC_THRESHOLDS",
    "ProcessorConfig",
    "Processor",
]

log = logging.getLogger("migmeter.processor")

_T = TypeVar("_T")

DEFAULT_GROUP = "migmeter-processor"
# Big batches amortize the per-transaction cost (one COPY + upsert per table, the offsets
# CAS); 10,000 snapshots of ~7 instances stay well under a second of database work.
DEFAULT_BATCH_RECORDS = 10_000
# A batch is committed at the latest this long after its first record, so a trickle of
# snapshots still reaches the warehouse within seconds.
DEFAULT_BATCH_MS = 2_000
# Longest single poll: bounds how late a SIGTERM or a due batch is noticed.
POLL_MS = 200
# Backoff after a database failure: starts short (a blip), doubles, capped so an outage's end
# is noticed within half a minute.
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 30.0
# A summary line this often at INFO: frequent enough to watch a backfill, rare enough to read.
DEFAULT_SUMMARY_EVERY_S = 30.0
# How soon a dead processor's partitions move to the others (the broker allows 6000 and up).
DEFAULT_SESSION_TIMEOUT_MS = 10_000
# A group join still not done this many session timeouts after it began (the subscription, or the
# end of a revocation) is started over with a new Kafka client: the safety net behind
# processor.kafka_join's fix of the one kafka-python stall we know (a rejoin left unfinished), for
# any other. In a healthy group a join ends within one session timeout (a dead member is dropped).
JOIN_STALL_SESSIONS = 3
# Backoff after a failed call into the Kafka client (broker down): short and capped low, so
# the loop notices a restarted broker within seconds; one log line per outage, not per retry.
KAFKA_RETRY_INITIAL_S = 0.5
KAFKA_RETRY_MAX_S = 5.0
# An outage is over once a poll returns records, or polls have succeeded for this long:
# kafka-python's poll() can return empty without raising while the broker is still away, and
# calling that the end would log the same outage several times.
KAFKA_QUIET_S = 10.0
# kafka-python backs reconnects off up to 30 s (its default): after a broker restart the loop
# would sit idle that long. 2 s keeps an outage's end noticed promptly at negligible cost.
KAFKA_RECONNECT_BACKOFF_MAX_MS = 2_000
# What the Kafka client raises when the broker goes away: its own errors, and socket errors
# some code paths of kafka-python let through.
_KAFKA_FAILURES = (KafkaError, OSError)
# The dead-letter producer must not stall the loop for kafka-python's 60 s default while the
# broker is down: the dead_letters table is the exact record, the topic only a notification.
DLQ_MAX_BLOCK_MS = 5_000
DLQ_FLUSH_TIMEOUT_S = 10.0
# Dead-letter topic messages carry at most this much of the rejected payload.
DLQ_PAYLOAD_MAX = 64 * 1024
# Under backlog (at least one more batch of records already waiting in Kafka) a batch may grow
# to this many times --batch-records within its --batch-ms: every batch re-merges the 1h and 1d
# rows of the GPUs it touches and pays one transaction, so fewer, larger batches cut the
# database's work per sample (bench/RESULTS.md), and a backlog bounds latency anyway. Caught
# up, batches close at --batch-records or --batch-ms as configured.
BACKLOG_BATCH_FACTOR = 4
# Database connections writing at once: a batch is split by partition (FoldedBatch.split) into
# this many transactions, each exactly-once by itself, committed in parallel. One transaction
# per batch left the loop waiting on one database backend (the write took ~2x the fold per
# sample: bench/RESULTS.md); more connections use more of the database's cores.
DEFAULT_WRITERS = 2
MAX_WRITERS = 16
# Folding a batch allocates some 25 container objects per instance-sample (parsed JSON,
# snapshot objects, partials), nearly all freed by reference counting. CPython's default
# (700, 10, 10) runs a young collection every 700 net allocations and, as the batch grows, full
# collections over every live object (pending records included): 15-25 % of the fold's CPU,
# measured. These thresholds apply only while a batch is folded (_gc_relaxed); outside, the
# interpreter's own are in force, so the Kafka client's garbage is collected as it expects.
GC_THRESHOLDS = (10_000, 50, 100)
# Records decoded into snapshot objects at a time while folding a batch (memory: a snapshot of
# seven instances is some 4 KiB as objects, its record ~2 KiB); GPU states are read per slice.
DECODE_CHUNK_RECORDS = 2_000
# Fetch sizes: snapshots are ~2 KiB; the client's 1 MiB per partition would cap a poll at a
# few hundred records per partition.
MAX_PARTITION_FETCH_BYTES = 8 * 1024 * 1024
# How often the consumer refreshes topic metadata, i.e. how soon partitions added to the topic
# are noticed and assigned (kafka-python's default, 5 minutes, leaves them unread that long).
# One small metadata request per interval.
DEFAULT_METADATA_MAX_AGE_MS = 30_000


@dataclass(frozen=True)
class ProcessorConfig:
    bootstrap: str
    database_url: str
    topic: str
    dead_letter_topic: str
    group: str = DEFAULT_GROUP
    batch_records: int = DEFAULT_BATCH_RECORDS
    batch_ms: int = DEFAULT_BATCH_MS
    writers: int = DEFAULT_WRITERS  # connections writing a batch's parts at once (FoldedBatch.split)
    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S
    max_backward_skew_s: float = DEFAULT_MAX_BACKWARD_SKEW_S
    max_age_s: float = DEFAULT_MAX_AGE_S
    max_gap_s: float = 0.0  # 0 = 3 x each snapshot's interval_s (processor.fold rule 5)
    retry_max_s: float = RETRY_MAX_S
    summary_every_s: float = DEFAULT_SUMMARY_EVERY_S
    stop_when_idle_s: float = 0.0  # > 0: exit once caught up and nothing arrived for this long
    client_id: str = "migmeter-process"
    session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS
    instance_id: str | None = None  # static membership: a restart reclaims its partitions at once
    metadata_max_age_ms: int = DEFAULT_METADATA_MAX_AGE_MS  # how soon added partitions are consumed
    kafka_options: tuple[tuple[str, Any], ...] = ()  # TLS/SASL pass-through for consumer and producer

    def __post_init__(self) -> None:
        if not 1 <= self.writers <= MAX_WRITERS:
            raise ConfigError(f"--writers must be 1..{MAX_WRITERS}, not {self.writers}")


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: Processor) -> None:
        self._p = processor

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._p._on_revoked(set(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._p._on_assigned(set(assigned))


class Processor:
    """Consumes ``config.topic`` in ``config.group`` and keeps the warehouse exact."""

    def __init__(self, config: ProcessorConfig, metrics: ProcessorMetrics | None = None,
                 sink: Sink | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.metrics = metrics or ProcessorMetrics()
        # Connections: the writer threads' transactions (a batch's parts, one per writer), and
        # the loop's reads (offsets, GPU states), which must never run inside a transaction of
        # a batch.
        self.sink = sink or Sink(config.database_url, config.group)
        self.sinks = [self.sink] + [Sink(config.database_url, config.group) for _ in range(config.writers - 1)]
        self.reader = Sink(config.database_url, config.group)
        self._writer = ThreadPoolExecutor(max_workers=config.writers, thread_name_prefix="migmeter-writer")
        # The batch being written: its parts' writes, and when its first record arrived.
        self._inflight: tuple[list[tuple[Future[tuple[dict[str, int], float]], FoldedBatch]], float] | None = None
        self._inflight_records: list[Any] = []  # the records of the batch in flight, to bisect a part
        # Data refusals so far per (topic, partition, stored offset the refused batch started at).
        self._refused: dict[tuple[str, int, int | None], int] = {}
        self.clock = clock
        self._stop = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        # Believed stored offset per assigned partition (None = no row yet), and the next
        # offset to accept. A partition is in _next only after a successful seek to the DB.
        self._stored: dict[TopicPartition, int | None] = {}
        self._next: dict[TopicPartition, int] = {}
        self._need_seek = False
        self._joining_since: float | None = None  # monotonic time a group join began; None = joined
        self._retry_at = 0.0
        self._states: dict[str, GpuState | None] = {}
        self._pending: list[Any] = []
        self._pending_since = 0.0
        self._backoff_s = RETRY_INITIAL_S
        self._summary = _Summary()
        self._last_record_at = time.monotonic()
        self._multi_fed_logged: set[str] = set()  # GPUs already reported as fed by two feeds
        self._kafka_backoff_s = KAFKA_RETRY_INITIAL_S
        self._kafka_down_since: float | None = None  # start of the current broker outage
        self._kafka_failures = 0  # failed Kafka calls in the current outage
        self._kafka_last_failure = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish: it commits the in-flight batch, then returns (signal-safe)."""
        self._stop.set()

    def run(self) -> None:
        cfg = self.config
        try:
            self._consumer = self._new_consumer()
        except KafkaError as exc:
            # kafka-python raises once its bootstrap timeout passes: one clear line and exit 1
            # (the supervisor restarts us), not an uncaught traceback.
            for sink in self.sinks:
                sink.close()
            self.reader.close()
            self._writer.shutdown()
            raise MigmeterError(f"cannot reach Kafka at {cfg.bootstrap}: {exc.__class__.__name__}") from None
        self._subscribe(self._consumer)
        log.info("processing %s in group %s (batch %d records / %d ms, %d writer connection(s)) into %r",
                 cfg.topic, cfg.group, cfg.batch_records, cfg.batch_ms, cfg.writers, self.sink)
        try:
            while not self._stop.is_set():
                if self._need_seek:
                    self._recover()
                    continue
                self._poll_once()
                self._restart_stalled_join()
                if self._inflight is not None and all(f.done() for f, _ in self._inflight[0]):
                    self._collect()
                if self._pending and self._batch_due():
                    self._flush()
                self._summary.maybe_log(self, cfg.summary_every_s)
                if cfg.stop_when_idle_s > 0 and self._idle_for() >= cfg.stop_when_idle_s:
                    log.info("caught up and idle for %.0f s: stopping", cfg.stop_when_idle_s)
                    break
            if self._pending and not self._need_seek:
                log.info("stopping: committing the in-flight batch of %d records", len(self._pending))
                self._flush()
            self._collect()
        finally:
            self._summary.log(self, final=True)
            self._close()

    def _new_consumer(self) -> KafkaConsumer:
        cfg = self.config
        return KafkaConsumer(
            bootstrap_servers=cfg.bootstrap, group_id=cfg.group, client_id=cfg.client_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES, session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=max(1000, cfg.session_timeout_ms // 3), group_instance_id=cfg.instance_id,
            reconnect_backoff_max_ms=KAFKA_RECONNECT_BACKOFF_MAX_MS,
            metadata_max_age_ms=cfg.metadata_max_age_ms, **dict(cfg.kafka_options))

    def _subscribe(self, consumer: KafkaConsumer) -> None:
        """Join the group on ``consumer``; the join's clock starts now."""
        topic = self.config.topic
        try:
            # kafka-python joins the group with the topic metadata it has: without the topic's
            # partitions it joins with none, rejoins at once, and that second join was seen never to
            # finish on a loaded machine (a processor idle for good while /healthz said live). Fetch
            # the partitions first; a topic that does not exist yet is found by the subscription later.
            consumer.partitions_for_topic(topic)
        except KafkaError as exc:
            log.warning("no partition metadata for %s before joining yet (%s); joining anyway", topic,
                        exc.__class__.__name__)
        consumer.subscribe([topic], listener=_Listener(self))
        self._joining_since = time.monotonic()

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except KafkaError as exc:
                log.warning("closing the consumer: %s", exc)
        if self._producer is not None:
            try:
                self._producer.close(timeout=10)
            except KafkaError as exc:
                log.warning("closing the dead-letter producer: %s", exc)
        self._writer.shutdown(wait=True)
        for sink in self.sinks:
            sink.close()
        self.reader.close()
        log.info("processor stopped")

    def _batch_due(self) -> bool:
        """A batch closes ``batch_ms`` after its first record, or at ``batch_records`` records unless
        another batch's worth already waits in Kafka: then it grows, up to BACKLOG_BATCH_FACTOR times."""
        cfg = self.config
        n = len(self._pending)
        if time.monotonic() - self._pending_since >= cfg.batch_ms / 1000:
            return True
        if n < cfg.batch_records:
            return False
        return n >= cfg.batch_records * BACKLOG_BATCH_FACTOR or self._backlog() < cfg.batch_records

    def _backlog(self) -> int:
        """Records waiting in Kafka past what this loop has taken (from the client's last fetch responses)."""
        assert self._consumer is not None
        consumer = self._consumer
        waiting = 0
        for tp, nxt in self._next.items():
            hw = self._kafka_call("highwater", lambda: consumer.highwater(tp), None)
            if hw is not None and hw > nxt:
                waiting += hw - nxt
        return waiting

    def _idle_for(self) -> float:
        """Seconds since the last record arrived, provided nothing is pending and no lag is known."""
        if self._pending or self._inflight is not None or self._need_seek or not self._next:
            return 0.0
        assert self._consumer is not None
        consumer = self._consumer
        for tp, nxt in self._next.items():
            hw = self._kafka_call("highwater", lambda: consumer.highwater(tp), None)
            if hw is None or hw > nxt:
                return 0.0
        return time.monotonic() - self._last_record_at

    # -- consuming -------------------------------------------------------------------------

    def _poll_once(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        # Up to batch_records; past that only a batch that grows under backlog is polling (_batch_due).
        limit = self.config.batch_records
        room = max(1, (limit if len(self._pending) < limit else limit * BACKLOG_BATCH_FACTOR) - len(self._pending))
        polled = self._kafka_call("poll", lambda: consumer.poll(timeout_ms=POLL_MS, max_records=room), None)
        self._finish_orphaned_join(consumer)
        if polled is None:
            # Whatever poll() did before failing (a rebalance, a fetch) is not trusted: drop
            # what is not committed and re-seek from the stored offsets once Kafka answers.
            self._fail(backoff=False)
            self._retry_at = time.monotonic() + self._kafka_backoff_s
            self._kafka_backoff_s = min(self._kafka_backoff_s * 2, KAFKA_RETRY_MAX_S)
            return
        self._kafka_answered(bool(polled))
        if self._need_seek:
            return  # a rebalance inside poll() could not read offsets; recover first
        for tp, records in polled.items():
            nxt = self._next.get(tp)
            if nxt is None:
                continue  # not (or no longer) positioned from the database: never fold
            for rec in records:
                if rec.offset < nxt:
                    continue  # already covered by the stored offset (or by this batch)
                if not self._pending:
                    self._pending_since = time.monotonic()
                self._pending.append(rec)
                nxt = rec.offset + 1
            self._next[tp] = nxt
        if polled:
            self._last_record_at = time.monotonic()

    def _flush(self) -> None:
        """Fold the pending records and hand them to the writer once the batch before has committed."""
        records, self._pending = self._pending, []
        started = self._pending_since
        try:
            with _gc_relaxed():
                batch = self._fold(records)
        except SinkError as exc:  # reading GPU states failed
            self._collect()
            if not self._need_seek:
                self._failed(exc, len(records))
            return
        self._publish_dead_letters(batch.dead_letters)
        # Optimistic: the next batch folds on top of this one's result. Undone by _fail().
        self._states.update(batch.states)
        for (topic, partition), prog in batch.progress.items():
            self._stored[TopicPartition(topic, partition)] = prog.next_offset
        if not self._collect():
            return  # the batch before failed: this one was folded on top of it, drop it
        parts = batch.split(len(self.sinks))
        self._inflight = ([(self._writer.submit(self._write, sink, part), part)
                           for sink, part in zip(self.sinks, parts)], started)
        self._inflight_records = records

    @staticmethod
    def _write(sink: Sink, batch: FoldedBatch) -> tuple[dict[str, int], float]:
        """Runs in a writer thread: one transaction (see processor.sink)."""
        t0 = time.monotonic()
        rows = sink.write(batch)
        return rows, time.monotonic() - t0

    def _collect(self) -> bool:
        """Wait for the batch in flight; account for its parts. False if a part failed (memory
        dropped; the parts that committed stay committed, each with its own offsets)."""
        if self._inflight is None:
            return not self._need_seek
        writes, started = self._inflight
        self._inflight = None
        failed: tuple[SinkError, FoldedBatch] | None = None
        for future, part in writes:
            try:
                rows, write_s = future.result()
            except SinkError as exc:
                failed = failed or (exc, part)
                continue
            self._committed(part, rows, started, write_s)
        if failed is None:
            return True
        error, part = failed
        if isinstance(error, DataRefused):
            tps = set(part.progress)
            self._data_refused(error, part, [r for r in self._inflight_records if (r.topic, r.partition) in tps])
        else:
            self._failed(error, part.records)
        return False

    def _failed(self, exc: SinkError, records: int) -> None:
        if isinstance(exc, OffsetConflict):
            self.metrics.offset_conflicts.inc()
            log.warning("batch of %d records rolled back: %s; re-reading offsets", records, exc)
            self._fail(backoff=False)
            return
        self.metrics.db_retries.inc()
        self.metrics.database_up.mark(DatabaseUp.LOOP, False)
        if isinstance(exc, DatabaseRefused):
            self.metrics.db_refusals.labels(exc.sqlstate, exc.cause).inc()
            log.warning("batch of %d records refused by the database for a lasting system reason, nothing "
                        "dead-lettered: %s; retrying in %.1f s", records, exc, self._backoff_s)
        else:
            log.warning("batch of %d records not written: %s; retrying in %.1f s", records, exc, self._backoff_s)
        self._fail(backoff=True)

    def _data_refused(self, exc: DataRefused, batch: FoldedBatch, records: list[Any]) -> None:
        """A refusal tied to the records: retry a few times, then bisect (see module docstring)."""
        self.metrics.db_refusals.labels(exc.sqlstate, exc.cause).inc()
        keys = [(topic, partition, prog.expected) for (topic, partition), prog in batch.progress.items()]
        tries = 1 + max((self._refused.get(k, 0) for k in keys), default=0)
        self._refused.update(dict.fromkeys(keys, tries))
        if tries <= REFUSED_RETRIES:
            self.metrics.db_retries.inc()
            log.warning("batch of %d records refused by the database for a data reason (%s); retry %d of %d "
                        "in %.1f s, then bisect", batch.records, exc, tries, REFUSED_RETRIES, self._backoff_s)
            self._fail(backoff=True)
            return
        log.warning("batch of %d records refused %d times for a data reason (%s): bisecting it to dead-letter "
                    "only the records the database refuses", batch.records, tries, exc)
        self._bisect(batch, records, exc)

    def _bisect(self, batch: FoldedBatch, records: list[Any], first: DataRefused) -> None:
        """Write ``records`` (a refused batch) in halves, recursively, dead-lettering single refused records.

        Runs in the loop's thread while nothing else is in flight. Each part is folded on top
        of the parts committed before it (their GPU states and offsets), so offsets stay
        exact: records consumed = merged + duplicates + dead letters. Records polled after the
        batch are dropped and re-consumed: the loop re-seeks to the stored offsets afterwards.
        """
        self._states.clear()  # the refused batch's states were applied optimistically
        for (topic, partition), prog in batch.progress.items():
            self._stored[TopicPartition(topic, partition)] = prog.expected
        # Parts still to write, the next one last; a part's refusal, once known.
        parts: list[tuple[list[Any], DataRefused | None]] = [(records, first)]
        dead = 0
        try:
            while parts:
                part, refused = parts.pop()
                if refused is None:
                    try:
                        self._write_now(self._fold(part))
                        continue
                    except DataRefused as exc:
                        self.metrics.db_refusals.labels(exc.sqlstate, exc.cause).inc()
                        refused = exc
                if len(part) > 1:
                    half = len(part) // 2
                    parts += [(part[half:], None), (part[:half], None)]  # the earlier half is written first
                    continue
                letter = self._fold(part, refused=f"database refused: {refused.reason}")
                self._publish_dead_letters(letter.dead_letters)
                self._write_now(letter)
                dead += 1
        except SinkError as exc:
            self._failed(exc, len(records))
            return
        log.warning("bisection done: %d of %d records refused by the database and dead-lettered, the others "
                    "written", dead, len(records))
        self._fail(backoff=False)

    def _write_now(self, batch: FoldedBatch) -> None:
        """Write one batch through the writer thread and wait for it; account for it on success."""
        started = time.monotonic()
        rows, write_s = self._writer.submit(self._write, self.sink, batch).result()
        self._states.update(batch.states)
        for (topic, partition), prog in batch.progress.items():
            self._stored[TopicPartition(topic, partition)] = prog.next_offset
        self._committed(batch, rows, started, write_s)

    def _fold(self, records: list[Any], refused: str | None = None) -> FoldedBatch:
        """Fold ``records`` on top of the cached states and offsets; with ``refused``, every
        record is a dead letter with that reason instead (a record the database refused)."""
        stored = {(tp.topic, tp.partition): off for tp, off in self._stored.items()}
        if refused is not None:
            fold = BatchFold(self._states, stored, clock=self.clock)
            for rec in records:
                fold.refuse(rec.topic, rec.partition, rec.offset, rec.key, rec.value, refused)
            return fold.finish()
        fold = BatchFold(self._states, stored, self.config.max_future_skew_s, self.config.max_backward_skew_s,
                         self.clock, self.config.max_age_s, self.config.max_gap_s)
        # Decoded a slice at a time, so a large batch never holds all its snapshots as objects.
        for i in range(0, len(records), DECODE_CHUNK_RECORDS):
            chunk = records[i:i + DECODE_CHUNK_RECORDS]
            decoded = [_decode(rec.value) for rec in chunk]
            missing = {s.gpu_uuid for s in decoded if isinstance(s, Snapshot) and s.gpu_uuid not in self._states}
            if missing:
                # The fold reads self._states (the same dict): GPUs first seen in this slice.
                loaded = self.reader.load_states(missing)
                for uuid in missing:
                    self._states[uuid] = loaded.get(uuid)
            for rec, snap in zip(chunk, decoded):
                fold.add(rec.topic, rec.partition, rec.offset, rec.key, rec.value, snap)
        return fold.finish()

    def _committed(self, batch: FoldedBatch, rows: dict[str, int], started: float, write_s: float) -> None:
        """Bookkeeping for a committed batch (its states and offsets were applied when folded)."""
        offsets = {TopicPartition(topic, partition): OffsetAndMetadata(prog.next_offset, "", -1)
                   for (topic, partition), prog in batch.progress.items()}
        self._backoff_s = RETRY_INITIAL_S
        if self._refused:
            self._refused = {k: v for k, v in self._refused.items() if k[:2] not in batch.progress}
        m = self.metrics
        m.database_up.mark(DatabaseUp.LOOP, True)
        m.batches.inc()
        n = batch.records
        m.records.inc(n)
        m.batch_records.observe(n)
        m.batch_seconds.observe(time.monotonic() - started)
        m.write_seconds.observe(write_s)
        merged = sum(p.snapshots for p in batch.progress.values())
        dups = sum(p.duplicates for p in batch.progress.values())
        m.snapshots.inc(merged)
        m.instance_samples.inc(batch.instance_samples)
        m.duplicates.inc(dups)
        trimmed = sum(p.trimmed for p in batch.progress.values())
        m.trimmed.inc(trimmed)
        m.trimmed_seconds.inc(sum(p.trimmed_seconds for p in batch.progress.values()))
        for uuid, (before, feed) in batch.multi_fed.items():
            if uuid not in self._multi_fed_logged:
                self._multi_fed_logged.add(uuid)
                log.warning("GPU %s is fed by more than one stream (%s and %s): overlapping time is billed once, "
                            "the rest trimmed", uuid, before, feed)
        for d in batch.dead_letters:
            m.dead_letters.labels(d.kind).inc()
        for table, count in rows.items():
            m.rows_merged.labels(table).inc(count)
        # The summary's "snapshots" are all that billed time (whole or trimmed), so its counts add up.
        self._summary.add(n, merged + trimmed, batch.instance_samples, dups, len(batch.dead_letters))
        self._update_lag()
        log.debug("batch committed: %d records (%d merged, %d duplicates, %d dead letters), %d rows, write %.3f s",
                  n, merged, dups, len(batch.dead_letters), sum(rows.values()), write_s)
        self._kafka_commit(offsets)

    def _kafka_commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Mirror the stored offsets into Kafka for tooling (lag dashboards); never relied on."""
        assert self._consumer is not None
        try:
            self._consumer.commit_async(offsets)
        except (*_KAFKA_FAILURES, AssertionError, ValueError) as exc:
            log.debug("kafka offset commit skipped: %s", exc)

    def _update_lag(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        for tp, nxt in self._next.items():
            hw = self._kafka_call("highwater", lambda: consumer.highwater(tp), None)
            if hw is not None:
                stored = self._stored.get(tp)
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, hw - (stored or 0)))

    # -- dead letters ----------------------------------------------------------------------

    def _publish_dead_letters(self, dead: list[DeadLetter]) -> None:
        """Notify the dead-letter topic before the commit (at-least-once; the table is exact)."""
        if not dead:
            return
        for d in dead:
            log.warning("dead letter %s[%d]@%d: %s", d.topic, d.partition, d.offset, d.reason)
        try:
            if self._producer is None:
                self._producer = KafkaProducer(bootstrap_servers=self.config.bootstrap, acks="all",
                                               client_id=self.config.client_id + "-dlq",
                                               max_block_ms=DLQ_MAX_BLOCK_MS,
                                               reconnect_backoff_max_ms=KAFKA_RECONNECT_BACKOFF_MAX_MS,
                                               **dict(self.config.kafka_options))
            futures = [self._producer.send(self.config.dead_letter_topic, key=d.key, value=_dlq_value(d))
                       for d in dead]
            self._producer.flush(timeout=DLQ_FLUSH_TIMEOUT_S)
            for f in futures:
                f.get(timeout=0)
        except _KAFKA_FAILURES as exc:
            # The dead_letters table still records them exactly once; do not stall metering
            # for a notification.
            self.metrics.dead_letter_publish_failures.inc(len(dead))
            if self._kafka_down_since is None:
                log.error("could not publish %d dead letters to %s: %s", len(dead), self.config.dead_letter_topic, exc)
            self._kafka_failed("dead-letter publish", exc)

    # -- failure and recovery --------------------------------------------------------------

    def _fail(self, backoff: bool) -> None:
        """Forget everything not in the database; pause until offsets are re-read.

        Only sets state (it also runs inside rebalance callbacks, where polling is not
        allowed); the main loop waits and recovers in :meth:`_recover`.
        """
        if self._inflight is not None:
            # Let the writes in flight finish first: their outcome must be in the database
            # before the offsets are re-read.
            writes, started = self._inflight
            self._inflight = None
            for future, part in writes:
                try:
                    rows, write_s = future.result()
                    self._committed(part, rows, started, write_s)
                except SinkError:
                    pass
        self._pending = []
        self._states.clear()
        self._next.clear()
        self._need_seek = True
        self._retry_at = time.monotonic() + (self._backoff_s if backoff else 0.0)
        if backoff:
            self._backoff_s = min(self._backoff_s * 2, self.config.retry_max_s)
        assert self._consumer is not None
        consumer = self._consumer
        assignment: set[TopicPartition] = self._kafka_call("assignment", consumer.assignment, set())
        if assignment:
            # If pausing fails, records still polled are ignored: _next is empty until _recover().
            self._kafka_call("pause", lambda: consumer.pause(*assignment), None)

    def _wait(self, seconds: float) -> None:
        """Sleep with paused partitions, still polling so the group membership stays alive."""
        assert self._consumer is not None
        consumer = self._consumer
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            polled = self._kafka_call("poll", lambda: consumer.poll(
                timeout_ms=int(min(left, 1.0) * 1000) or 1, max_records=1, update_offsets=False), None)
            self._finish_orphaned_join(consumer)
            if polled is None:
                self._stop.wait(min(left, 1.0))  # a refused connection fails at once: no busy loop

    def _recover(self) -> None:
        """Re-read stored offsets for the whole assignment and seek; back off while the DB is down."""
        assert self._consumer is not None
        if time.monotonic() < self._retry_at:
            self._wait(min(1.0, self._retry_at - time.monotonic()))
            return
        consumer = self._consumer
        assignment: set[TopicPartition] = set(self._kafka_call("assignment", consumer.assignment, set()))
        try:
            self._seek(assignment)
            if assignment:
                consumer.resume(*assignment)
        except SinkError as exc:
            self.metrics.db_retries.inc()
            self.metrics.database_up.mark(DatabaseUp.LOOP, False)
            log.warning("database still unavailable (%s); retrying in %.1f s", exc, self._backoff_s)
            self._retry_at = time.monotonic() + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, self.config.retry_max_s)
            return
        except _KAFKA_FAILURES as exc:
            self._kafka_failed("seek", exc)
            self._next.clear()
            self._retry_at = time.monotonic() + self._kafka_backoff_s
            return
        self._need_seek = False
        self.metrics.database_up.mark(DatabaseUp.LOOP, True)
        log.info("resumed from stored offsets: %s", _fmt(self._stored))

    def _seek(self, partitions: set[TopicPartition]) -> None:
        assert self._consumer is not None
        by_topic: dict[str, list[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        for topic, parts in by_topic.items():
            stored = self.reader.read_offsets(topic, parts)
            for p, off in stored.items():
                tp = TopicPartition(topic, p)
                self._stored[tp] = off
                if off is None:
                    self._consumer.seek_to_beginning(tp)
                    self._next[tp] = 0
                else:
                    self._consumer.seek(tp, off)
                    self._next[tp] = off

    def _finish_orphaned_join(self, consumer: KafkaConsumer) -> None:
        """kafka-python left a rejoin unfinished (:mod:`processor.kafka_join`): ask it to join again."""
        if finish_orphaned_join(consumer):
            self.metrics.orphaned_joins.inc()
            log.warning("group %s: the Kafka client left a rejoin unfinished (a kafka-python 3.0 bug); "
                        "asked it to join again", self.config.group)

    def _restart_stalled_join(self) -> None:
        """Start a group join over that has not ended in JOIN_STALL_SESSIONS session timeouts."""
        cfg = self.config
        if self._joining_since is None or self._consumer is None:
            return
        waited = time.monotonic() - self._joining_since
        if waited < JOIN_STALL_SESSIONS * cfg.session_timeout_ms / 1000:
            return
        log.warning("group %s: joining for %.0f s without an assignment; joining again with a new client "
                    "(Kafka client threads: %s)", cfg.group, waited, kafka_threads())
        self.metrics.group_rejoins.inc()
        # A new client, not unsubscribe/subscribe on the old one: the stalled client's coordinator
        # (its heartbeat thread, its member id the broker has dropped) was seen to stay stalled.
        try:
            fresh = self._new_consumer()
        except KafkaError as exc:
            log.warning("group %s: no new Kafka client (%s); keeping the old one", cfg.group, exc.__class__.__name__)
            self._joining_since = time.monotonic()
            return
        stalled, self._consumer = self._consumer, fresh
        self._pending = []  # nothing is owned until the new assignment seeks from the database
        self._states.clear()
        self._next.clear()
        self._stored.clear()
        try:
            stalled.close(autocommit=False, timeout_ms=cfg.session_timeout_ms)
        except KafkaError as exc:
            log.warning("closing the stalled consumer: %s", exc)
        self._kafka_call("subscribe", lambda: self._subscribe(fresh), None)
        self._joining_since = time.monotonic()

    def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        log.info("partitions revoked: %s", _fmt_tps(revoked))
        if self._pending and not self._need_seek:
            # Still the owner: commit what we have rather than make the next owner redo it.
            self._flush()
        self._collect()
        self._pending = []
        self._states.clear()  # another processor may change these GPUs' state from now on
        for tp in revoked:
            self._stored.pop(tp, None)
            self._next.pop(tp, None)
        self._joining_since = time.monotonic()  # after the commit above: the join starts now

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._joining_since = None  # the join is done, even with no partitions for this member
        self._states.clear()
        self._pending = []
        self._next.clear()
        if self._need_seek:
            return  # _recover() will seek the whole assignment once the database answers
        try:
            self._seek(set(self._consumer.assignment()) if self._consumer else assigned)
        except SinkError as exc:
            self.metrics.db_retries.inc()
            log.warning("cannot read stored offsets on assignment (%s); will retry", exc)
            self._fail(backoff=True)
            return
        except _KAFKA_FAILURES as exc:
            self._kafka_failed("seek", exc)
            self._fail(backoff=False)
            return
        log.info("partitions assigned: %s; stored offsets %s", _fmt_tps(assigned), _fmt(self._stored))


    # -- Kafka calls -----------------------------------------------------------------------

    def _kafka_call(self, what: str, call: Callable[[], _T], default: _T) -> _T:
        """One guarded call into the Kafka client: ``default`` if the broker failed it.

        The caller decides what a failure means for the batch (see :meth:`_poll_once`);
        this only keeps the exception out of the loop and accounts for the outage.
        """
        try:
            return call()
        except _KAFKA_FAILURES as exc:
            self._kafka_failed(what, exc)
            return default

    def _kafka_failed(self, what: str, exc: BaseException) -> None:
        """Account for a failed Kafka call: one WARNING when an outage starts, DEBUG after."""
        self._kafka_failures += 1
        self._kafka_last_failure = time.monotonic()
        if self._kafka_down_since is None:
            self._kafka_down_since = self._kafka_last_failure
            log.warning("Kafka at %s unavailable (%s: %s: %s); uncommitted records are dropped and "
                        "re-read from the stored offsets once it answers, retrying every %.0f s at most",
                        self.config.bootstrap, what, exc.__class__.__name__, exc, KAFKA_RETRY_MAX_S)
        else:
            log.debug("Kafka still unavailable (%s: %s: %s)", what, exc.__class__.__name__, exc)

    def _kafka_answered(self, got_records: bool) -> None:
        """A poll succeeded: end the outage once Kafka has clearly been back a while."""
        if self._kafka_down_since is None:
            return
        now = time.monotonic()
        if not got_records and now - self._kafka_last_failure < KAFKA_QUIET_S:
            return
        log.info("Kafka at %s usable again (%s); the outage lasted %.0f s (%d failed calls)", self.config.bootstrap,
                 "records arrive" if got_records else f"no failed call for {KAFKA_QUIET_S:.0f} s",
                 self._kafka_last_failure - self._kafka_down_since, self._kafka_failures)
        self._kafka_down_since = None
        self._kafka_failures = 0
        self._kafka_backoff_s = KAFKA_RETRY_INITIAL_S


class _Summary:
    """Counts since the last INFO summary line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.since = time.monotonic()
        self.records = self.merged = self.samples = self.dups = self.dead = self.batches = 0

    def add(self, records: int, merged: int, samples: int, dups: int, dead: int) -> None:
        self.records += records
        self.merged += merged
        self.samples += samples
        self.dups += dups
        self.dead += dead
        self.batches += 1

    def maybe_log(self, p: Processor, every_s: float) -> None:
        if every_s > 0 and time.monotonic() - self.since >= every_s:
            self.log(p)

    def log(self, p: Processor, final: bool = False) -> None:
        elapsed = max(time.monotonic() - self.since, 1e-9)
        log.info("%s%d records in %d batches (%d snapshots, %d instance-samples = %.0f/s, %d duplicates, "
                 "%d dead letters) in %.0f s",
                 "final: " if final else "", self.records, self.batches, self.merged, self.samples,
                 self.samples / elapsed, self.dups, self.dead, elapsed)
        self.reset()


@contextlib.contextmanager
def _gc_relaxed() -> Iterator[None]:
    """GC_THRESHOLDS for the duration of the block; the previous thresholds afterwards.

    The thresholds are the interpreter's: with several processors in one process (as some
    tests run them, in threads), overlapping folds may leave the relaxed ones in force, which
    changes only when garbage cycles are collected.
    """
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _decode(value: bytes | None) -> Snapshot | BadSnapshot:
    """One record's value as a snapshot, or the reason it is not one."""
    try:
        if value is None:
            raise BadSnapshot("record has no value (tombstone)")
        return from_json(value)
    except BadSnapshot as exc:
        return exc


def _dlq_value(d: DeadLetter) -> bytes:
    payload = d.payload[:DLQ_PAYLOAD_MAX]
    return json.dumps({
        "reason": d.reason, "kind": d.kind, "topic": d.topic, "partition": d.partition, "offset": d.offset,
        "key": d.key.decode("utf-8", "replace") if d.key is not None else None,
        "payload": payload.decode("utf-8", "replace"), "payload_bytes": len(d.payload),
    }).encode()


def _fmt_tps(tps: set[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps)) or "none"


def _fmt(stored: dict[TopicPartition, int | None]) -> str:
    return ", ".join(f"[{tp.partition}]={'earliest' if o is None else o}" for tp, o in sorted(stored.items())) or "none"
