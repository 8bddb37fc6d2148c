"""Keeping kafka-python's group join alive: a workaround for a bug of kafka-python 3.0, and the
evidence to log when a join stalls anyway.

The bug (reproduced against a real broker by ``tests/integration/test_kafka_join.py``): a
rejoin runs as a task on the client's IO thread, and ``poll()`` waits for it only while its own
timer lasts. When the timer runs out first (a rebalance listener that used it up, a short poll)
and the task finishes between two polls, its result is never applied. If the rejoin was started
by a metadata change (partitions added, or the leader's first assignment made from metadata that
did not list the topic yet), the leader's assignment inside that task already cleared the
change, so ``need_rejoin()`` turns False while ``rejoining`` stays True: the client never joins
again, its heartbeats stay disabled, the broker drops the member, and the processor idles for
good with /healthz live.

Rules:

1. After every poll, a client that is ``rejoining`` but no longer ``need_rejoin()`` is asked to
   rejoin (``request_rejoin()``): the next poll sends a new JoinGroup and applies its result.
2. Only the two attributes and the one method above are used; a kafka-python without them is
   left alone (the processor's start-over after JOIN_STALL_SESSIONS still applies).
"""

from __future__ import annotations

import sys
import threading
import traceback
from pathlib import Path
from typing import Any

__all__ = ["finish_orphaned_join", "kafka_threads"]


def finish_orphaned_join(consumer: Any) -> bool:
    """Rule 1: True when the client had left a join unfinished and was asked to rejoin."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or getattr(coordinator, "rejoining", False) is not True:
        return False
    need_rejoin = getattr(coordinator, "need_rejoin", None)
    request_rejoin = getattr(coordinator, "request_rejoin", None)
    if need_rejoin is None or request_rejoin is None or need_rejoin():
        return False
    request_rejoin()
    return True


def kafka_threads() -> str:
    """Where the Kafka client's own threads are (innermost frames): evidence for a stalled join."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        if ident == threading.get_ident() or not names.get(ident, "").startswith("kafka"):
            continue
        stack = traceback.extract_stack(frame)[-3:]
        parts.append(f"{names[ident]} at " + " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                                                      for f in reversed(stack)))
    return "; ".join(parts) or "none"
