"""Decoder micro-benchmark: CPU µs per instance-sample of ``from_json``, optionally vs a revision's.

    python -m bench.decode                 # this tree's decoder
    python -m bench.decode --rev 0ff866f   # and that revision's, interleaved in one process

Dense-fleet snapshots (7 × 1g H100s, the throughput benchmark's data) are serialized once;
each pass decodes all of them; passes alternate between the decoders and the minimum CPU
time (``time.process_time``) of each is reported, which is the least disturbed by other
work on a shared machine. The JSON parse alone (``json.loads`` and ``msgspec.json.decode`` to dicts) is
timed the same way for reference. No Kafka, no database.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/decode.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402

from bench.common import DENSE_MODEL, DenseFleet, load_average  # noqa: E402
from collector import snapshot  # noqa: E402

__all__ = ["payloads", "decode_us", "main"]

ROOT = Path(__file__).resolve().parents[1]


def payloads(rounds: int, gpus: int = 1000) -> list[bytes]:
    fleet = DenseFleet(seed=7, hosts=max(1, gpus // 8), gpus_per_host=8, models=(DENSE_MODEL,), cluster="bench")
    return [s.to_json() for r in fleet.rounds(rounds) for s in r]


def _old_decoder(rev: str, tmp: Path) -> Callable[[bytes], Any]:
    """``collector/snapshot.py`` of ``rev`` as a module of its own (the checkout is not touched)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:collector/snapshot.py"], capture_output=True,
                            check=True).stdout
    path = tmp / "snapshot_at_rev.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("snapshot_at_rev", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module.from_json  # type: ignore[no-any-return]


def decode_us(decoders: dict[str, Callable[[bytes], Any]], data: list[bytes], passes: int) -> dict[str, float]:
    """Min CPU µs per instance-sample of each decoder over ``passes`` interleaved passes."""
    samples = sum(len(snapshot.from_json(p).instances) for p in data)
    best = dict.fromkeys(decoders, float("inf"))
    for _ in range(passes):
        for name, fn in decoders.items():
            t0 = time.process_time()
            for p in data:
                fn(p)
            best[name] = min(best[name], time.process_time() - t0)
    return {name: t / samples * 1e6 for name, t in best.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", help="also time this git revision's decoder")
    parser.add_argument("--rounds", type=int, default=4, help="fleet rounds of 1,000 GPUs (default 4)")
    parser.add_argument("--passes", type=int, default=5, help="passes per decoder (default 5)")
    args = parser.parse_args(argv)
    data = payloads(args.rounds)
    decoders: dict[str, Callable[[bytes], Any]] = {
        "json.loads": json.loads, "msgspec.json.decode": msgspec.json.decode, "from_json (this tree)": snapshot.from_json}
    with tempfile.TemporaryDirectory(prefix="migmeter-decode-") as tmp:
        if args.rev:
            old = _old_decoder(args.rev, Path(tmp))
            if old(data[0]).to_dict() != snapshot.from_json(data[0]).to_dict():
                print("the two decoders disagree on the first snapshot", file=sys.stderr)
                return 1
            decoders[f"from_json ({args.rev})"] = old
        result = decode_us(decoders, data, args.passes)
    for name, us in result.items():
        print(f"{name:28s} {us:6.2f} µs per instance-sample")
    print(f"{len(data)} snapshots, min of {args.passes} passes, load average {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
