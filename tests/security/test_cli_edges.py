"""Values at the edge of what a flag can mean are usage errors, one line, exit 2 (issue 18).

Each of these raised a traceback: ``--month 0000-01`` (year 0) and ``9999-12`` (its next
month is past Python's calendar), ``--from``/``--to``/``--at`` at year 1 or 9999 with a ±14:00
offset (UTC falls off the calendar), bytes that are not UTF-8 in ``--cluster``, ``--gpu`` or a
price model name (they can be neither sent to PostgreSQL nor printed), ``--plot`` to a path
that cannot be written; ``price set ... 1e-30`` silently stored 0.000000. The database URL
points nowhere (and holds a known password): a value that got as far as connecting would fail
with exit 1, not 2, and must still not print the password.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from migmeter import settings
from migmeter.cli import main

PASSWORD = "Edge-S3CRET-4471"
_URL = f"postgresql://nobody:{PASSWORD}@127.0.0.1:1/none"
_BAD = "\udcff\udcfe"  # what os.fsdecode makes of the bytes b"\xff\xfe" (surrogateescape)

EDGES = [
    ["report", "chargeback", "--month", "0000-01"],
    ["report", "chargeback", "--month", "9999-12"],
    ["report", "idle", "--month", "0000-01"],
    ["report", "idle", "--month", "9999-12"],
    ["report", "utilization", "--from", "0001-01-01T00:00:00+14:00", "--to", "2026-01-01"],
    ["report", "utilization", "--from", "2026-01-01", "--to", "9999-12-31T23:59:59-14:00"],
    ["report", "utilization", "--from", "0001-01-01", "--to", "0001-01-02"],
    ["report", "layout", "--gpu", "GPU-1", "--at", "0001-01-01T00:00:00+14:00"],
    ["report", "layout", "--gpu", "GPU-1", "--from", "9999-12-31T23:59:59-14:00", "--to", "9999-12-31"],
    ["report", "chargeback", "--month", "2026-11", "--cluster", _BAD],
    ["report", "utilization", "--from", "2026-11-01", "--to", "2026-11-02", "--gpu", _BAD],
    ["report", "layout", "--gpu", _BAD],
    ["price", "set", _BAD, "2.5", "--from", "2026-11-01"],
    ["price", "list", "--model", _BAD],
    ["price", "delete", _BAD, "--from", "2026-11-01"],
    ["price", "set", "NVIDIA A100-SXM4-80GB", "1e-30", "--from", "2026-11-01"],
    ["price", "set", "NVIDIA A100-SXM4-80GB", "0.0000001", "--from", "2026-11-01"],
    ["report", "chargeback", "--month", "2026-11", "--plot", "/proc/migmeter-plot.png"],
    ["report", "chargeback", "--month", "2026-11", "--plot", "/etc/hostname/plot.png"],
    ["report", "utilization", "--from", "2026-11-01", "--to", "2026-11-02", "--plot", "/"],
    ["collect", "--source", "simulate", "--once", "--stdout", "--start", "0001-01-01T00:00:00+14:00"],
    ["collect", "--source", "simulate", "--once", "--stdout", "--start", "now-99999999999d"],
    ["collect", "--source", "simulate", "--once", "--stdout", "--cluster", _BAD],
    ["collect", "--source", "simulate", "--once", "--stdout", "--cluster", "\U0001F600" * 200],
]


@pytest.mark.parametrize("argv", EDGES, ids=lambda a: " ".join(a).encode("ascii", "backslashreplace").decode()[:70])
def test_edge_values_are_usage_errors(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(settings.ENV_DATABASE_URL, _URL)
    try:
        rc = main(argv)  # any exception escaping main() is a traceback for the operator
    except SystemExit as exc:  # argparse's own usage errors
        rc = exc.code
    out = capsys.readouterr()
    assert rc == 2, f"{argv} -> {rc}\n{out.out}{out.err}"
    assert PASSWORD not in out.out + out.err


@pytest.mark.parametrize("argv", [EDGES[0], EDGES[9], EDGES[15], EDGES[17]], ids=["month", "bytes", "price", "plot"])
def test_as_a_process_one_line_and_no_traceback(argv: list[str]) -> None:
    """What an operator sees: real argv bytes (b"\\xff\\xfe"), one error line on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGMETER_")}
    env[settings.ENV_DATABASE_URL] = _URL
    raw = [os.fsencode(a) for a in argv]
    proc = subprocess.run([sys.executable.encode(), b"-m", b"migmeter.cli", *raw], capture_output=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=90, check=False)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 2, err
    assert "Traceback" not in err and PASSWORD not in err + proc.stdout.decode(errors="replace")
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("usage:", " "))]
    assert len(lines) == 1, err
