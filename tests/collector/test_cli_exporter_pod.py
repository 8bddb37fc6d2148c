"""``migmeter collect --exporter-pod``: the exporter's own pod is never a tenant (flag or env)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from collector.snapshot import Tenant, from_json
from migmeter.cli import main

_REFERENCE = Path(__file__).parent / "sources" / "dcgm_reference" / "01-a100-40gb-gpu-plus-gi-nvidia-docs.prom"
_EXPORTER = 'namespace="gpu-operator",pod="nvidia-dcgm-exporter-7xk2p",container="nvidia-dcgm-exporter"'


@pytest.fixture
def scrape(tmp_path: Path) -> str:
    """The reference scrape with the exporter pod's labels on GI 13 (a relabelled feed)."""
    text = "\n".join(ln.replace('"} ', f'",{_EXPORTER}}} ', 1) if "GPU_I_ID" in ln else ln
                     for ln in _REFERENCE.read_text().splitlines())
    path = tmp_path / "scrape.prom"
    path.write_text(text + "\n")
    return f"file:{path}"


def _tenant(capsys: pytest.CaptureFixture[str], *argv: str) -> Tenant:
    assert main(["collect", "--source", "dcgm", "--once", "--stdout", *argv]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    (inst,) = from_json(line).instances
    return inst.tenant


def test_without_the_flag_the_exporter_pod_reads_as_a_tenant(scrape: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _tenant(capsys, "--url", scrape).pod == "nvidia-dcgm-exporter-7xk2p"


def test_flag_makes_the_exporter_pod_unassigned(scrape: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _tenant(capsys, "--url", scrape, "--exporter-pod", "nvidia-dcgm-exporter-.*") == Tenant()


def test_environment_sets_it_too(scrape: str, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGMETER_EXPORTER_POD", "nvidia-dcgm-exporter-[a-z0-9]{5}")
    assert _tenant(capsys, "--url", scrape) == Tenant()


def test_the_pattern_must_match_the_whole_pod_name(scrape: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _tenant(capsys, "--url", scrape, "--exporter-pod", "nvidia-dcgm").pod == "nvidia-dcgm-exporter-7xk2p"


def test_bad_pattern_is_a_configuration_error(scrape: str, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["collect", "--source", "dcgm", "--url", scrape, "--once", "--stdout", "--exporter-pod", "(["]) == 2
    assert any("--exporter-pod '([' is not a valid regular expression" in r.getMessage() for r in caplog.records)


def test_flag_on_a_source_without_pod_labels_is_a_configuration_error(capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["collect", "--source", "simulate", "--once", "--stdout", "--hosts", "1", "--gpus-per-host", "1"]
    assert main([*argv, "--exporter-pod", "x-.*"]) == 2
    # The site-wide environment variable does not stop the other sources.
    monkeypatch.setenv("MIGMETER_EXPORTER_POD", "x-.*")
    assert main(argv) == 0


def test_help_names_the_flag_and_its_environment_variable() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["collect", "--help"])
    assert "--exporter-pod" in out.getvalue() and "MIGMETER_EXPORTER_POD" in out.getvalue()
