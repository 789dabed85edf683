"""Config validation: every mistake is one line, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import TrainConfig, ensemble_name, load_config, member_base
from training.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("members: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "mapping at the top level"),
        ("members:\n  count: 0\n", "members.count"),
        ("colour: blue\n", "colour: Extra inputs are not permitted"),
        ("search:\n  trials: 3\n  space:\n    model.colour: {choices: [1]}\n", "unknown search key"),
        ("assemble:\n  weights: given\n", "needs a `given` list"),
        (
            "members:\n  count: 2\nassemble:\n  weights: given\n  given: [1, 2, 3]\n",
            "3 weights for 2 members",
        ),
        ("members:\n  variants:\n    - model: {width: -3}\n", "members.variants[0]"),
        ("data:\n  split: {method: holdout, validation: 0.5, test: 0.45}\n", "at least 10%"),
        ("data:\n  split: {validation: 0.2}\n", "validation applies to method: holdout"),
        ("data:\n  split: {method: holdout, folds: 3}\n", "folds applies to method: cross_fit"),
        ("data:\n  split: {method: kfold}\n", "data.split.method"),
        ("data:\n  split: {folds: 1}\n", "data.split.folds"),
        (
            "members:\n  count: 2\nassemble:\n  weights: given\n  given: [1, -2]\n",
            "assemble.given: weights must be finite and not negative (given[1] is -2.0)",
        ),
        (
            "members:\n  count: 2\nassemble:\n  weights: given\n  given: [0, 0]\n",
            "assemble.given: at least one weight must be positive",
        ),
        ("assemble:\n  given: [1, 1, 1, 1, 1]\n", "given applies to weights: given (weights is greedy)"),
        ("assemble:\n  shrinkage: 2\n", "shrinkage must be 'auto' or a number from 0 to 1"),
        ("members:\n  count: 3\nassemble:\n  min_members: 4\n", "min_members (4) exceeds the 3 members"),
        (
            "members:\n  count: 3\nassemble:\n  weights: given\n  given: [1, 0, 0]\n  min_members: 2\n",
            "gives 1 members a weight, fewer than assemble.min_members (2)",
        ),
        (
            "members:\n  defaults:\n    fit:\n      loss_weights: {a: -1}\n",
            "loss weight of 'a' must be finite and not negative",
        ),
    ],
)
def test_mistakes_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_members_flag_sets_the_count_or_the_search_keep_before_validation(tmp_path: Path) -> None:
    given = _write(tmp_path, "assemble:\n  weights: given\n  given: [1, 2]\n")
    assert load_config(given, members=2).members.count == 2  # valid only with the flag applied
    searched = _write(tmp_path, "search:\n  trials: 6\n  space:\n    model.width: {choices: [8]}\n")
    config = load_config(searched, members=3)
    assert (config.search.keep, config.member_count, config.candidate_count) == (3, 3, 6)
    assert config.fold_count == 3


def test_defaults_cross_fit_with_about_two_members_to_a_fold() -> None:
    config = TrainConfig.model_validate({"members": {"count": 4}})
    assert config.data.split.method == "cross_fit"
    assert config.data.split.validation_fraction == 0.0
    assert config.fold_count == 3
    folds = {n: TrainConfig.model_validate({"members": {"count": n}}).fold_count for n in (2, 3, 5, 6, 8, 10)}
    assert folds == {2: 2, 3: 3, 5: 3, 6: 3, 8: 4, 10: 5}
    assert config.assemble.weights == "greedy"
    assert config.assemble.greedy_rounds == 100
    assert TrainConfig.model_validate({"members": {"count": 1}}).fold_count == 2
    holdout = TrainConfig.model_validate({"data": {"split": {"method": "holdout"}}})
    assert holdout.data.split.validation_fraction == 0.15


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_win_and_targets_split_on_commas(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  source: a.csv\nmembers:\n  count: 7\n")
    config = load_config(path, {"members.count": 2, "data.targets": "x, y", "seed": None})
    assert config.members.count == 2
    assert config.data.targets == ["x", "y"]
    assert config.data.source == "a.csv"
    assert TrainConfig.model_validate(config.model_dump()) == config


def test_variants_cycle_over_members() -> None:
    config = TrainConfig.model_validate(
        {"members": {"count": 3, "variants": [{"model": {"width": 16}}, {"fit": {"optimizer": "sgd"}}]}}
    )
    assert member_base(config, 0).model.width == 16
    assert member_base(config, 1).fit.optimizer == "sgd"
    assert member_base(config, 1).model.width == config.members.defaults.model.width
    assert member_base(config, 2).model.width == 16


def test_ensemble_name_from_source() -> None:
    assert ensemble_name(TrainConfig()) == "digits"
    assert ensemble_name(TrainConfig.model_validate({"data": {"source": "/x/my data.csv"}})) == "my-data"
    assert ensemble_name(TrainConfig(name="given")) == "given"


@pytest.mark.parametrize("example", sorted((Path(__file__).parents[2] / "examples").glob("*.yaml")))
def test_example_configs_are_valid(example: Path) -> None:
    config = load_config(example)
    assert config.candidate_count >= 1
