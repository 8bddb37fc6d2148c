"""Run the generated rules through promtool: rule unit tests (``*.test.yml``) must pass, and
``*.must_fail.yml`` (a deliberately wrong expectation) must fail, proving the harness can fail.

promtool comes from Debian's ``prometheus`` package. Missing promtool skips locally and fails
under ``CI=true``, like the integration tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from collector.promql import RuleOptions, rules_yaml

HERE = Path(__file__).parent
PASSING = sorted(HERE.glob("*.test.yml"))
MUST_FAIL = sorted(HERE.glob("*.must_fail.yml"))
# The options every *.test.yml is written against; change both together.
TEST_OPTIONS = RuleOptions(
    by=("pod", "namespace"),
    util_threshold=0.9,
    util_for="15m",
    idle_threshold=0.05,
    idle_for="1h",
    layout_window="10m",
)
_TIMEOUT_S = 120  # promtool needs a second or two; this only stops a hang


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        msg = "promtool not installed (apt-get install prometheus)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture()
def rules_dir(tmp_path: Path) -> Path:
    (tmp_path / "rules.yml").write_text(rules_yaml(TEST_OPTIONS))
    for f in [*PASSING, *MUST_FAIL]:
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)


def test_there_are_rule_tests() -> None:
    assert PASSING and MUST_FAIL


def test_check_rules(promtool: str, rules_dir: Path) -> None:
    proc = _run(promtool, "check", "rules", "rules.yml", cwd=rules_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


@pytest.mark.parametrize("test_file", PASSING, ids=lambda p: p.name)
def test_rule_unit_tests_pass(promtool: str, rules_dir: Path, test_file: Path) -> None:
    proc = _run(promtool, "test", "rules", test_file.name, cwd=rules_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("test_file", MUST_FAIL, ids=lambda p: p.name)
def test_wrong_expectation_fails(promtool: str, rules_dir: Path, test_file: Path) -> None:
    proc = _run(promtool, "test", "rules", test_file.name, cwd=rules_dir)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "FAILED" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "opts",
    [
        RuleOptions(),
        RuleOptions(by=("Hostname",), selector='{job="dcgm-exporter", namespace=~"ml|web"}'),
        RuleOptions(by=("pod_name",), weights_selector='{job="migmeter"}', util_threshold=1, idle_threshold=0),
    ],
)
def test_option_variants_check(promtool: str, tmp_path: Path, opts: RuleOptions) -> None:
    (tmp_path / "r.yml").write_text(rules_yaml(opts))
    proc = _run(promtool, "check", "rules", "r.yml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
