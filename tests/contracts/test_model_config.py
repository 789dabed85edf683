"""models.config: TF Serving's text format, written atomically and read back with clear errors.

The module writes and reads the text format by hand; protobuf's own printer and parser (through the
project's wire-compatible messages) are the reference it is held to.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from contracts.model_config import (
    ModelConfigError,
    ModelEntry,
    dumps_model_config,
    loads_model_config,
    read_model_config,
    write_model_config,
)
from serving.protos import ModelServerConfig


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


ODD_ENTRIES = [
    ModelEntry("m_latest", "/models/m_latest"),
    ModelEntry("m_latest3", "gs://bucket/m 3", latest=3),
    ModelEntry("quote\"back\\slash'tab\tnew\nline", "/é/ü", versions=[0, 7, 2**40]),
    ModelEntry("m_all", "relative/m_all", all_versions=True, labels={"b": 2, "a": 1, "Z_9": 0}),
    ModelEntry("m_other", "/x", model_platform="onnx"),
]


def _protobuf(entries: list[ModelEntry]) -> ModelServerConfig:
    config = ModelServerConfig()
    for entry in entries:
        model = config.model_config_list.config.add(
            name=entry.name, base_path=entry.base_path, model_platform=entry.model_platform
        )
        policy = model.model_version_policy
        if entry.versions is not None:
            policy.specific.versions.extend(entry.versions)
        elif entry.all_versions:
            policy.all.SetInParent()
        elif entry.latest is not None:
            policy.latest.num_versions = entry.latest
        for label, version in entry.labels.items():
            model.version_labels[label] = version
    return config


def test_writes_exactly_what_protobuf_prints() -> None:
    assert dumps_model_config(ODD_ENTRIES) == text_format.MessageToString(_protobuf(ODD_ENTRIES))
    # No model is an empty model_config_list, which TF Serving can move to and from; an unset
    # config ("") it accepts only before the first list.
    empty = ModelServerConfig()
    empty.model_config_list.SetInParent()
    assert dumps_model_config([]) == text_format.MessageToString(empty) == "model_config_list {\n}\n"


def test_reads_what_protobuf_prints_in_every_style() -> None:
    config = _protobuf(ODD_ENTRIES)
    for text in (
        text_format.MessageToString(config),
        text_format.MessageToString(config, as_one_line=True),
        text_format.MessageToString(config, as_utf8=False),
        text_format.MessageToString(config, use_short_repeated_primitives=True),
    ):
        assert loads_model_config(text) == ODD_ENTRIES, text


@pytest.mark.parametrize(
    "text",
    [
        # The text format's other spellings: angle brackets, list values, separators, comments,
        # concatenated strings, hex and octal numbers, deprecated and logging fields.
        """
        # the models
        model_config_list: <
          config: [{ name: "a" 'b', base_path: "/x\\303\\251"; model_type: TENSORFLOW,
                     model_version_policy { specific { versions: [1, 0x2, 010] } }
                     version_labels { key: "x" value: 3 } version_labels { key: "x" value: 4 }
                     logging_config { sampling_config { sampling_rate: 0.5 } } }]
        >
        """,
        'model_config_list { config { name: "n" base_path: "/n" model_version_policy { latest { } } } }',
        'model_config_list { config { name: "n" base_path: "/n" model_version_policy { all { } } } }',
    ],
)
def test_reads_what_protobuf_reads(text: str) -> None:
    reference = text_format.Parse(text, ModelServerConfig())
    expected = loads_model_config(text_format.MessageToString(reference))
    assert loads_model_config(text) == expected
    assert expected  # the reference itself went through the printer, which the tests above pin


@pytest.mark.parametrize(
    "text",
    [
        "model_config_list { config { name: 'm' nope: 1 } }",
        "model_config_list { config { name: 'm' name: 'n' } }",
        "model_config_list { config { name: 'm' model_version_policy { all { } latest { } } } }",
        "model_config_list { config { name: 'm' model_version_policy { latest { num_versions: -1 } } } }",
        "model_config_list { config { name: 'm' model_version_policy { latest { num_versions: 1.5 } } } }",
        "model_config_list { config { name: m } }",
        "model_config_list { config { name: 'm' }",
        "model_config_list { config { name 'm' } }",
        "model_config_list { } custom_model_config { }",
        "model_config_list { config { version_labels { key: 'a' value: 'b' } } }",
    ],
)
def test_refuses_what_protobuf_refuses(text: str) -> None:
    with pytest.raises(text_format.ParseError):
        text_format.Parse(text, ModelServerConfig())
    with pytest.raises(ModelConfigError, match="not a valid model server config"):
        loads_model_config(text)
