"""Starting without the services: a clear error and an exit code, never a traceback.

A processor whose broker is unreachable at start cannot do anything useful; it must say so
in one line (with the address, never a credential) and exit 1 so its supervisor restarts it,
rather than die with an uncaught kafka-python exception."""

from __future__ import annotations

from pathlib import Path

from tests.fix_faults import free_port, spawn


def test_processor_with_no_broker_exits_1_with_a_clear_error(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    proc = spawn("process", ["process", "--bootstrap", bootstrap, "--database-url",
                             f"postgresql://nobody:pw-8812@127.0.0.1:{free_port()}/none", "--metrics-port", "0"], tmp_path)
    try:
        rc = proc.popen.wait(120)  # kafka-python gives up bootstrapping after its own timeout (30 s)
    finally:
        proc.kill()
    log = proc.log.read_text()
    assert rc == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert f"cannot reach Kafka at {bootstrap}" in log
    assert "pw-8812" not in log
