"""Assemble a run: weights from validation predictions, the test report, manifest, models.config, plots.

This is the whole of ``ensemble assemble``, run once after every member has finished. It needs
no TensorFlow: it reads each member's SavedModel predictions and combines them with
:mod:`serving.combine`, so the reported numbers are the ones the gateway will serve.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from registry.manifest import Combiner, Manifest, MemberRef, OutputSpec, Provenance, TensorSpec
from serving.combine import combine_outputs, method_weights
from training import search, weights
from training.config import TrainConfig, ensemble_name
from training.data import Dataset, prepare
from training.errors import TrainingError
from training.layout import Layout
from training.metrics import evaluate


@dataclass
class MemberResult:
    """A finished member: its record and its SavedModel's validation and test answers."""

    record: dict[str, Any]
    val: dict[str, np.ndarray]
    test: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return str(self.record["model_name"])


def load_members(layout: Layout, count: int) -> list[MemberResult]:
    """Every member's results; a missing one is an error naming the member."""
    results = []
    for index in range(count):
        member_file = layout.member_file(index)
        predictions = layout.member_dir(index) / "predictions.npz"
        if not member_file.is_file() or not predictions.is_file():
            raise TrainingError(f"member m{index} has not finished ({member_file} is missing)")
        record = json.loads(member_file.read_text())
        with np.load(predictions) as npz:
            val = {k.removeprefix("val/"): npz[k] for k in npz.files if k.startswith("val/")}
            test = {k.removeprefix("test/"): npz[k] for k in npz.files if k.startswith("test/")}
        results.append(MemberResult(record, val, test))
    return results


def choose_weights(
    config: TrainConfig, members: list[MemberResult], truth: dict[str, np.ndarray], kinds: dict[str, str]
) -> tuple[np.ndarray, list[int]]:
    """Weights over all members (zeros for members left out) and the eligible members' indices."""
    eligible = list(range(len(members)))
    if config.search.trials:
        losses = [
            float(m.record.get("best_val_loss") or weights.validation_loss([m.val], [1.0], truth, kinds))
            for m in members
        ]
        eligible = search.top_candidates(config, losses)
    outputs = [members[i].val for i in eligible]
    method = config.assemble.weights
    if method == "given":
        assert config.assemble.given is not None
        chosen = weights.given([config.assemble.given[i] for i in eligible])
    elif method in ("optimized", "greedy"):
        learned = (
            weights.optimized(outputs, truth, kinds)
            if method == "optimized"
            else weights.greedy(outputs, truth, kinds, config.assemble.greedy_rounds)
        )
        chosen = weights.shrink(learned, config.assemble.shrinkage)
    else:
        chosen = weights.uniform(len(eligible))
    full = np.zeros(len(members))
    full[eligible] = chosen
    return full, eligible


def _output_specs(dataset: Dataset, sample: dict[str, np.ndarray]) -> list[OutputSpec]:
    specs = []
    for target in dataset.targets:
        name = dataset.output_name(target)
        width = int(np.asarray(sample[name]).shape[1])
        specs.append(
            OutputSpec(
                name=name,
                dtype="float32",
                shape=[-1, width],
                kind="probabilities" if target.task == "classification" else "predictions",
                target=target.name,
                classes=target.classes if target.task == "classification" else None,
            )
        )
    return specs


def write_models_config(layout: Layout, refs: list[MemberRef]) -> None:
    """``<out>/models/models.config`` for TF Serving: the manifest's members, each at its version."""
    from serving.model_config import ModelEntry, write_model_config

    entries = [
        ModelEntry(name=ref.name, base_path=str(layout.model_dir(ref.name).resolve()), versions=[ref.version])
        for ref in refs
    ]
    write_model_config(layout.models_config, entries)


def assemble(out_dir: Path) -> dict[str, Any]:
    """Weights, evaluation, manifest, report and plots for the run in ``out_dir``; returns the report."""
    layout = Layout(out_dir)
    if not layout.config.is_file():
        raise TrainingError(f"{layout.config} not found: is {out_dir} a training output directory?")
    config = TrainConfig.model_validate(layout.read_config())
    name = ensemble_name(config)
    dataset = prepare(config.data, config.seed)
    if layout.dataset.is_file():
        recorded = json.loads(layout.dataset.read_text())
        if recorded.get("test_fingerprint") != dataset.test_fingerprint:
            raise TrainingError("the data changed since the members were trained (test fingerprint differs)")
    members = load_members(layout, config.candidate_count)

    kinds = {dataset.output_name(t): t.output_name for t in dataset.targets}
    kind_list = [(dataset.output_name(t), t.name, t.output_name) for t in dataset.targets]
    val_truth = dataset.labels(dataset.val_rows)
    test_truth = dataset.labels(dataset.test_rows)

    full_weights, eligible = choose_weights(config, members, val_truth, kinds)
    uniform_weights = np.zeros(len(members))
    uniform_weights[eligible] = method_weights("mean", [1.0] * len(eligible))

    def ensemble_metrics(w: np.ndarray, split: str) -> dict[str, float]:
        used = [i for i in range(len(members)) if w[i] > 0]
        parts = [members[i].val if split == "val" else members[i].test for i in used]
        combined = combine_outputs(parts, w[used])
        return evaluate(combined, val_truth if split == "val" else test_truth, kind_list, split)

    weighted_test = ensemble_metrics(full_weights, "test")
    uniform_test = ensemble_metrics(uniform_weights, "test")
    weighted_val = ensemble_metrics(full_weights, "val")

    refs = [
        MemberRef(name=m.name, version=int(m.record["version"]), weight=float(full_weights[i]))
        for i, m in enumerate(members)
        if full_weights[i] > 0
    ]
    total = sum(r.weight for r in refs)
    refs = [r.model_copy(update={"weight": r.weight / total}) for r in refs]
    manifest = Manifest(
        name=name,
        members=refs,
        combiner=Combiner(
            method="mean" if config.assemble.weights == "uniform" else "weighted_mean",
            min_members=min(config.assemble.min_members, len(refs)),
        ),
        inputs=[
            TensorSpec(name=g.name, dtype="float32" if g.kind == "numeric" else "string", shape=g.shape)
            for g in dataset.inputs
        ],
        outputs=_output_specs(dataset, members[0].test),
        metrics=weighted_test,
        provenance=Provenance(
            dataset=config.data.source,
            dataset_fingerprint=dataset.fingerprint,
            test_fingerprint=dataset.test_fingerprint,
            targets=[t.name for t in dataset.targets],
            seed=config.seed,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ),
    )
    manifest.save(layout.manifest)
    write_models_config(layout, refs)

    report: dict[str, Any] = {
        "ensemble": name,
        "weights_method": config.assemble.weights,
        "searched": bool(config.search.trials),
        "members": [
            {
                "name": m.name,
                "version": int(m.record["version"]),
                "weight": float(full_weights[i]),
                "selected": i in eligible,
                "hyperparameters": m.record.get("hyperparameters", {}),
                "epochs_trained": m.record.get("epochs_trained"),
                "metrics": {k: v for k, v in m.record["metrics"].items()},
            }
            for i, m in enumerate(members)
        ],
        "ensemble_uniform": uniform_test,
        "ensemble_weighted": {**weighted_test, **weighted_val},
        "outputs": kind_list,
        "models_config": str(layout.models_config),
    }
    layout.write_json(layout.report, report)
    _plots(layout, members, full_weights, dataset, test_truth, report)
    return report


def _plots(
    layout: Layout,
    members: list[MemberResult],
    full_weights: np.ndarray,
    dataset: Dataset,
    test_truth: dict[str, np.ndarray],
    report: dict[str, Any],
) -> None:
    from training import plots

    layout.plots.mkdir(parents=True, exist_ok=True)
    plots.learning_curves(
        {m.name: layout.member_dir(int(m.record["index"])) / "history.csv" for m in members},
        layout.plots / "learning_curves.png",
    )
    used = [i for i in range(len(members)) if full_weights[i] > 0]
    combined = combine_outputs([members[i].test for i in used], full_weights[used])
    first = dataset.targets[0]
    output = dataset.output_name(first)
    if first.task == "classification":
        labels = test_truth[output].reshape(-1)
        best = min(range(len(members)), key=lambda i: _primary(members[i].record["metrics"], report))
        plots.reliability_diagram(
            {
                "ensemble (weighted)": (combined[output], labels),
                f"best member ({members[best].name})": (members[best].test[output], labels),
            },
            layout.plots / "reliability.png",
        )
    else:
        plots.predicted_vs_actual(
            combined[output], test_truth[output], layout.plots / "predicted_vs_actual.png"
        )
    metric = primary_metric(report)
    names = [m.name for m in members] + ["ensemble (uniform)", "ensemble (weighted)"]
    values = [m.record["metrics"][metric] for m in members]
    values += [report["ensemble_uniform"][metric], report["ensemble_weighted"][metric]]
    plots.member_vs_ensemble(names, values, metric, layout.plots / "members_vs_ensemble.png")


def primary_metric(report: dict[str, Any]) -> str:
    """The first target's headline metric: test NLL for a classifier, test RMSE for a regressor."""
    _output, target, kind = report["outputs"][0]
    metric = "nll" if kind == "probabilities" else "rmse"
    return f"test_{metric}" if len(report["outputs"]) == 1 else f"test_{target}_{metric}"


def _primary(metrics: dict[str, float], report: dict[str, Any]) -> float:
    return float(metrics[primary_metric(report)])
