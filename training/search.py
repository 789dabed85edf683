"""Random hyperparameter search with Optuna: candidate i's hyperparameters, and the top K kept.

Candidates are drawn by Optuna's seeded random sampler through its ask/tell interface, so every
worker (a local process or a pod) re-derives candidate i's hyperparameters from the seed alone,
and assemble reports each candidate's out-of-fold loss back to the same study to rank them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from training.config import MemberConfig, ParamSpace, TrainConfig, member_base, set_dotted


def _suggest(trial: Any, key: str, space: ParamSpace) -> Any:
    if space.choices is not None:
        return trial.suggest_categorical(key, space.choices)
    assert space.low is not None
    assert space.high is not None
    if space.integer:
        return trial.suggest_int(key, int(space.low), int(space.high), log=space.log)
    return trial.suggest_float(key, space.low, space.high, log=space.log)


def _study(config: TrainConfig, trials: int) -> tuple[Any, list[Any]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=config.seed))
    asked = []
    for _ in range(trials):
        trial = study.ask()
        for key, space in config.search.space.items():
            _suggest(trial, key, space)
        asked.append(trial)
    return study, asked


def candidate(config: TrainConfig, index: int) -> MemberConfig:
    """Member ``index``'s hyperparameters: its base, then its sampled values when searching."""
    base = member_base(config, index)
    if not config.search.trials or not config.search.space:
        return base
    _, asked = _study(config, index + 1)
    tree = base.model_dump()
    for key, value in asked[index].params.items():
        set_dotted(tree, key, value)
    return MemberConfig.model_validate(tree)


def top_candidates(config: TrainConfig, losses: Sequence[float]) -> list[int]:
    """Indices of the ``search.keep`` candidates with the lowest out-of-fold loss, best first."""
    study, asked = _study(config, len(losses))
    for trial, loss in zip(asked, losses, strict=True):
        study.tell(trial, float(loss))
    ranked = sorted(study.trials, key=lambda t: (t.value, t.number))
    return [t.number for t in ranked[: config.search.keep]]
