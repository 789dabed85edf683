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
        ("data:\n  split: {validation: 0.5, test: 0.45}\n", "at least 10%"),
    ],
)
def test_mistakes_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


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
