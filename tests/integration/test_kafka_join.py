"""kafka-python 3.0 leaves a rejoin unfinished when the join task ends between two polls after a
metadata change (processor.kafka_join): reproduced against the real broker, then finished by
finish_orphaned_join. If a kafka-python release fixes the bug, the first assertion fails: the
workaround can then go."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewPartitions

from processor.kafka_join import finish_orphaned_join
from tests.fix_faults import DEADLINE_S, wait_until

pytestmark = pytest.mark.integration


def _partitions(consumer: KafkaConsumer) -> list[int]:
    return sorted(tp.partition for tp in consumer.assignment())


def test_an_unfinished_rejoin_is_finished(kafka_bootstrap, new_topic):  # type: ignore[no-untyped-def]
    topic = new_topic(partitions=2)
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=f"join.{uuid.uuid4().hex[:8]}",
                             enable_auto_commit=False, session_timeout_ms=10_000, heartbeat_interval_ms=3_000,
                             metadata_max_age_ms=500)
    coordinator = consumer._coordinator
    try:
        consumer.subscribe([topic])

        def poll_as_the_processor_does() -> None:
            consumer.poll(timeout_ms=200)
            finish_orphaned_join(consumer)  # the first join can be left unfinished too (empty first metadata)

        wait_until(lambda: poll_as_the_processor_does() is None and _partitions(consumer) == [0, 1]
                   and not coordinator.rejoining, "the first join")
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.create_partitions({topic: NewPartitions(4)})
        finally:
            admin.close()

        # The rejoin the new partitions start, polled with a timer too short for it; before the next
        # poll its task is let end (it runs on the client's IO thread): its result is then dropped.
        def join_task_ended() -> bool:
            task = coordinator._join_task
            return task is None or task.is_done

        def orphaned() -> bool:
            consumer.poll(timeout_ms=1)
            wait_until(join_task_ended, "the join task to end between two polls", every_s=0.01)
            return coordinator.rejoining and not coordinator.need_rejoin()

        wait_until(orphaned, "kafka-python to leave the rejoin unfinished (fixed upstream? drop the workaround)",
                   every_s=0)
        # Polled normally it does not recover by itself (heartbeats disabled, no JoinGroup sent) ...
        stuck_until = time.monotonic() + 3.0
        while time.monotonic() < stuck_until:
            consumer.poll(timeout_ms=200)
        assert coordinator.rejoining and not coordinator.need_rejoin() and _partitions(consumer) == [0, 1]
        # ... and with the workaround after each poll it joins again and gets the new partitions.
        nudges = 0

        def joined() -> bool:
            nonlocal nudges
            consumer.poll(timeout_ms=200)
            nudges += finish_orphaned_join(consumer)
            return not coordinator.rejoining and _partitions(consumer) == [0, 1, 2, 3]

        wait_until(joined, "the rejoin to finish", timeout_s=DEADLINE_S, every_s=0)
        assert nudges >= 1
        assert finish_orphaned_join(consumer) is False  # a joined client is left alone
    finally:
        consumer.close(autocommit=False)


def test_a_client_without_the_attributes_is_left_alone() -> None:
    assert finish_orphaned_join(object()) is False
