"""``processor.sink``'s pure parts: which tables a batch writes, and how each merges in SQL.

The transaction itself runs against the real database in tests/integration/test_processor_sink.py.
"""

from __future__ import annotations

import pytest

from processor.aggregate import GpuSums, InstanceSums, TenantSums
from processor.grains import GRAINS, USAGE_FAMILIES
from processor.sink import USAGE_TABLES, TableSpec


def test_a_batch_writes_every_family_at_every_grain_once() -> None:
    written = [spec.name for _, spec, _ in USAGE_TABLES]
    # 3 families x 3 grains (1m, 1h, 1d) = 9 tables, none twice.
    assert sorted(written) == sorted(f"{f}_{g}" for f in USAGE_FAMILIES for g in GRAINS)
    assert len(written) == 9
    # Finer grains first: a 1m row is in the database before the 1h/1d rollups built from it.
    assert [g for g, _, _ in USAGE_TABLES][::3] == ["1m", "1h", "1d"]


def test_usage_columns_follow_the_sums_role_lists() -> None:
    by_attr = {attr: spec for _, spec, attr in USAGE_TABLES[:3]}
    for attr, sums in (("instances", InstanceSums), ("tenants", TenantSums), ("gpus", GpuSums)):
        spec = by_attr[attr]
        assert (spec.attrs, spec.sums, spec.mins, spec.maxs) == (sums.ATTRS, sums.SUMS, sums.MINS, sums.MAXS)
        assert spec.keys[0] == "bucket"


def test_upsert_adds_sums_keeps_extremes_and_takes_the_latest_attribute() -> None:
    spec = TableSpec("t_usage", ("bucket", "gpu_uuid"), attrs=("gpu_model",), sums=("seconds",),
                     mins=("util_min",), maxs=("util_max",))
    text = spec.upsert_sql().as_string(None)
    assert text == (
        'INSERT INTO "t_usage" AS t ("bucket", "gpu_uuid", "gpu_model", "seconds", "util_min", "util_max") '
        'SELECT "bucket", "gpu_uuid", "gpu_model", "seconds", "util_min", "util_max" FROM "_stage_t_usage" '
        'ON CONFLICT ("bucket", "gpu_uuid") DO UPDATE SET "gpu_model" = "excluded"."gpu_model", '
        '"seconds" = "t"."seconds" + "excluded"."seconds", '
        '"util_min" = LEAST("t"."util_min", "excluded"."util_min"), '
        '"util_max" = GREATEST("t"."util_max", "excluded"."util_max")'
    )


def test_a_table_name_is_an_identifier_never_sql_text() -> None:
    text = TableSpec('x"; DROP TABLE gpus; --', ("k",), sums=("n",)).upsert_sql().as_string(None)
    assert 'INSERT INTO "x""; DROP TABLE gpus; --" AS t' in text  # quoted, the quote doubled


def test_tenant_rows_are_staged_from_the_instance_rows_by_the_derivation_table() -> None:
    by_attr = {attr: spec for _, spec, attr in USAGE_TABLES[:3]}
    text = by_attr["tenants"].derive_sql(by_attr["instances"]).as_string(None)
    assert text == (
        'INSERT INTO "_stage_tenant_usage_1m" ("bucket", "gpu_uuid", "namespace", "pod", "cluster", "gpu_model", '
        '"seconds", "alloc_gpu_seconds", "util_alloc_gpu_seconds", "busy_gpu_seconds", "samples") '
        'SELECT "bucket", "gpu_uuid", "namespace", "pod", "cluster", "gpu_model", "seconds", "alloc_gpu_seconds", '
        '"util_seconds" * "slices" / "total_slices", "busy_gpu_seconds", "samples" FROM "_stage_instance_usage_1m"'
    )
    # A GPU row has no namespace or pod to derive a tenant row from.
    with pytest.raises(ValueError, match="cannot be derived"):
        by_attr["tenants"].derive_sql(by_attr["gpus"])
