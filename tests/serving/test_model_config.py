"""models.config: TF Serving's text format, written atomically and read back with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.model_config import (
    ModelConfigError,
    ModelEntry,
    dumps_model_config,
    loads_model_config,
    read_model_config,
    write_model_config,
)


def test_round_trip_every_policy(tmp_path: Path) -> None:
    entries = [
        ModelEntry("m_latest", "/models/m_latest"),
        ModelEntry("m_latest3", "/models/m_latest3", latest=3),
        ModelEntry(
            "m_specific", "/models/m_specific", versions=[3, 4], labels={"champion": 3, "challenger": 4}
        ),
        ModelEntry("m_all", "relative/m_all", all_versions=True),
    ]
    path = tmp_path / "repo" / "models.config"
    write_model_config(path, entries)
    assert read_model_config(path) == entries
    assert [p.name for p in path.parent.iterdir()] == ["models.config"]  # no temp file left behind
    text = path.read_text()
    assert 'model_platform: "tensorflow"' in text
    assert "specific {" in text
    assert "num_versions: 3" in text
    assert "all {" in text
    assert read_model_config(path)[0].num_latest == 1
    assert read_model_config(path)[2].num_latest is None


def test_reads_tf_servings_documented_example() -> None:
    text = """
    model_config_list {
      config {
        name: "digits-m0"
        base_path: "/models/digits-m0"
        model_platform: "tensorflow"
        model_version_policy { specific { versions: 3 versions: 4 } }
        version_labels { key: "champion" value: 3 }
        version_labels { key: "challenger" value: 4 }
      }
      config { name: "other" base_path: "/models/other" model_version_policy { latest { num_versions: 2 } } }
    }
    """
    first, second = loads_model_config(text)
    assert first == ModelEntry(
        "digits-m0", "/models/digits-m0", versions=[3, 4], labels={"champion": 3, "challenger": 4}
    )
    assert second.latest == 2
    assert loads_model_config("") == []


def test_overwrite_replaces_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    write_model_config(path, [ModelEntry("a", "/a"), ModelEntry("b", "/b")])
    write_model_config(path, [ModelEntry("c", "/c")])
    assert [e.name for e in read_model_config(path)] == ["c"]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([ModelEntry("m", "/m", labels={"bad-label": 1})], "must match"),
        ([ModelEntry("m", "/m", versions=[1], latest=2)], "at most one"),
        ([ModelEntry("m", "/m", versions=[])], "non-empty"),
        ([ModelEntry("m", "/m", latest=0)], "at least 1"),
        ([ModelEntry("", "/m")], "needs a name"),
        ([ModelEntry("m", "")], "base_path is empty"),
        ([ModelEntry("m", "/m"), ModelEntry("m", "/n")], "unique"),
    ],
)
def test_invalid_entries_are_refused(tmp_path: Path, entries, message: str) -> None:
    path = tmp_path / "models.config"
    with pytest.raises(ModelConfigError, match=message):
        write_model_config(path, entries)
    assert not path.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "model_config_list { config { name: 'm' base_path: '/m' bogus: 1 } }",
            "not a valid model server config",
        ),
        (
            "model_config_list { config { name: 'm' base_path: '/m' "
            "version_labels { key: 'a b' value: 1 } } }",
            "must match",
        ),
        ("model_config_list {", "not a valid model server config"),
        ("custom_model_config { }", "custom_model_config is not supported"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "models.config"
    path.write_text(text)
    with pytest.raises(ModelConfigError, match=message) as caught:
        read_model_config(path)
    assert str(path) in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="no such model config file"):
        read_model_config(tmp_path / "absent.config")


def test_dumps_is_parseable_by_loads() -> None:
    entries = [ModelEntry("m", "/m", versions=[1, 2], labels={"stable": 2})]
    assert loads_model_config(dumps_model_config(entries)) == entries
