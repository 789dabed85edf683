"""Before any member trains: the config resolved, the data checked, and the run folder started.

``ensemble train`` and ``ensemble train-member`` (the first worker of a Kubernetes run) both go
through here, so every worker reads the same ``config.yaml`` and ``dataset.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.data import Dataset


def resolve_config(config_path: Path | None, overrides: dict[str, Any], members: int | None) -> TrainConfig:
    """Config file + flags, validated, with the ensemble name filled in."""
    from training.config import ensemble_name, load_config

    config = load_config(config_path, overrides, members=members)
    return config.model_copy(update={"name": ensemble_name(config)})


def check_data(config: TrainConfig) -> Dataset:
    """Everything that can be checked before training: the data, the folds, names that refer to them."""
    from training.controls import check_controls
    from training.data import prepare
    from training.errors import ConfigError
    from training.folds import assign_folds

    dataset = prepare(config.data, config.seed)
    check_controls(config, dataset)
    targets = {t.name for t in dataset.targets}
    for where, named in _loss_weight_keys(config):
        unknown = set(named) - targets
        if unknown:
            raise ConfigError(
                f"{where} names columns that are not targets: {', '.join(sorted(unknown))} "
                f"(targets: {', '.join(sorted(targets))})"
            )
    if config.data.split.method == "cross_fit":
        assign_folds(dataset, config)
    return dataset


def _loss_weight_keys(config: TrainConfig) -> list[tuple[str, list[str]]]:
    """Every place a config names loss-weight targets: the defaults, each variant, searched choices."""
    places = [("members.defaults.fit.loss_weights", list(config.members.defaults.fit.loss_weights))]
    for i, variant in enumerate(config.members.variants):
        named = (variant.get("fit") or {}).get("loss_weights")
        if isinstance(named, dict):
            places.append((f"members.variants[{i}].fit.loss_weights", list(named)))
    space = config.search.space.get("fit.loss_weights")
    for choice in (space.choices or []) if space is not None else []:
        if isinstance(choice, dict):
            places.append(("search.space.fit.loss_weights", list(choice)))
    return places


def prepare_run(config: TrainConfig, out_dir: Path) -> None:
    """Validate the data and write ``config.yaml`` and ``dataset.json`` (what every worker reads)."""
    from contracts.files import atomic_write_text
    from contracts.run_layout import RunLayout, write_record
    from contracts.run_records import SplitSummary
    from training.folds import fold_sizes

    dataset = check_data(config)
    layout = RunLayout(out_dir)
    atomic_write_text(layout.config, config.to_yaml())
    split = SplitSummary(method=config.data.split.method, fold_rows=fold_sizes(dataset, config))
    write_record(layout.dataset, dataset.summary(split))
