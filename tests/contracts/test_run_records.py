"""The run folder's records: a folder written before they were typed reads, and writes back byte for byte;
records round-trip; a bad record is one line naming the file and the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from contracts.run_layout import RecordError, RunLayout, read_record, write_record
from contracts.run_records import DatasetSummary, MemberRecord, Report, TrialRecord
from tests.contracts.samples import RUN_BEFORE as BEFORE

RECORDS: list[tuple[str, type[MemberRecord | DatasetSummary | Report]]] = [
    ("members/m0/member.json", MemberRecord),
    ("members/m1/member.json", MemberRecord),
    ("dataset.json", DatasetSummary),
    ("report.json", Report),
]


@pytest.mark.parametrize(("name", "kind"), RECORDS)
def test_a_folder_written_before_the_records_reads_and_writes_back_byte_for_byte(
    tmp_path: Path, name: str, kind: type[MemberRecord | DatasetSummary | Report]
) -> None:
    record = read_record(BEFORE / name, kind)
    write_record(tmp_path / "again.json", record)
    assert (tmp_path / "again.json").read_text() == (BEFORE / name).read_text()


def test_the_old_folder_reads_as_typed_records() -> None:
    layout = RunLayout(BEFORE)
    member = read_record(layout.member(1).record, MemberRecord)
    assert (member.index, member.model_name, member.version, member.fold) == (1, "digits-m1", 1, 1)
    assert member.trial is None
    assert member.rows.fit + member.rows.out_of_fold == 1527
    assert member.metrics["test_nll"] > 0
    dataset = read_record(layout.dataset, DatasetSummary)
    assert dataset.rows.total == 1797
    assert dataset.inputs[0].kind == "numeric"
    assert dataset.split.method == "cross_fit"
    report = read_record(layout.report, Report)
    assert report.weights.served == "uniform"
    assert report.ensemble_learned is None
    assert report.outputs == [("probabilities", "target", "probabilities")]
    entry = report.member("digits-m0")
    assert entry is not None
    assert entry.kept
    assert entry.weight == pytest.approx(0.5)
    assert report.member("digits-m9") is None


def test_records_round_trip_with_their_optional_parts(tmp_path: Path) -> None:
    member = read_record(BEFORE / "members/m0/member.json", MemberRecord)
    member.trial = TrialRecord(number=3, pruned_at_epoch=None)
    member.best_val_loss = None
    report = read_record(BEFORE / "report.json", Report)
    report.ensemble_learned = {"test_nll": 0.25}
    dataset = read_record(BEFORE / "dataset.json", DatasetSummary)
    for record in (member, report, dataset):
        path = tmp_path / "record.json"
        write_record(path, record)
        again = read_record(path, type(record))
        assert again == record
        assert again.model_fields_set == record.model_fields_set
    written = json.loads((tmp_path / "record.json").read_text())
    assert "ensemble_learned" not in json.loads((BEFORE / "report.json").read_text())
    assert written == json.loads((BEFORE / "dataset.json").read_text())


def test_a_field_left_out_by_its_writer_stays_out_of_the_file(tmp_path: Path) -> None:
    member = read_record(BEFORE / "members/m0/member.json", MemberRecord)
    write_record(tmp_path / "member.json", member)
    assert "trial" not in json.loads((tmp_path / "member.json").read_text())
    member.trial = TrialRecord(number=0, pruned_at_epoch=4)
    write_record(tmp_path / "member.json", member)
    assert json.loads((tmp_path / "member.json").read_text())["trial"] == {"number": 0, "pruned_at_epoch": 4}


def _broken_member(tmp_path: Path, **changes: object) -> Path:
    data = json.loads((BEFORE / "members/m0/member.json").read_text())
    data.update(changes)
    path = tmp_path / "members" / "m0" / "member.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"version": "one"}, "version", "valid integer"),
        ({"metrics": {"test_nll": "low"}}, "metrics.test_nll", "valid number"),
        ({"rows": {"fit": 10}}, "rows.early_stopping", "Field required"),
        ({"trial": {"number": 1, "pruned_at_epoch": "soon"}}, "trial.pruned_at_epoch", "valid integer"),
        ({"weight": 0.5}, "weight", "Extra inputs are not permitted"),
    ],
)
def test_an_invalid_member_record_is_one_line_naming_the_file_and_the_field(
    tmp_path: Path, changes: dict[str, object], field: str, message: str
) -> None:
    path = _broken_member(tmp_path, **changes)
    with pytest.raises(RecordError) as caught:
        read_record(path, MemberRecord)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: {field}: ")
    assert message in text


def test_a_missing_or_unreadable_record_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match=r"member\.json is missing$"):
        read_record(tmp_path / "member.json", MemberRecord)
    (tmp_path / "member.json").write_text("{not json")
    with pytest.raises(RecordError, match=r"member\.json is not valid JSON: ") as caught:
        read_record(tmp_path / "member.json", MemberRecord)
    assert "\n" not in str(caught.value)
    (tmp_path / "report.json").write_text("[]")
    with pytest.raises(RecordError, match=r"report\.json: Report: "):
        read_record(tmp_path / "report.json", Report)


def test_the_layout_names_every_file_of_a_run(tmp_path: Path) -> None:
    shutil.copytree(BEFORE, tmp_path / "run")
    layout = RunLayout(tmp_path / "run")
    assert layout.dataset.is_file()
    assert layout.report.is_file()
    assert layout.manifest.is_file()
    assert [folder.record.is_file() for folder in layout.member_folders()] == [True, True]
    member = layout.member(1)
    assert member.root == tmp_path / "run" / "members" / "m1"
    assert [p.name for p in member.artifacts()] == [
        "member.json",
        "history.csv",
        "checkpoint.keras",
        "predictions.npz",
        "tensorboard",
    ]
    assert layout.saved_model("digits-m1", 2) == tmp_path / "run" / "models" / "digits-m1" / "2"
    assert layout.models_config == tmp_path / "run" / "models" / "models.config"
    assert layout.config.name == "config.yaml"
    assert layout.plots.name == "plots"
