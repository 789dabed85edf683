"""The ensemble manifest contract: validation and round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts.manifest import Manifest


def _manifest(**overrides: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "name": "digits",
        "members": [
            {"name": "digits-m0", "version": 1, "weight": 0.25},
            {"name": "digits-m1", "version": 3, "weight": 0.75},
        ],
        "combiner": {"method": "weighted_mean", "min_members": 1, "min_weight": 0.5},
        "inputs": [{"name": "pixels", "dtype": "float32", "shape": [-1, 64]}],
        "outputs": [
            {
                "name": "probabilities",
                "dtype": "float32",
                "shape": [-1, 10],
                "kind": "probabilities",
                "target": "digit",
                "classes": [str(i) for i in range(10)],
            }
        ],
        "metrics": {"test_nll": 0.1, "test_accuracy": 0.97},
    }
    doc.update(overrides)
    return doc


def _members(*pairs: tuple[str, float]) -> list[dict[str, object]]:
    return [{"name": name, "version": 1, "weight": weight} for name, weight in pairs]


def test_round_trip_through_file(tmp_path: Path) -> None:
    manifest = Manifest.model_validate(_manifest())
    path = tmp_path / "ensemble.json"
    manifest.save(path)
    loaded = Manifest.load(path)
    assert loaded == manifest
    assert loaded.weights == [0.25, 0.75]
    assert loaded.output("probabilities").classes is not None
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"members": []}, "at least 1"),
        (
            {"members": _members(("a", 0.5), ("b", 0.2))},
            "sum to 1",
        ),
        (
            {"members": _members(("a", 0.5), ("a", 0.5))},
            "unique",
        ),
        ({"inputs": [{"name": "x", "dtype": "float32", "shape": [64]}]}, "batch dimension"),
        ({"combiner": {"min_members": 3}}, "min_members"),
        ({"name": "bad name"}, "pattern"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_invalid_manifests_are_rejected(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Manifest.model_validate(_manifest(**overrides))
