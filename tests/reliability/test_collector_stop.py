"""SIGTERM during a flush to a broker that stopped answering: nothing is lost.

A private broker is frozen with SIGSTOP: its connections stay open and nothing is ever
acknowledged, the worst case for a flush (a refused connection fails at once). The stop
event (what SIGTERM sets) ends the wait for acknowledgements after a 1 s grace
(``collector.publish._STOP_GRACE_S``) and spools what was not acknowledged; the test checks
that account (delivered + spooled = sent, nothing dropped). It bounds the flush only loosely
(JOIN_S): kafka-python's own request and delivery timeouts (10 s, 30 s) would also end a
wait, so how much sooner the stop ends it is measured, not asserted (no timed assertions).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from collector.publish import KafkaPublisher
from collector.snapshot import from_json
from collector.spool import Spool
from migmeter import stack
from tests.processor.build import T0, TWO_GIS, mig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The flush may wait FLUSH_S; JOIN_S only keeps a broken test from hanging.
FLUSH_S = 300.0
JOIN_S = 60.0


def test_stop_ends_the_wait_for_acknowledgements_and_spools_the_rest(
        private_kafka: stack.KafkaNode, tmp_path: Path) -> None:
    stop = threading.Event()
    first_done, frozen, flushed = threading.Event(), threading.Event(), threading.Event()
    first, second = mig(T0, TWO_GIS, gpu="GPU-0"), mig(T0 + timedelta(seconds=15), TWO_GIS, gpu="GPU-0")
    out: list[object] = []

    def collector() -> None:
        """The poll loop's thread (a spool belongs to the thread that opened it)."""
        try:
            pub = KafkaPublisher(private_kafka.bootstrap, "stop.snapshots", spool=Spool(tmp_path / "spool"),
                                 stop=stop)
            pub.send(first)
            pub.flush(60.0)
            out.append(pub.stats.delivered)  # 1: connected, metadata known, the next send cannot block
            first_done.set()
            frozen.wait(JOIN_S)
            pub.send(second)  # handed to the producer; the frozen broker will never acknowledge it
            pub.flush(FLUSH_S)
            flushed.set()
            pub.close(1.0)
            out.append(pub.stats)
        except BaseException as exc:  # surfaced below
            out.append(exc)
            first_done.set()
            flushed.set()

    thread = threading.Thread(target=collector, daemon=True)
    thread.start()
    pid = private_kafka.pid()
    assert pid is not None
    deadline_ok = False
    try:
        assert first_done.wait(JOIN_S * 2), "the first snapshot was never delivered"
        assert out[0] == 1, out
        os.kill(pid, signal.SIGSTOP)
        frozen.set()
        stop.set()  # SIGTERM, while the flush waits for the frozen broker
        t_stop = time.monotonic()
        deadline_ok = flushed.wait(JOIN_S)
        print(f"flush ended {time.monotonic() - t_stop:.1f} s after the stop")  # measured, not asserted
    finally:
        os.kill(pid, signal.SIGCONT)
    assert deadline_ok, "the flush ignored the stop event"
    thread.join(JOIN_S)
    assert not thread.is_alive() and len(out) == 2 and not isinstance(out[1], BaseException), out
    st = out[1]
    # Sent 2 = delivered 1 + spooled 1, nothing dropped; the spool holds the second snapshot.
    assert (st.sent, st.delivered, st.spool_depth, st.dropped) == (2, 1, 1, 0), st  # type: ignore[union-attr]
    with Spool(tmp_path / "spool") as spool:
        assert [from_json(r.value) for r in spool.peek(10)] == [second]
