"""How member weights are chosen and which members are served: the ``assemble`` config section."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from training.strict import Strict

WeightMethod = Literal["uniform", "given", "optimized", "greedy"]


class AssembleConfig(Strict):
    """How member weights are chosen, and which members are served."""

    weights: WeightMethod = Field(
        default="greedy",
        description="greedy: ensemble selection with replacement (Caruana et al. 2004) on the "
        "out-of-fold predictions; optimized: the simplex minimum of the same loss (SLSQP); "
        "uniform; given.",
    )
    given: list[float] | None = Field(default=None, description="Weights for `given`, one per member.")
    greedy_rounds: int = Field(default=100, ge=1, le=10_000, description="Selection rounds of greedy.")
    shrinkage: Literal["auto"] | float = Field(
        default="auto",
        description="Blend learned weights toward uniform, (1 - s) * w + s / n; auto = the s that "
        "scores best on held-out out-of-fold rows.",
    )
    prune: bool = Field(
        default=False,
        description="Drop members the weight learner gives no weight (never below min_members); "
        "otherwise every member is served with at least a small weight.",
    )
    min_members: int = Field(
        default=1, ge=1, description="Serving quorum in the manifest; pruning keeps at least this many."
    )

    @field_validator("shrinkage")
    @classmethod
    def _shrinkage_range(cls, value: str | float) -> str | float:
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            raise ValueError("shrinkage must be 'auto' or a number from 0 to 1")
        return value

    @field_validator("given")
    @classmethod
    def _usable_weights(cls, given: list[float] | None) -> list[float] | None:
        if given is None:
            return given
        for i, value in enumerate(given):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"weights must be finite and not negative (given[{i}] is {value})")
        if given and not any(value > 0 for value in given):
            raise ValueError("at least one weight must be positive")
        return given

    @model_validator(mode="after")
    def _given_needs_weights(self) -> AssembleConfig:
        if self.weights == "given" and not self.given:
            raise ValueError("weights: given needs a `given` list")
        if self.weights != "given" and self.given is not None:
            raise ValueError(f"given applies to weights: given (weights is {self.weights})")
        return self
