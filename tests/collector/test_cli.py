"""``migmeter collect``: one round to stdout with the simulator, usage errors, --help for every group."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.snapshot import from_json
from collector.spool import Spool
from migmeter.cli import main

_DCGM_SCRAPE = Path(__file__).parent / "sources" / "dcgm_reference" / "01-a100-40gb-gpu-plus-gi-nvidia-docs.prom"
# Nothing listens on port 1: a broker that is down.
_DOWN = "127.0.0.1:1"


def _collect(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = main(["collect", *argv])
    return code, capsys.readouterr().out.splitlines()


def test_once_stdout_prints_one_round_of_the_simulated_fleet(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = _collect(capsys, "--source", "simulate", "--once", "--stdout", "--hosts", "2",
                           "--gpus-per-host", "3", "--cluster", "lab")
    assert code == 0
    snaps = [from_json(line) for line in lines]
    assert len(snaps) == 6
    assert len({s.gpu_uuid for s in snaps}) == 6
    assert {s.cluster for s in snaps} == {"lab"}
    assert len({s.ts for s in snaps}) == 1


def test_rounds_advance_simulated_time_by_the_interval(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = _collect(capsys, "--source", "simulate", "--rounds", "3", "--speed", "0", "--stdout",
                           "--hosts", "1", "--gpus-per-host", "2", "--interval", "60", "--metrics-port", "0",
                           "--start", "2025-03-01T00:00:00Z")
    assert code == 0
    snaps = [from_json(line) for line in lines]
    per_gpu: dict[str, list] = {}
    for s in snaps:
        per_gpu.setdefault(s.gpu_uuid, []).append(s.ts)
    assert len(per_gpu) == 2
    for stamps in per_gpu.values():
        assert [t.isoformat() for t in stamps] == [
            "2025-03-01T00:00:00+00:00", "2025-03-01T00:01:00+00:00", "2025-03-01T00:02:00+00:00"]


def test_cluster_comes_from_the_environment(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGMETER_CLUSTER", "site-b")
    code, lines = _collect(capsys, "--source", "simulate", "--once", "--stdout", "--hosts", "1",
                           "--gpus-per-host", "1")
    assert code == 0 and from_json(lines[0]).cluster == "site-b"


def test_dcgm_saved_scrape(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = _collect(capsys, "--source", "dcgm", "--url", f"file:{_DCGM_SCRAPE}", "--once", "--stdout")
    assert code == 0
    snaps = [from_json(line) for line in lines]
    assert snaps and all(s.source == "dcgm" for s in snaps)


def test_unreadable_source_in_a_one_shot_run_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, lines = _collect(capsys, "--source", "dcgm", "--url", f"file:{tmp_path / 'missing.prom'}",
                           "--once", "--stdout")
    assert lines == []
    assert code == 1


def test_broker_down_with_a_spool_keeps_the_round(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, lines = _collect(capsys, "--source", "simulate", "--once", "--hosts", "1", "--gpus-per-host", "4",
                           "--bootstrap", _DOWN, "--spool-dir", str(tmp_path), "--flush-timeout", "0.5")
    assert code == 0
    assert lines == []
    with Spool(tmp_path) as spool:
        assert len(spool) == 4


def test_broker_down_without_a_spool_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _collect(capsys, "--source", "simulate", "--once", "--hosts", "1", "--gpus-per-host", "2",
                       "--bootstrap", _DOWN, "--no-spool", "--flush-timeout", "0.5")
    assert code == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["--source", "dcgm", "--once", "--stdout"],  # no --url
        ["--source", "prometheus", "--url", "http://p:9090", "--once", "--stdout"],  # no --start
        ["--source", "prometheus", "--url", "http://a", "--url", "http://b", "--start", "now-1h", "--stdout"],
        ["--source", "simulate", "--url", "http://x", "--once", "--stdout"],
        ["--source", "simulate", "--total-slices", "A100=9", "--once", "--stdout"],
        ["--source", "simulate", "--total-slices", "A100", "--once", "--stdout"],
        ["--source", "simulate", "--start", "yesterday", "--once", "--stdout"],
        ["--source", "dcgm", "--url", "file:x", "--start", "now", "--once", "--stdout"],
        ["--source", "simulate", "--once", "--spool-max-mb", "0.1", "--bootstrap", _DOWN],
    ],
)
def test_configuration_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["collect", *argv]) == 2


@pytest.mark.parametrize(
    "argv",
    [
        [],  # --source is required
        ["--source", "gpu"],
        ["--source", "simulate", "--interval", "0"],
        ["--source", "simulate", "--rounds", "0"],
        ["--source", "simulate", "--metrics-port", "70000"],
        ["--source", "simulate", "--spool-full", "drop-newest"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["collect", *argv])
    assert exc.value.code == 2


_FLAG_GROUPS = {
    "source": ["--source", "--url", "--cluster", "--interval", "--total-slices", "--scrape-timeout"],
    "run": ["--once", "--rounds", "--log-every"],
    "publishing": ["--stdout", "--bootstrap", "--topic", "--flush-timeout"],
    "security": ["--security-protocol", "--sasl-mechanism", "--sasl-password-file", "--ssl-cafile",
                 "--ssl-certfile", "--ssl-keyfile"],
    "spool": ["--spool-dir", "--no-spool", "--spool-max-mb", "--spool-full"],
    "metrics": ["--metrics-addr", "--metrics-port"],
    "prometheus": ["--start", "--end", "--step"],
    "simulate": ["--seed", "--hosts", "--gpus-per-host", "--models", "--speed"],
}
_ENV_VARS = ["MIGMETER_CLUSTER", "MIGMETER_KAFKA_BOOTSTRAP", "MIGMETER_SPOOL_DIR", "MIGMETER_KAFKA_SECURITY_PROTOCOL",
             "MIGMETER_KAFKA_SASL_MECHANISM", "MIGMETER_KAFKA_SASL_USERNAME", "MIGMETER_KAFKA_SASL_PASSWORD",
             "MIGMETER_KAFKA_SASL_PASSWORD_FILE", "MIGMETER_KAFKA_SSL_CAFILE"]


@pytest.fixture(scope="module")
def help_text() -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        main(["collect", "--help"])
    assert exc.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("group", sorted(_FLAG_GROUPS))
def test_help_lists_every_flag_of_each_group(help_text: str, group: str) -> None:
    missing = [f for f in _FLAG_GROUPS[group] if f not in help_text]
    assert missing == []


def test_help_names_the_environment_variables_and_defaults(help_text: str) -> None:
    assert [v for v in _ENV_VARS if v not in help_text] == []
    assert "9401" in help_text and "127.0.0.1" in help_text and "migmeter.snapshots.v1" in help_text


def test_metrics_port_in_use_is_a_configuration_error(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["collect", "--source", "simulate", "--rounds", "1", "--stdout", "--metrics-port", str(port)])
    assert code == 2
    assert capsys.readouterr().out == ""  # nothing was read before the failure


def test_metrics_are_served_while_running(capsys: pytest.CaptureFixture[str]) -> None:
    import socket
    import threading
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bodies: list[str] = []

    class _Scrape(threading.Thread):
        def run(self) -> None:
            bodies.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())

    import collector.run as run_mod

    real_one_round = run_mod._one_round

    def scrape_after_first_round(*a: object, **kw: object) -> int:
        left = real_one_round(*a, **kw)  # type: ignore[arg-type]
        if not bodies:
            t = _Scrape()
            t.start()
            t.join()
        return left

    mp = pytest.MonkeyPatch()
    mp.setattr(run_mod, "_one_round", scrape_after_first_round)
    try:
        code = main(["collect", "--source", "simulate", "--rounds", "2", "--speed", "0", "--stdout", "--hosts", "1",
                     "--gpus-per-host", "2", "--metrics-port", str(port)])
    finally:
        mp.undo()
    assert code == 0
    assert "migmeter_gpu_total_slices{" in bodies[0]
    assert "migmeter_collector_snapshots_read_total 2.0" in bodies[0]
