"""The training configuration: one pydantic document, read from YAML and overridden by CLI flags.

Every mistake in a config (unknown key, wrong type, impossible split) is caught here, before any
data is read or any model is built, and reported as one line by :func:`format_validation_error`.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from training.assemble_config import AssembleConfig
from training.errors import ConfigError
from training.search_config import SearchConfig
from training.split_config import SplitConfig, default_folds
from training.strict import Strict

Task = Literal["classification", "regression", "multilabel"]
Architecture = Literal["mlp", "branches", "residual"]
Optimizer = Literal["adam", "rmsprop", "sgd"]
Schedule = Literal["none", "step", "exponential", "cosine", "plateau", "piecewise"]
Scaling = Literal["standard", "minmax", "none"]
BinaryHead = Literal["softmax2", "sigmoid"]
# What EarlyStopping, the best-only checkpoint and ReduceLROnPlateau may watch: a loss or an
# accuracy (or a multi-label output's AUC) Keras logs, on the fitted rows or (val_) the
# early-stopping rows, overall or per output.
MONITOR_PATTERN = r"^(val_)?([A-Za-z0-9_]+_)?(loss|accuracy|auc)$"


class DataConfig(Strict):
    """Where the rows come from and which columns are features and targets."""

    source: str = Field(
        default="sklearn:digits",
        description="CSV or Parquet path, or a bundled set: sklearn:digits, sklearn:breast_cancer, "
        "sklearn:diabetes, penguins.",
    )
    targets: list[str] = Field(default_factory=list, description="Target columns; empty = the set's default.")
    task: Task | dict[str, Task] | None = Field(
        default=None, description="One task for every target, or one per target; None = inferred."
    )
    features: list[str] | None = Field(default=None, description="Feature columns; None = all the others.")
    drop: list[str] = Field(default_factory=list, description="Columns never used as features.")
    categorical: list[str] = Field(
        default_factory=list, description="Columns treated as categories even when they hold numbers."
    )
    inputs: dict[str, list[str]] | None = Field(
        default=None,
        description="Numeric columns grouped into one named model input, e.g. {pixels: [...]}; "
        "None = the set's default grouping (one input per column for your own files).",
    )
    labels: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Multi-label targets: a name and its 0/1 columns, e.g. {tags: [urgent, billing]}; "
        "each is one head with one sigmoid per column (see training.labels).",
    )
    split: SplitConfig = Field(default_factory=SplitConfig)

    @model_validator(mode="after")
    def _label_sets(self) -> DataConfig:
        from training.labels import check_label_config

        check_label_config(self)
        return self

    @field_validator("targets", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value


class ModelConfig(Strict):
    """The architecture of one member. Every field can differ per member or be searched."""

    architecture: Architecture = "mlp"
    width: int = Field(default=256, ge=1, le=8192)
    depth: int = Field(default=2, ge=1, le=32, description="Hidden layers (mlp) or layers per branch.")
    residual_blocks: int = Field(default=2, ge=0, le=32, description="Blocks of the residual body.")
    activation: str = "relu"
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    batch_norm: bool = False
    l1: float = Field(default=0.0, ge=0.0)
    l2: float = Field(default=1e-4, ge=0.0)
    initializer: str = "glorot_uniform"
    categorical_encoding: Literal["one_hot", "embedding"] = "one_hot"
    embedding_dim: int = Field(default=4, ge=1, le=512)
    scaling: Scaling = Field(
        default="standard",
        description="Numeric inputs inside the model: standard ((x - mean) / std), minmax ((x - min) / "
        "(max - min)), none; fitted on the rows the member trains on.",
    )
    binary_head: BinaryHead = Field(
        default="softmax2",
        description="Two-class targets: softmax2 (two softmax units) or sigmoid (one sigmoid unit, "
        "binary cross-entropy); both serve [n, 2] probabilities.",
    )


class EarlyStoppingConfig(Strict):
    """EarlyStopping (best weights restored) and the best-only checkpoint watch the same metric."""

    monitor: str = Field(
        default="val_loss",
        pattern=MONITOR_PATTERN,
        description="val_loss, val_accuracy, val_<output>_loss, loss, ...: a metric Keras logs.",
    )
    min_delta: float = Field(default=0.0, ge=0.0, description="Smallest change that counts as better.")
    patience: int | None = Field(default=None, ge=1, description="Epochs without gain; None = fit.patience.")
    mode: Literal["auto", "min", "max"] = Field(
        default="auto", description="auto: max for an accuracy, min otherwise."
    )


class PlateauConfig(Strict):
    """ReduceLROnPlateau (``fit.schedule: plateau``), on the early-stopping monitor."""

    factor: float | None = Field(default=None, gt=0.0, lt=1.0, description="None = fit.decay_rate.")
    patience: int | None = Field(default=None, ge=1, description="None = half the early-stopping patience.")
    min_lr: float = Field(default=1e-6, ge=0.0)


class FitConfig(Strict):
    """How one member is fitted."""

    optimizer: Optimizer = "adam"
    learning_rate: float = Field(default=2e-3, gt=0.0, le=10.0)
    schedule: Schedule = "cosine"
    decay_rate: float = Field(default=0.5, gt=0.0, le=1.0, description="step/exponential/plateau factor.")
    piecewise: list[tuple[int, float]] | None = Field(
        default=None,
        description="schedule: piecewise: [[epoch, rate], ...], each rate from its epoch (counted "
        "from 0) on; learning_rate before the first.",
    )
    warmup_epochs: int = Field(
        default=0, ge=0, description="Linear warm-up from near 0 to the schedule's rate, in front of it."
    )
    decay_epochs: int = Field(default=10, ge=1, description="Epochs per step (step/exponential decay).")
    batch_size: int = Field(default=64, ge=1)
    epochs: int = Field(default=60, ge=1)
    patience: int = Field(default=15, ge=1, description="EarlyStopping patience on val_loss.")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    plateau: PlateauConfig = Field(default_factory=PlateauConfig)
    loss_weights: dict[str, float] = Field(
        default_factory=dict, description="Per target loss weight (several targets); default 1."
    )

    @field_validator("piecewise")
    @classmethod
    def _increasing_steps(cls, steps: list[tuple[int, float]] | None) -> list[tuple[int, float]] | None:
        if steps is None:
            return steps
        if not steps:
            raise ValueError("give at least one [epoch, rate] pair")
        epochs = [epoch for epoch, _ in steps]
        if epochs[0] < 0 or any(b <= a for a, b in itertools.pairwise(epochs)):
            raise ValueError(f"epochs must start at 0 or later and increase, got {epochs}")
        for epoch, rate in steps:
            if not (math.isfinite(rate) and 0.0 < rate <= 10.0):
                raise ValueError(f"the rate from epoch {epoch} must be above 0 and at most 10, got {rate}")
        return steps

    @model_validator(mode="after")
    def _schedule_settings(self) -> FitConfig:
        if self.schedule == "piecewise" and self.piecewise is None:
            raise ValueError("schedule: piecewise needs a `piecewise` list of [epoch, rate] pairs")
        if self.schedule != "piecewise" and self.piecewise is not None:
            raise ValueError(f"piecewise applies to schedule: piecewise (schedule is {self.schedule})")
        if self.schedule != "plateau" and self.plateau != PlateauConfig():
            raise ValueError(f"plateau applies to schedule: plateau (schedule is {self.schedule})")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be fewer than epochs ({self.epochs})"
            )
        return self

    @property
    def stopping_patience(self) -> int:
        """EarlyStopping's patience: early_stopping.patience, else fit.patience."""
        return self.early_stopping.patience or self.patience

    @field_validator("loss_weights")
    @classmethod
    def _non_negative(cls, weights: dict[str, float]) -> dict[str, float]:
        for target, value in weights.items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"loss weight of {target!r} must be finite and not negative, got {value}")
        return weights


class MemberConfig(Strict):
    """A member's hyperparameters: architecture and fitting."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    fit: FitConfig = Field(default_factory=FitConfig)


class MembersConfig(Strict):
    """How many members and how they differ."""

    count: int = Field(default=5, ge=1, le=1000)
    bootstrap: bool = Field(default=False, description="Each member fits a bootstrap sample (bagging).")
    defaults: MemberConfig = Field(default_factory=MemberConfig)
    variants: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Partial overrides of `defaults`; member i takes variants[i % len(variants)].",
    )


class LoggingConfig(Strict):
    """What a member writes while it trains, besides history.csv and the checkpoint."""

    histograms: int = Field(
        default=0, ge=0, description="TensorBoard weight histograms every N epochs; 0 = none."
    )
    every: int = Field(
        default=1, ge=1, description="Off a terminal and in train-member: one progress line every N epochs."
    )


class TrainConfig(Strict):
    """The whole training run."""

    name: str = Field(default="", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Ensemble name.")
    seed: int = Field(default=0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    members: MembersConfig = Field(default_factory=MembersConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    assemble: AssembleConfig = Field(default_factory=AssembleConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        given = self.assemble.given
        if self.assemble.weights == "given" and given is not None and len(given) != self.candidate_count:
            raise ValueError(f"assemble.given has {len(given)} weights for {self.candidate_count} members")
        if self.assemble.min_members > self.member_count:
            raise ValueError(
                f"assemble.min_members ({self.assemble.min_members}) exceeds the {self.member_count} "
                "members of the ensemble"
            )
        if given is not None and sum(1 for g in given if g > 0) < self.assemble.min_members:
            raise ValueError(
                f"assemble.given gives {sum(1 for g in given if g > 0)} members a weight, fewer than "
                f"assemble.min_members ({self.assemble.min_members})"
            )
        if self.search.trials and self.search.keep > self.search.trials:
            raise ValueError("search.keep exceeds search.trials")
        for i, variant in enumerate(self.members.variants):
            try:
                merged = _deep_merge(self.members.defaults.model_dump(), variant)
                MemberConfig.model_validate(merged)
            except ValidationError as exc:
                raise ValueError(f"members.variants[{i}]: {format_validation_error(exc)}") from None
        return self

    @property
    def candidate_count(self) -> int:
        """Members trained: the search's trials when searching, else members.count."""
        return self.search.trials if self.search.trials else self.members.count

    @property
    def member_count(self) -> int:
        """Members of the ensemble: the search's keep when searching, else members.count."""
        return self.search.keep if self.search.trials else self.members.count

    @property
    def fold_count(self) -> int:
        """Cross-fitting folds: data.split.folds, else :func:`default_folds` of the ensemble's size."""
        return self.data.split.folds or default_folds(self.member_count)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``'a.b'``, creating levels as needed."""
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def member_base(config: TrainConfig, index: int) -> MemberConfig:
    """Member ``index``'s hyperparameters before any search: defaults, then its variant."""
    base = config.members.defaults.model_dump()
    if config.members.variants:
        base = _deep_merge(base, config.members.variants[index % len(config.members.variants)])
    return MemberConfig.model_validate(base)


def format_validation_error(exc: ValidationError) -> str:
    """One line: every problem as ``location: message``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def load_config(
    path: Path | None, overrides: dict[str, Any] | None = None, *, members: int | None = None
) -> TrainConfig:
    """Read a YAML config (or the defaults), apply dotted overrides, validate.

    ``members`` is the ``--members`` flag: the members of the ensemble, which with a search means
    the candidates kept (``search.keep``), else ``members.count``. Raises ConfigError with a
    one-line message for an unreadable file, bad YAML or a bad value.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(f"config {path} is not valid YAML{where}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a YAML mapping at the top level")
        raw = loaded
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(raw, dotted, value)
    if members is not None:
        search = raw.get("search")
        searching = isinstance(search, dict) and bool(search.get("trials"))
        set_dotted(raw, "search.keep" if searching else "members.count", members)
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid config: {format_validation_error(exc)}") from None


def ensemble_name(config: TrainConfig) -> str:
    """The configured name, or one derived from the data source ('sklearn:digits' -> 'digits')."""
    if config.name:
        return config.name
    source = config.data.source
    stem = source.split(":", 1)[1] if source.startswith("sklearn:") else Path(source).stem
    import re

    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "ensemble"
    return name if name[0].isalnum() else f"e{name}"
