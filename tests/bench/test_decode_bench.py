"""bench.decode: the decoder micro-benchmark times what it says and loads an old revision's decoder."""

from __future__ import annotations

import math

import pytest

from bench import decode


def test_decode_us_is_per_instance_sample_and_positive() -> None:
    data = decode.payloads(rounds=1, gpus=8)  # 8 dense GPUs x 1 round = 8 snapshots = 56 instance-samples
    assert len(data) == 8
    result = decode.decode_us({"a": decode.snapshot.from_json, "b": decode.json.loads}, data, passes=2)
    assert set(result) == {"a", "b"}
    assert all(0 < us < math.inf for us in result.values())


def test_main_compares_with_a_revision(capsys: pytest.CaptureFixture[str]) -> None:
    assert decode.main(["--rev", "HEAD", "--rounds", "1", "--passes", "1"]) == 0
    out = capsys.readouterr().out
    assert "from_json (this tree)" in out and "from_json (HEAD)" in out
