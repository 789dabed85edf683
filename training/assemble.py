"""Assemble a run: weights learned out of fold, the test report, manifest, models.config, plots.

This is the whole of ``ensemble assemble``, run once after every member has finished. It needs
no TensorFlow: it reads each member's SavedModel answers (on the rows it never trained on, and on
the test split) and combines them with :mod:`contracts.combine`, so the reported numbers are the
ones the gateway will serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from contracts.combine import combine_outputs
from contracts.manifest import Combiner, Manifest, MemberRef, OutputSpec, Provenance, TensorSpec
from contracts.run_layout import OOF_PREFIX, OOF_ROWS, TEST_PREFIX, RunLayout, read_record, write_record
from contracts.run_records import DatasetSummary, MemberRecord, Report, ReportMember, ReportSplit
from training.config import TrainConfig, ensemble_name
from training.data import Dataset, prepare, safe_name
from training.errors import TrainingError
from training.labels import as_decisions
from training.layout import load_config
from training.member import output_kinds
from training.metrics import evaluate
from training.oof import OutOfFold
from training.plots import Entry
from training.report import ensemble_rows
from training.search import pruned_reasons
from training.selection import Decision, decide


@dataclass
class MemberResult:
    """A finished member: its record, the rows it never trained on and its answers there and on test."""

    record: MemberRecord
    oof_rows: np.ndarray
    oof: dict[str, np.ndarray]
    test: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return self.record.model_name


def load_members(layout: RunLayout, count: int, *, skip_unfinished: bool = False) -> list[MemberResult]:
    """Every member's results; a missing or outdated one is an error naming the member, unless
    ``skip_unfinished`` (a search goes on without its failed trials) leaves it out."""
    results = []
    for index in range(count):
        member_file = layout.member(index).record
        predictions = layout.member(index).predictions
        if skip_unfinished and not member_file.is_file():
            continue
        if not member_file.is_file() or not predictions.is_file():
            raise TrainingError(f"member m{index} has not finished ({member_file} is missing)")
        record = read_record(member_file, MemberRecord, error=TrainingError)
        with np.load(predictions) as npz:
            if OOF_ROWS not in npz.files:
                raise TrainingError(
                    f"member m{index} was trained by an older version (no out-of-fold rows in "
                    f"{predictions}): train it again"
                )
            rows = np.asarray(npz[OOF_ROWS], dtype=np.int64)
            oof = {k.removeprefix(OOF_PREFIX): npz[k] for k in npz.files if k.startswith(OOF_PREFIX)}
            test = {k.removeprefix(TEST_PREFIX): npz[k] for k in npz.files if k.startswith(TEST_PREFIX)}
        results.append(MemberResult(record, rows, oof, test))
    return results


def out_of_fold(members: list[MemberResult], dataset: Dataset) -> OutOfFold:
    """The members' answers on the rows each never trained on, aligned row by row."""
    kinds = {dataset.output_name(t): t.kind for t in dataset.targets}
    return OutOfFold.build([m.oof_rows for m in members], [m.oof for m in members], dataset.labels, kinds)


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
                kind=target.kind,
                target=target.name,
                classes=target.classes if target.task != "regression" else None,
            )
        )
    return specs


def write_models_config(layout: RunLayout, refs: list[MemberRef]) -> None:
    """``<out>/models/models.config`` for TF Serving: the manifest's members, each at its version."""
    from contracts.model_config import ModelEntry, write_model_config

    entries = [
        ModelEntry(name=ref.name, base_path=str(layout.model_dir(ref.name).resolve()), versions=[ref.version])
        for ref in refs
    ]
    write_model_config(layout.models_config, entries)


@dataclass
class AssemblyPlan:
    """Everything ``assemble`` writes, decided before anything is written."""

    members: list[MemberResult]
    dataset: Dataset
    test_truth: dict[str, np.ndarray]
    decision: Decision
    manifest: Manifest
    report: Report


def assemble(out_dir: Path) -> Report:
    """Weights, evaluation, manifest, report and plots for the run in ``out_dir``; returns the report."""
    layout = RunLayout(out_dir)
    plan = plan_assembly(layout)
    plan.manifest.save(layout.manifest)
    write_models_config(layout, plan.manifest.members)
    write_record(layout.report, plan.report)
    _plots(layout, plan.members, plan.decision, plan.dataset, plan.test_truth, plan.report)
    return plan.report


def plan_assembly(layout: RunLayout) -> AssemblyPlan:
    """Read the members' answers, decide the weights and evaluate: the manifest and report to write."""
    config = load_config(layout)
    dataset = prepare(config.data, config.seed)
    if layout.dataset.is_file():
        recorded = read_record(layout.dataset, DatasetSummary, error=TrainingError)
        if recorded.test_fingerprint != dataset.test_fingerprint:
            raise TrainingError("the data changed since the members were trained (test fingerprint differs)")
    members = load_members(layout, config.candidate_count, skip_unfinished=bool(config.search.trials))
    if not members:
        raise TrainingError("no trial of the search finished: nothing to assemble")
    test_truth = dataset.labels(dataset.test_rows)
    decision = decide(config, out_of_fold(members, dataset), pruned_reasons([m.record for m in members]))
    served, uniform, learned = _ensemble_metrics(members, dataset, test_truth, decision)
    manifest = _manifest(config, dataset, members, decision, served)
    report = Report(
        ensemble=manifest.name,
        weights_method=config.assemble.weights,
        searched=bool(config.search.trials),
        split=ReportSplit(method=config.data.split.method, folds=_folds(config)),
        weights=decision.summary(),
        members=[_member_entry(i, m, decision) for i, m in enumerate(members)],
        ensemble_served=served,
        ensemble_uniform=uniform,
        outputs=output_kinds(dataset),
        labels={t.name: t.classes for t in dataset.targets if t.task == "multilabel"},
        models_config=str(layout.models_config),
    )
    if learned is not None:  # set only when there is one: report.json has no "ensemble_learned" otherwise
        report.ensemble_learned = learned
    return AssemblyPlan(members, dataset, test_truth, decision, manifest, report)


def _ensemble_metrics(
    members: list[MemberResult], dataset: Dataset, test_truth: dict[str, np.ndarray], decision: Decision
) -> tuple[dict[str, float], dict[str, float], dict[str, float] | None]:
    """Test metrics of the served ensemble, and of the uniform and learned (None: not learned) ones
    it was chosen from."""

    def test_metrics(w: np.ndarray) -> dict[str, float]:
        used = [i for i in range(len(members)) if w[i] > 0]
        combined = combine_outputs([members[i].test for i in used], w[used])
        return evaluate(combined, test_truth, output_kinds(dataset), "test", dataset.label_names())

    served_test = test_metrics(decision.weights)
    uniform = served_test if decision.served == "uniform" else test_metrics(decision.uniform)
    learned = None
    if decision.learned is not None:
        learned = served_test if decision.served == "learned" else test_metrics(decision.learned)
    return served_test, uniform, learned


def _manifest(
    config: TrainConfig,
    dataset: Dataset,
    members: list[MemberResult],
    decision: Decision,
    served_test: dict[str, float],
) -> Manifest:
    """The served ensemble: its members with non-zero weight, its tensors, metrics and provenance."""
    refs = [
        MemberRef(name=m.name, version=m.record.version, weight=float(decision.weights[i]))
        for i, m in enumerate(members)
        if decision.weights[i] > 0
    ]
    return Manifest(
        name=ensemble_name(config),
        members=refs,
        combiner=Combiner(
            method="mean" if decision.served == "uniform" else "weighted_mean",
            min_members=config.assemble.min_members,
        ),
        inputs=[
            TensorSpec(name=g.name, dtype="float32" if g.kind == "numeric" else "string", shape=g.shape)
            for g in dataset.inputs
        ],
        outputs=_output_specs(dataset, members[0].test),
        metrics=served_test,
        provenance=Provenance(
            dataset=config.data.source,
            dataset_fingerprint=dataset.fingerprint,
            test_fingerprint=dataset.test_fingerprint,
            targets=[t.name for t in dataset.targets],
            seed=config.seed,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ),
    )


def _folds(config: TrainConfig) -> int | None:
    return config.fold_count if config.data.split.method == "cross_fit" else None


def _member_entry(index: int, member: MemberResult, decision: Decision) -> ReportMember:
    """The member at ``index`` of the assembled members (every finished one, in index order)."""
    record = member.record
    return ReportMember(
        index=record.index,
        name=member.name,
        version=record.version,
        fold=record.fold,
        weight=float(decision.weights[index]),
        kept=index not in decision.dropped,
        dropped_reason=decision.dropped.get(index),
        hyperparameters=record.hyperparameters,
        epochs_trained=record.epochs_trained,
        metrics=dict(record.metrics),
    )


def _plots(
    layout: RunLayout,
    members: list[MemberResult],
    decision: Decision,
    dataset: Dataset,
    test_truth: dict[str, np.ndarray],
    report: Report,
) -> None:
    """Learning curves, and per target a calibration (or predicted-vs-actual) and a comparison plot."""
    from training import plots

    layout.plots.mkdir(parents=True, exist_ok=True)
    plots.learning_curves(
        {m.name: layout.member(m.record.index).history for m in members},
        layout.plots / "learning_curves.png",
        dropped={members[i].name for i in decision.dropped},
        validated_on="its own fold" if report.split.method == "cross_fit" else "validation split",
    )
    used = [i for i in range(len(members)) if decision.weights[i] > 0]
    combined = combine_outputs([members[i].test for i in used], decision.weights[used])
    several = len(dataset.targets) > 1
    for target in dataset.targets:
        output = dataset.output_name(target)
        suffix = f"_{safe_name(target.name)}" if several else ""
        metric = target_metric(report, target.name)
        about = f" of {target.name}" if several else ""
        if target.task != "regression":
            best = min(range(len(members)), key=lambda i: members[i].record.metrics[metric])
            truth = test_truth[output]
            plots.reliability_diagram(
                {
                    f"ensemble ({_served_label(decision)})": as_decisions(
                        target.task, combined[output], truth
                    ),
                    f"best member ({members[best].name})": as_decisions(
                        target.task, members[best].test[output], truth
                    ),
                },
                layout.plots / f"reliability{suffix}.png",
                title=f"Reliability{about} ({'every label, ' * (target.task == 'multilabel')}test split)",
            )
        else:
            plots.predicted_vs_actual(
                combined[output],
                test_truth[output],
                layout.plots / f"predicted_vs_actual{suffix}.png",
                title=f"Predicted vs actual{about} (test split)",
            )
        plots.member_vs_ensemble(
            _comparison(report, metric), metric, layout.plots / f"members_vs_ensemble{suffix}.png"
        )


def _served_label(decision: Decision) -> str:
    return {"learned": "learned weights", "uniform": "uniform", "given": "given weights"}[decision.served]


def _comparison(report: Report, metric: str) -> list[Entry]:
    """(label, value, role) per member and per ensemble, for the members-vs-ensemble plot."""
    rows: list[Entry] = []
    for member in report.members:
        role = "member" if member.kept else "dropped"
        rows.append((member.name, member.metrics[metric], role))
    for metrics, label, served in ensemble_rows(report):
        rows.append((label, metrics[metric], "served" if served else "ensemble"))
    return rows


def target_metric(report: Report, target: str) -> str:
    """A target's headline test metric key: NLL for a classifier, RMSE for a regressor."""
    several = len(report.outputs) > 1
    for _output, name, kind in report.outputs:
        if name == target:
            metric = "rmse" if kind == "predictions" else "nll"
            return f"test_{name}_{metric}" if several else f"test_{metric}"
    raise KeyError(target)


def primary_metric(report: Report) -> str:
    """The first target's headline test metric."""
    return target_metric(report, report.outputs[0][1])
