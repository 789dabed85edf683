"""A fake training output directory, shaped like the one ``ensemble train`` writes, without TensorFlow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contracts.manifest import Manifest


def write_training_output(
    out: Path,
    name: str = "digits",
    *,
    members: int = 2,
    test_nll: float = 0.2,
    test_fingerprint: str = "t" * 64,
    epochs: int = 3,
    payload: str = "",
    dropped: int = 0,
    weights: list[float] | None = None,
    spec: dict[str, Any] | None = None,
) -> Manifest:
    """Write ``out`` with ``members`` fake SavedModels; ``payload`` tells the models' bytes apart.

    ``dropped`` more members are trained but left out of the manifest (a search's trials not kept).
    ``spec`` replaces manifest fields (``inputs``, ``outputs``, ``combiner``) for members that are
    really served: the fake gateway backend's, or real SavedModels copied over the fake ones.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(f"name: {name}\nmembers: {members}\ntraining:\n  epochs: {epochs}\n")
    dataset = {
        "source": "sklearn:digits",
        "fingerprint": "f" * 64,
        "test_fingerprint": test_fingerprint,
        "targets": ["digit"],
        "tasks": {"digit": "classification"},
        "rows": 1797,
        "inputs": ["pixels"],
    }
    (out / "dataset.json").write_text(json.dumps(dataset))
    refs = []
    report_members = []
    for index in range(members + dropped):
        model_name = f"{name}-m{index}"
        folder = out / "members" / f"m{index}"
        (folder / "tensorboard" / "train").mkdir(parents=True, exist_ok=True)
        (folder / "tensorboard" / "train" / "events.out.tfevents.0").write_bytes(b"events")
        info = {
            "index": index,
            "model_name": model_name,
            "version": 1,
            "seed": 100 + index,
            "hyperparameters": {"units": 32 * (index + 1), "dropout": 0.1, "optimizer": {"lr": 0.001}},
            "metrics": {"val_nll": test_nll + 0.01 * index, "test_nll": test_nll + 0.02 * index},
            "epochs_trained": epochs,
            "train_seconds": 1.5,
        }
        (folder / "member.json").write_text(json.dumps(info))
        rows = ["epoch,loss,val_loss,lr"]
        rows += [f"{e},{1.0 / (e + 1):.4f},{1.1 / (e + 1):.4f},0.001" for e in range(epochs)]
        (folder / "history.csv").write_text("\n".join(rows) + "\n")
        (folder / "checkpoint.keras").write_bytes(b"keras")
        saved = out / "models" / model_name / "1"
        (saved / "variables").mkdir(parents=True, exist_ok=True)
        (saved / "saved_model.pb").write_bytes(f"{model_name}:{payload}".encode())
        (saved / "variables" / "variables.index").write_bytes(b"index")
        kept = index < members
        if kept:
            refs.append(
                {"name": model_name, "version": 1, "weight": weights[index] if weights else 1.0 / members}
            )
        report_members.append(
            {"name": model_name, "kept": kept, "dropped_reason": None if kept else "not kept by the search"}
        )
    manifest = Manifest.model_validate(
        {
            "name": name,
            "members": refs,
            "inputs": [{"name": "pixels", "dtype": "float32", "shape": [-1, 64]}],
            "outputs": [
                {
                    "name": "probabilities",
                    "dtype": "float32",
                    "shape": [-1, 10],
                    "kind": "probabilities",
                    "target": "digit",
                    "classes": [str(c) for c in range(10)],
                }
            ],
            "metrics": {"test_nll": test_nll, "test_accuracy": 1.0 - test_nll / 2},
            "provenance": {
                "dataset": "sklearn:digits",
                "dataset_fingerprint": "f" * 64,
                "test_fingerprint": test_fingerprint,
                "targets": ["digit"],
            },
            **(spec or {}),
        }
    )
    manifest.save(out / "ensemble.json")
    report = {
        "ensemble": {"test_nll": test_nll},
        "members": report_members,
        "weights": {"served": "uniform", "note": "uniform: assemble.weights is uniform"},
    }
    (out / "report.json").write_text(json.dumps(report))
    (out / "plots").mkdir(exist_ok=True)
    (out / "plots" / "calibration.png").write_bytes(b"\x89PNG")
    return manifest
