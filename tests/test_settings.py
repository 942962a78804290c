"""Settings an operator writes by hand: read as documented, refused with the setting's name when wrong."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import Settings


def test_gc_thresholds_default_and_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().gc_thresholds == (700, 10, 100)
    monkeypatch.setenv("PARLEY_GC_THRESHOLDS", "700, 10, 10")
    assert Settings().gc_thresholds == (700, 10, 10)


@pytest.mark.parametrize("value", ["700,10", "700,-1,10", "700,10,ten", "1,2,3,4"])
def test_gc_thresholds_refused_when_not_three_counts(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PARLEY_GC_THRESHOLDS", value)
    with pytest.raises(ValidationError, match="gc_thresholds"):
        Settings()
