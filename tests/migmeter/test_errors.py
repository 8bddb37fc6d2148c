"""One exception root: every exception class of the product derives from ``MigmeterError``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from migmeter.errors import BadSnapshot, MigmeterError

PACKAGES = ("migmeter", "collector", "processor", "warehouse")


def _product_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        root = importlib.import_module(package)
        names.append(package)
        names += [m.name for m in pkgutil.walk_packages(root.__path__, f"{package}.")]
    return names


def test_every_exception_class_joins_the_root() -> None:
    outside = []
    for name in _product_modules():
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, BaseException) and not issubclass(cls, MigmeterError):
                outside.append(f"{name}.{cls_name}")
    assert outside == []


def test_a_bad_snapshot_keeps_its_reason_for_the_dead_letter() -> None:
    with pytest.raises(MigmeterError) as exc:
        raise BadSnapshot("interval_s=0 outside (0, 3600]")
    assert exc.value.reason == str(exc.value) == "interval_s=0 outside (0, 3600]"  # type: ignore[attr-defined]
