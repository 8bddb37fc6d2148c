"""What the record batches' compression costs the consumer: kafka-python's loops per codec.

    python -m bench.codec                  # 20,000 dense-fleet snapshots, gzip, lz4 and zstd
    python -m bench.codec --snapshots 60000 --repeats 3

The same snapshots are published with the collector's own publisher into one fresh topic
per codec (4 partitions); then the reference loops of ``bench.ceiling`` read each topic in
a child process: records only (batches decompressed and CRC-checked, values not decoded)
and with the processor's decoder. Reported per codec: instance-samples/s (median of the
repeats) and the topic's bytes on the broker per snapshot. gzip is built into Python; zstd
(``zstandard``, the collector's codec and a dependency) and lz4 (``lz4``, not a dependency:
a codec whose package is missing is reported as skipped) are packages.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/codec.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka import KafkaAdminClient  # noqa: E402
from kafka.codec import has_lz4, has_zstd  # noqa: E402

from bench.ceiling import consume_only  # noqa: E402
from bench.common import DENSE_MODEL, DenseFleet, end_offsets, fresh_topic, load_average, preload  # noqa: E402
from migmeter import settings  # noqa: E402

__all__ = ["CODECS", "measure", "main"]

CODECS = ("gzip", "lz4", "zstd")


def _topic_bytes(bootstrap: str, topic: str) -> int:
    """Bytes of the topic's log segments on the broker (all partitions)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="migmeter-bench-codec")
    try:
        dirs = admin.describe_log_dirs()
    finally:
        admin.close()
    total = 0
    for broker in dirs:  # kafka-python 3: [{"broker", "log_dirs": [{"topics": [{"name", "partitions"}]}]}]
        for log_dir in broker["log_dirs"]:
            for t in log_dir["topics"]:
                if t["name"] == topic:
                    total += sum(p["partition_size"] for p in t["partitions"])
    return total


def _available(codec: str) -> bool:
    return codec == "gzip" or (has_lz4() if codec == "lz4" else has_zstd())


def measure(snapshots: int, repeats: int, gpus: int = 1000) -> dict[str, Any]:
    """Per codec: records-only and decode rates (instance-samples/s) and bytes per snapshot."""
    bootstrap = settings.kafka_bootstrap()
    fleet = DenseFleet(seed=7, hosts=max(1, gpus // 8), gpus_per_host=8, models=(DENSE_MODEL,), cluster="bench")
    rounds = max(1, -(-snapshots // (max(1, gpus // 8) * 8)))
    snaps = [s for r in fleet.rounds(rounds) for s in r]
    per_snapshot = sum(len(s.instances) for s in snaps) / len(snaps)
    out: dict[str, Any] = {"snapshots": len(snaps), "instances_per_snapshot": per_snapshot}
    for codec in CODECS:
        if not _available(codec):
            out[codec] = None
            continue
        with fresh_topic(4) as topic:
            preload(topic, iter(snaps), compression=codec)
            ends = end_offsets(topic)
            row: dict[str, Any] = {"bytes_per_snapshot": _topic_bytes(bootstrap, topic) / len(snaps)}
            for mode in ("count", "from_json"):
                r = consume_only(bootstrap, topic, ends, repeats, mode)
                row[mode] = {"samples_per_s": r["records_per_s"] * per_snapshot,
                             "runs": [x * per_snapshot for x in r["runs"]], "load": r["load"]}
            out[codec] = row
    out["load"] = load_average()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.codec", description=__doc__.splitlines()[0])
    ap.add_argument("--snapshots", type=int, default=20_000, help="snapshots per topic (default 20000)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each loop; the median is reported (default 3)")
    args = ap.parse_args(argv)
    res = measure(args.snapshots, args.repeats)
    print(f"{res['snapshots']} snapshots, {res['instances_per_snapshot']:.1f} instance-samples each; "
          f"load {res['load'][0]}")
    print(f"{'codec':6s} {'bytes/snapshot':>15s} {'records only /s':>16s} {'+ from_json /s':>15s}")
    for codec in CODECS:
        r = res[codec]
        if r is None:
            print(f"{codec:6s} skipped: its package is not installed")
            continue
        print(f"{codec:6s} {r['bytes_per_snapshot']:15,.0f} {r['count']['samples_per_s']:16,.0f} "
              f"{r['from_json']['samples_per_s']:15,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
