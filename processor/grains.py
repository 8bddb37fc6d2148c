"""What the processor writes, by grain: the one list every reader of the usage tables shares.

The processor folds at 1-minute grain (``processor.aggregate``); the sink writes those partials
and rolls 1h and 1d up from them in the database, one table per family and grain
(``processor.sink``); retention drops old chunks per grain (``warehouse.retention``). All three
take the grains and table names from here.
"""

from __future__ import annotations

__all__ = ["GRAINS", "FOLD_GRAIN", "USAGE_FAMILIES", "usage_table", "usage_tables"]

# Grain name -> bucket width in seconds. 1m is what the processor folds; 1h and 1d are rollups.
GRAINS: dict[str, int] = {"1m": 60, "1h": 3600, "1d": 86400}
FOLD_GRAIN = "1m"
# The usage hypertables of one grain are named <family>_<grain> (sql/0NN_*.sql).
USAGE_FAMILIES: tuple[str, ...] = ("instance_usage", "gpu_usage", "tenant_usage")


def usage_table(family: str, grain: str) -> str:
    """``instance_usage`` + ``1h`` -> ``instance_usage_1h``; only known names (a whitelist)."""
    if family not in USAGE_FAMILIES or grain not in GRAINS:
        raise ValueError(f"no usage table {family!r} at grain {grain!r}")
    return f"{family}_{grain}"


def usage_tables(grain: str) -> tuple[str, ...]:
    """The usage hypertables holding ``grain``."""
    return tuple(usage_table(f, grain) for f in USAGE_FAMILIES)
