"""The ``search`` config section: the space, Optuna's sampler and pruner, and the shared study."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from training.strict import Strict

Sampler = Literal["random", "grid", "tpe"]
Pruner = Literal["none", "median", "hyperband"]


def storage_problem(url: str) -> str | None:
    """Why ``url`` cannot be a study's storage (None when it can): a database URL, dialect://..."""
    dialect, sep, _ = url.partition("://")
    if not sep or not dialect:
        return (
            f"study storage {url!r} is not a database URL (e.g. sqlite:///study.db, postgresql+psycopg://...)"
        )
    return None


class ParamSpace(Strict):
    """One searched hyperparameter: a list of choices, or a numeric range (with a step for grid)."""

    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = Field(default=None, gt=0, description="Spacing of a range; grid needs it.")
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpace:
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices must not be empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give either choices or both low and high")
        if self.low > self.high:
            raise ValueError("low must not exceed high")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("a range is either log or stepped, not both")
        return self

    def grid(self) -> list[Any]:
        """Every value a grid search tries: the choices, or low, low + step, ... up to high."""
        if self.choices is not None:
            return list(self.choices)
        assert self.low is not None
        assert self.high is not None
        assert self.step is not None
        count = int((self.high - self.low) / self.step + 1e-9) + 1
        values = [self.low + i * self.step for i in range(count)]
        return [round(v) for v in values] if self.integer else values


class SearchConfig(Strict):
    """A search on Optuna: `trials` candidates from `space`; the best `keep` become the ensemble.

    Every worker asks one shared study (RDB storage) for its next trial, so the sampler learns
    from trials finished by any worker.
    """

    trials: int = Field(default=0, ge=0, le=1000, description="0 = no search.")
    keep: int = Field(default=5, ge=1)
    space: dict[str, ParamSpace] = Field(
        default_factory=dict, description="Dotted member keys, e.g. 'model.width' or 'fit.learning_rate'."
    )
    sampler: Sampler = Field(
        default="random", description="random; grid (every combination, needs a finite space); tpe."
    )
    pruner: Pruner = Field(
        default="none",
        description="Stop unpromising trials early on their val_loss: none, median, hyperband.",
    )
    storage: str | None = Field(
        default=None,
        description="Optuna RDB storage URL of the shared study; None = sqlite study.db in the run folder "
        "(train-member --study-storage or $ENSEMBLE_STUDY_STORAGE override it).",
    )
    study: str = Field(
        default="",
        pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Study name; empty = the ensemble's.",
    )
    heartbeat: int = Field(
        default=30, ge=1, le=3600, description="Seconds between a running trial's heartbeats."
    )
    grace: int = Field(
        default=120, ge=2, le=86_400, description="A running trial silent this long is marked failed."
    )

    @field_validator("space")
    @classmethod
    def _known_keys(cls, space: dict[str, ParamSpace]) -> dict[str, ParamSpace]:
        from training.config import FitConfig, ModelConfig  # the config imports this module

        for key in space:
            section, _, name = key.partition(".")
            fields = {"model": ModelConfig.model_fields, "fit": FitConfig.model_fields}.get(section)
            if fields is None or name not in fields:
                raise ValueError(f"unknown search key {key!r} (use model.<field> or fit.<field>)")
        return space

    @field_validator("storage")
    @classmethod
    def _database_url(cls, url: str | None) -> str | None:
        problem = storage_problem(url) if url is not None else None
        if problem:
            raise ValueError(problem)
        return url

    @model_validator(mode="after")
    def _finite_grid(self) -> SearchConfig:
        if self.sampler == "grid":
            for key, space in self.space.items():
                if space.choices is None and space.step is None:
                    raise ValueError(f"sampler grid needs a finite space: give {key} choices or a step")
        if self.grace <= self.heartbeat:
            raise ValueError("grace must exceed heartbeat")
        return self
