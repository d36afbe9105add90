"""cluster.runner.gc_tuning: what the node runner does to the collector."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from cluster.runner.gc_tuning import DEFAULT_YOUNG_THRESHOLD, tune


@pytest.fixture
def collector() -> Iterator[None]:
    """Put the test process's collector back as it was."""
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("collector")
def test_tune_freezes_what_is_alive_and_raises_the_young_threshold() -> None:
    gc.set_threshold(700, 10, 10)
    alive = [object() for _ in range(10)]  # noqa: F841  # alive at the freeze
    assert tune() == (DEFAULT_YOUNG_THRESHOLD, 10, 10)
    assert gc.get_freeze_count() > 0
    assert tune(1234) == (1234, 10, 10)


@pytest.mark.usefixtures("collector")
@pytest.mark.parametrize("threshold", [0, -5])
def test_a_threshold_below_one_is_refused_and_changes_nothing(threshold: int) -> None:
    before = gc.get_threshold()
    with pytest.raises(ValueError, match="at least 1"):
        tune(threshold)
    assert gc.get_threshold() == before
