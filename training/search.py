"""A member's place in the search: its trial of the shared study while it trains, and the top K kept.

With a search, member i is one trial: the worker asks the shared study (:mod:`training.study`)
for it, reports its val_loss every epoch so the pruner can stop it, and tells the study how it
ended. Without a search, member i is its configured base. The ``keep`` best finished trials, by
their own out-of-fold loss, become the ensemble; pruned trials are never kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from contracts.run_records import MemberRecord
from training.config import TrainConfig
from training.study import Trial, ask


def start_trial(
    config: TrainConfig, out_dir: Path, index: int, seed: int, storage: str | None = None
) -> Trial | None:
    """Member ``index``'s trial, its heartbeat running; None when the run does not search."""
    if not config.search.trials or not config.search.space:
        return None
    trial = ask(config, out_dir, index, seed, storage)
    trial.start_heartbeat()
    return trial


class PruningCallback:
    """Reports the monitored validation loss to the trial after every epoch and stops the fit when
    the pruner says so (Optuna's Keras pruning callback, without its extra dependency)."""

    def __init__(self, trial: Trial, monitor: str = "val_loss") -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned_at: int | None = None

    def keras(self) -> Any:
        import keras

        outer = self

        class _Callback(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                value = (logs or {}).get(outer.monitor)
                if value is None:
                    return
                if outer.trial.report(float(value), epoch) and outer.pruned_at is None:
                    outer.pruned_at = epoch + 1
                    self.model.stop_training = True

        return _Callback()


def top_candidates(
    config: TrainConfig, losses: Sequence[float], pruned: Mapping[int, Any] | None = None
) -> list[int]:
    """Indices of the ``search.keep`` candidates with the lowest out-of-fold loss, best first;
    pruned candidates are never kept."""
    finished = [i for i in range(len(losses)) if i not in (pruned or {})]
    ranked = sorted(finished, key=lambda i: (losses[i], i))
    return ranked[: config.search.keep]


def pruned_reasons(records: Sequence[MemberRecord]) -> dict[int, str]:
    """Member index -> why it is not served, for the trials the pruner stopped (from member.json)."""
    reasons = {}
    for i, record in enumerate(records):
        epoch = record.trial.pruned_at_epoch if record.trial is not None else None
        if epoch is not None:
            reasons[i] = f"pruned by the search at epoch {epoch}: its val_loss trailed the other trials'"
    return reasons
