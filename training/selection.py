"""Which members are served, and with which weights: the decision, with its reasons in words.

Every trained member is served unless the user says otherwise (a search's ``keep``,
``assemble.prune``, a ``given`` weight of 0), so a failed member leaves others to renormalise
over. A learned weighting is kept only where it beats uniform out of fold:

1. the learner sees only rows held out by two or more members (:meth:`OutOfFold.informative`);
   with none, or fewer than :data:`MIN_INFORMATIVE_ROWS`, the ensemble is uniform;
2. those rows are cut into :data:`CV_GROUPS` groups; the weights learned without a group are
   scored on it, at every shrinkage toward uniform, and the shrinkage with the lowest held-out
   loss is chosen (``assemble.shrinkage: auto``);
3. the learned weighting is served only if that held-out loss is below uniform's by more than
   the noise of the rows (:func:`clearly_better`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from contracts.combine import FloatArray
from contracts.run_records import Served, WeightsSummary
from training import search, weights
from training.config import TrainConfig
from training.errors import TrainingError
from training.oof import OutOfFold

# Fewer informative rows than this make the held-out comparison with uniform a coin toss:
# 5 groups of 20 rows is the least that separates a real gain from the noise of one row.
MIN_INFORMATIVE_ROWS = 100
CV_GROUPS = 5
SHRINKAGE_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# Unless pruning, a learned weighting is never shrunk less than this, so every served member
# keeps at least 5% of a uniform share and stays a real fallback.
MIN_SHRINKAGE = 0.05
# "Beats uniform" means by more than float rounding: identical members must not pass.
ROUNDING = 1e-9
# ... and by more than the noise of the rows: the paired per-row difference must be below zero by
# this many standard errors (one-sided, about 95%). A gain smaller than that does not carry over to
# the test rows often enough to be worth giving up uniform's robustness.
SIGNIFICANCE_Z = 1.645


@dataclass
class Decision:
    """The weights over every trained member (0 = not served) and why."""

    weights: FloatArray
    served: Served
    note: str
    """One line: how the weights were chosen, or why the ensemble is uniform."""
    dropped: dict[int, str] = field(default_factory=dict)
    """Member index -> why it is not served."""
    eligible: list[int] = field(default_factory=list)
    """Members a search kept (every member without a search): uniform is uniform over these."""
    learned: FloatArray | None = None
    """The learned weighting over every member, also when it lost to uniform (the report shows it)."""
    shrinkage: float | None = None
    oof_rows: int = 0
    informative_rows: int = 0
    oof_loss_uniform: float | None = None
    oof_loss_learned: float | None = None

    @property
    def uniform(self) -> FloatArray:
        out = np.zeros(len(self.weights))
        out[self.eligible] = 1.0 / len(self.eligible)
        return out

    def summary(self) -> WeightsSummary:
        """What report.json records under ``weights``."""
        return WeightsSummary(
            served=self.served,
            note=self.note,
            shrinkage=self.shrinkage,
            out_of_fold_rows=self.oof_rows,
            informative_rows=self.informative_rows,
            oof_loss_uniform=self.oof_loss_uniform,
            oof_loss_learned=self.oof_loss_learned,
            learned=None if self.learned is None else [float(w) for w in self.learned],
        )


def decide(config: TrainConfig, table: OutOfFold, pruned: dict[int, str] | None = None) -> Decision:
    """Weights over the members of ``table`` (every trained member, in index order); ``pruned``
    maps the search's pruned trials to why, and none of them is kept."""
    count = table.members
    eligible, dropped = _search_keep(config, table, pruned or {})
    method = config.assemble.weights
    full = np.zeros(count)
    if method == "given":
        assert config.assemble.given is not None
        given = np.asarray([config.assemble.given[i] for i in eligible], dtype=np.float64)
        if np.count_nonzero(given > 0) < config.assemble.min_members:
            raise TrainingError(
                f"assemble.given gives {np.count_nonzero(given > 0)} of the members the search kept a "
                f"weight, fewer than assemble.min_members ({config.assemble.min_members})"
            )
        for i, value in zip(eligible, given, strict=True):
            if value <= 0:
                dropped[i] = "assemble.given gives it weight 0"
        full[eligible] = weights.given(given)
        return Decision(full, "given", "given: assemble.given", dropped, eligible, oof_rows=table.size)
    full[eligible] = weights.uniform(len(eligible))
    if method == "uniform":
        return Decision(full, "uniform", "uniform: assemble.weights is uniform", dropped, eligible)
    return _learned(config, table, eligible, dropped)


def _search_keep(
    config: TrainConfig, table: OutOfFold, pruned: dict[int, str]
) -> tuple[list[int], dict[int, str]]:
    """The candidates a search keeps (by each one's own out-of-fold loss), and why the rest are not."""
    if not config.search.trials:
        return list(range(table.members)), {}
    losses = table.member_losses()
    kept = search.top_candidates(config, [float(x) if np.isfinite(x) else 1e300 for x in losses], pruned)
    order = sorted(range(table.members), key=lambda i: (losses[i], i))
    dropped = {
        i: pruned.get(i)
        or f"not kept by the search: rank {order.index(i) + 1} of {table.members} by out-of-fold "
        f"loss ({losses[i]:.4f}), search.keep is {config.search.keep}"
        for i in range(table.members)
        if i not in kept
    }
    return sorted(kept), dropped


def _learned(config: TrainConfig, table: OutOfFold, eligible: list[int], dropped: dict[int, str]) -> Decision:
    method = config.assemble.weights
    count = table.members
    uniform_full = np.zeros(count)
    uniform_full[eligible] = 1.0 / len(eligible)
    own = table.of_members(eligible)
    informative = own.informative()
    decision = Decision(
        uniform_full, "uniform", "", dropped, eligible, oof_rows=own.size, informative_rows=informative.size
    )
    too_few = _too_few_rows(config, informative.size)
    if too_few is not None:
        decision.note = too_few
        return decision

    prune = config.assemble.prune
    groups = informative.components()
    rounds = config.assemble.greedy_rounds

    def learn(part: OutOfFold) -> FloatArray:
        raw = weights.greedy(part, rounds) if method == "greedy" else weights.optimized(part)
        return weights.balanced(raw, groups)

    grid = _shrinkages(config)
    finish = _finisher(groups, prune)
    held_out, uniform_rows = _cross_validate(config, informative, learn, finish, grid)
    # Ties go to the larger shrinkage: nearer uniform unless the rows say otherwise.
    best = min(sorted(grid, reverse=True), key=lambda s: float(np.sum(held_out[s])))
    decision.shrinkage = best
    decision.oof_loss_learned = float(np.mean(held_out[best]))
    decision.oof_loss_uniform = float(np.mean(uniform_rows))
    chosen = finish(learn(informative), best)
    learned_full = np.zeros(count)
    learned_full[eligible] = chosen
    decision.learned = learned_full
    how = "auto" if config.assemble.shrinkage == "auto" else "assemble.shrinkage"
    compared = (
        f"out-of-fold loss {decision.oof_loss_learned:.4f} vs {decision.oof_loss_uniform:.4f} uniform, "
        f"on {informative.size} rows held out by two or more members"
    )
    if not decision.oof_loss_learned < decision.oof_loss_uniform * (1 - ROUNDING):
        decision.note = f"uniform: {method} weights did not beat uniform out of fold ({compared})"
        return decision
    if not clearly_better(held_out[best], uniform_rows):
        decision.note = (
            f"uniform: {method} weights beat uniform out of fold by less than the rows' noise "
            f"({compared}; {SIGNIFICANCE_Z:g} standard errors needed)"
        )
        return decision
    decision.weights = learned_full
    decision.served = "learned"
    decision.note = f"{method} weights, shrinkage {best:g} ({how}): {compared}"
    if prune:
        _prune(config, own, eligible, decision)
    return decision


def _too_few_rows(config: TrainConfig, rows: int) -> str | None:
    """Why ``rows`` informative rows cannot tell a learned weighting from uniform; None if they can."""
    if rows == 0:
        return (
            f"uniform: every row was held out by one member only ({_why_alone(config)}), so out of "
            "fold no weighting can be told from uniform"
        )
    if rows < MIN_INFORMATIVE_ROWS:
        return (
            f"uniform: only {rows} rows were held out by two or more members, fewer than "
            f"{MIN_INFORMATIVE_ROWS}: too few to trust a learned weighting"
        )
    return None


def _cross_validate(
    config: TrainConfig,
    informative: OutOfFold,
    learn: Callable[[OutOfFold], FloatArray],
    finish: Callable[[FloatArray, float], FloatArray],
    grid: list[float],
) -> tuple[dict[float, FloatArray], FloatArray]:
    """Per shrinkage, each informative row's loss under weights learned without it; and uniform's."""
    held_out: dict[float, FloatArray] = {s: np.zeros(informative.size) for s in grid}
    uniform_rows: FloatArray = np.zeros(informative.size)
    for train, test in _cv_groups(informative.size, config.seed):
        learned = learn(informative.take(train))
        scored = informative.take(test)
        for s in grid:
            held_out[s][test] = scored.row_losses(finish(learned, s))
        uniform_rows[test] = scored.row_losses(weights.uniform(informative.members))
    return held_out, uniform_rows


def clearly_better(candidate: FloatArray, baseline: FloatArray) -> bool:
    """Whether ``candidate``'s per-row losses beat ``baseline``'s on the same rows by more than
    :data:`SIGNIFICANCE_Z` standard errors of the paired difference (one-sided)."""
    difference = np.asarray(candidate, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    if difference.size < 2:
        return False
    spread = float(np.std(difference, ddof=1)) / np.sqrt(difference.size)
    return bool(float(np.mean(difference)) < -SIGNIFICANCE_Z * spread - ROUNDING)


def _why_alone(config: TrainConfig) -> str:
    if config.data.split.method == "holdout":  # only a one-member ensemble gets here
        return "a single member"
    return (
        f"{config.fold_count} folds for {config.member_count} member{'s' if config.member_count != 1 else ''}"
    )


def _shrinkages(config: TrainConfig) -> list[float]:
    fixed = config.assemble.shrinkage
    floor = 0.0 if config.assemble.prune else MIN_SHRINKAGE
    if fixed != "auto":
        return [max(float(fixed), floor)]
    return [s for s in SHRINKAGE_GRID if s >= floor]


def _finisher(groups: list[list[int]], prune: bool) -> Callable[[FloatArray, float], FloatArray]:
    """Shrinkage toward uniform; with pruning, uniform over the members the learner picked."""

    def finish(learned: FloatArray, shrinkage: float) -> FloatArray:
        if not prune:
            return weights.shrink(learned, shrinkage)
        # A member alone in its group got no weight because no row compares it, not because it is
        # worse: it keeps its uniform share.
        picked = learned > 0
        for group in groups:
            if len(group) == 1:
                picked[group[0]] = True
        return weights.shrink(learned, shrinkage, among=picked)

    return finish


def _cv_groups(rows: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold

    splitter = KFold(n_splits=CV_GROUPS, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(rows)))


def _prune(config: TrainConfig, table: OutOfFold, eligible: Sequence[int], decision: Decision) -> None:
    """Drop the members the learned weighting gives nothing, keeping at least min_members."""
    served = [i for i in eligible if decision.weights[i] > 0]
    unpicked = [i for i in eligible if decision.weights[i] <= 0]
    missing = config.assemble.min_members - len(served)
    if missing > 0:  # the best of the rest, by their own out-of-fold loss, come back at a small weight
        losses = table.member_losses()
        position = {member: k for k, member in enumerate(eligible)}
        back = sorted(unpicked, key=lambda i: (losses[position[i]], i))[:missing]
        decision.weights[back] = MIN_SHRINKAGE / len(eligible)
        decision.weights = decision.weights / decision.weights.sum()
        unpicked = [i for i in unpicked if i not in back]
    for i in unpicked:
        decision.dropped[i] = f"no weight in {config.assemble.weights} selection (assemble.prune: true)"
