"""How the rows are split: the held-out test rows, and cross-fitting folds or one validation split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from training.strict import Strict

SplitMethod = Literal["cross_fit", "holdout"]

HOLDOUT_VALIDATION = 0.15


def default_folds(members: int) -> int:
    """Cross-fitting folds when ``data.split.folds`` is not set: two members to a fold, and at least
    three folds (so each member trains on two thirds of the rows or more).

    A row held out by one member only says nothing about how to weight members against each
    other; a row held out by two does. One fold per member would leave every weighting
    indistinguishable from uniform out of fold.
    """
    return max(2, min(members, max(3, -(-members // 2))))


class SplitConfig(Strict):
    """Which rows are held out, and how each member is validated. Every split is fixed by the seed.

    ``cross_fit`` (the default) cuts the non-test rows into folds: member i early-stops on fold
    ``i % folds`` and never trains on it (members share a fold when there are fewer folds than
    members), so every member leaves predictions on rows it never saw and the weights are learned
    on those. ``holdout`` is the single validation split every member
    early-stops on and the weights are fitted to.
    """

    method: SplitMethod = Field(
        default="cross_fit",
        description="cross_fit: members validated on folds of their own, weights learned out of fold; "
        "holdout: one validation split shared by every member.",
    )
    folds: int | None = Field(
        default=None,
        ge=2,
        le=100,
        description="cross_fit: number of folds; None = about two members to a fold, at least 3 "
        "(members 3-6: 3 folds; 8: 4; 10: 5) and no more than the members.",
    )
    validation: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description=f"holdout: fraction of the rows in the validation split; None = {HOLDOUT_VALIDATION}.",
    )
    test: float = Field(default=0.15, gt=0.0, lt=1.0, description="The held-out report.")

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitConfig:
        if self.method == "cross_fit" and self.validation is not None:
            raise ValueError(
                "validation applies to method: holdout; cross-fitting validates each member on its "
                "own fold (set folds, or method: holdout)"
            )
        if self.method == "holdout" and self.folds is not None:
            raise ValueError("folds applies to method: cross_fit")
        if self.validation_fraction + self.test >= 0.9:
            raise ValueError("validation + test must leave at least 10% of the rows for training")
        return self

    @property
    def validation_fraction(self) -> float:
        """The single validation split's share of the rows: 0 with cross-fitting."""
        if self.method == "cross_fit":
            return 0.0
        return HOLDOUT_VALIDATION if self.validation is None else self.validation
