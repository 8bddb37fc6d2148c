"""The fold's GC thresholds (processor.consumer GC_THRESHOLDS) hold only while a batch is folded."""

from __future__ import annotations

import gc

import pytest

from processor.consumer import GC_THRESHOLDS, _gc_relaxed


def test_thresholds_apply_inside_and_are_restored_after_even_on_error() -> None:
    before = gc.get_threshold()
    assert before != GC_THRESHOLDS  # the interpreter's own (700, 10, 10 unless someone changed them)
    with _gc_relaxed():
        assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_threshold() == before
    with pytest.raises(RuntimeError), _gc_relaxed():
        raise RuntimeError("a fold that fails")
    assert gc.get_threshold() == before
