"""The typed records of a run folder: ``member.json``, ``dataset.json`` and ``report.json``.

Training builds and writes them (:func:`contracts.run_layout.write_record`); assembly, the
registry, the command line and the benchmarks read them back
(:func:`contracts.run_layout.read_record`) and use their attributes. Their keys are the files'
keys, so a folder written before they were typed reads the same. A field that a writer leaves out
(``trial`` without a search, ``ensemble_learned`` without a learned weighting) stays out of the
file.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Served = Literal["learned", "uniform", "given"]
"""How the served weights were chosen."""


class _Record(BaseModel):
    # A key no writer produces is a mistake in the file, not something to carry along silently.
    model_config = ConfigDict(extra="forbid")


# member.json


class TrialRecord(_Record):
    """A search trial's number in the study and the epoch the pruner stopped it at (None: it finished)."""

    number: int
    pruned_at_epoch: int | None = None


class RowCounts(_Record):
    """How many rows the member fit, early-stopped on, and never trained on."""

    fit: int
    early_stopping: int
    out_of_fold: int


class MemberRecord(_Record):
    """``members/m<i>/member.json``: one trained member, its export, and its metrics."""

    index: int
    model_name: str
    version: int
    seed: int
    hyperparameters: dict[str, Any]
    """The member's resolved config (model and fit), as the run's config spells it."""
    bootstrap: bool
    fold: int | None
    """Its own fold when cross-fitted; None with a holdout split."""
    rows: RowCounts
    metrics: dict[str, float]
    """``val_*``, ``oof_*`` and ``test_*`` metrics of the exported model."""
    best_val_loss: float | None
    """None when every epoch's val_loss was NaN."""
    epochs_trained: int
    train_seconds: float
    export_path: str
    export_max_abs_diff: float
    """The largest difference between the model's answers and its exported SavedModel's."""
    trial: TrialRecord | None = None
    """Only with a search."""


# dataset.json


class DatasetRows(_Record):
    total: int
    train: int
    validation: int
    test: int
    dropped_missing_target: int


class InputSummary(_Record):
    """One model input: its name, served dtype and shape, kind, and the columns it reads."""

    name: str
    dtype: str
    shape: list[int]
    kind: Literal["numeric", "categorical"]
    columns: list[str]


class SplitSummary(_Record):
    method: str
    """``data.split.method``: cross_fit or holdout."""
    fold_rows: list[int]
    """Rows per fold; empty with a holdout split."""


class DatasetSummary(_Record):
    """``dataset.json``: the data every worker trained on, with the fingerprints that pin it."""

    source: str
    fingerprint: str
    test_fingerprint: str
    targets: list[str]
    tasks: dict[str, str]
    """Target -> classification, regression or multilabel."""
    classes: dict[str, list[str]]
    labels: dict[str, list[str]]
    outputs: dict[str, str]
    """Target -> the model output that answers it."""
    rows: DatasetRows
    inputs: list[InputSummary]
    split: SplitSummary


# report.json


class ReportSplit(_Record):
    method: str
    folds: int | None


class WeightsSummary(_Record):
    """How the served weights were chosen, and the out-of-fold comparison behind the choice."""

    served: Served
    note: str
    """One line: how the weights were chosen, or why the ensemble is uniform."""
    shrinkage: float | None
    out_of_fold_rows: int
    informative_rows: int
    oof_loss_uniform: float | None
    oof_loss_learned: float | None
    learned: list[float] | None
    """The learned weighting over every member, also when uniform was served."""


class ReportMember(_Record):
    """One trained member in the report: served or dropped (and why), with its test metrics."""

    index: int
    name: str
    version: int
    fold: int | None
    weight: float
    kept: bool
    dropped_reason: str | None
    hyperparameters: dict[str, Any]
    epochs_trained: int
    metrics: dict[str, float]


class Report(_Record):
    """``report.json``: every member against the ensemble on the test split, and the weights."""

    ensemble: str
    weights_method: str
    """``assemble.weights``: uniform, given, optimized or greedy."""
    searched: bool
    split: ReportSplit
    weights: WeightsSummary
    members: list[ReportMember]
    ensemble_served: dict[str, float]
    ensemble_uniform: dict[str, float]
    ensemble_learned: dict[str, float] | None = None
    """Only when a weighting was learned."""
    outputs: list[tuple[str, str, str]]
    """(output name, target name, output kind) per target, in order."""
    labels: dict[str, list[str]]
    """Per multi-label target, its labels in output order."""
    models_config: str

    def member(self, name: str) -> ReportMember | None:
        return next((m for m in self.members if m.name == name), None)
