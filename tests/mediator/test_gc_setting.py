"""The mediator sets Python's garbage collector thresholds from CR_GC_THRESHOLD when its app is created."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from mediator.app import create_app
from mediator.settings import Settings


@pytest.fixture
def _gc_restored() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_thresholds_are_read_and_applied(_gc_restored):
    assert Settings.from_env({}).gc_threshold == (50_000, 20, 100)
    settings = Settings.from_env({"CR_GC_THRESHOLD": "1234, 5, 6"})
    assert settings.gc_threshold == (1234, 5, 6)
    create_app(settings)
    assert gc.get_threshold() == (1234, 5, 6)


def test_empty_keeps_pythons_thresholds(_gc_restored):
    gc.set_threshold(700, 10, 10)
    create_app(Settings.from_env({"CR_GC_THRESHOLD": ""}))
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.parametrize("value", ["1,2,3,4", "-1", "many"])
def test_bad_values_are_refused(value):
    with pytest.raises(ValueError):
        Settings.from_env({"CR_GC_THRESHOLD": value})
