"""Logging a training output directory to MLflow, and registering it when asked.

One parent run for the ensemble, one nested run per member, everything read from the directory
that training wrote (see :mod:`registry.outdir`). Registration (see :mod:`registry.registration`)
turns the member SavedModels and the manifest into registered model versions.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contracts import tags as tag
from contracts.run_records import DatasetSummary, TrialRecord
from registry.aliases import check_alias
from registry.client import connect, ensure_experiment, translated
from registry.defaults import is_local_store
from registry.defaults import tracking_uri as default_tracking_uri
from registry.errors import InvalidArgument
from registry.logged import LoggedTraining
from registry.outdir import MemberOutput, TrainingOutput, flatten, numeric_items, read_training_output
from registry.registration import SAVED_MODEL_ARTIFACT, register_training

if TYPE_CHECKING:
    from mlflow import MlflowClient


_PARAM_VALUE_LIMIT = 6000
_BATCH = 100


def _log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(key, value[:_PARAM_VALUE_LIMIT]) for key, value in params.items()]
    for start in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[start : start + _BATCH])


def _log_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(key, value) for key, value in tags.items()]
    for start in range(0, len(items), _BATCH):
        client.log_batch(run_id, tags=items[start : start + _BATCH])


def _log_metrics(client: MlflowClient, run_id: str, series: Sequence[tuple[int, dict[str, float]]]) -> None:
    from mlflow.entities import Metric

    now_ms = int(time.time() * 1000)
    items = [
        Metric(_metric_key(key), value, now_ms, step)
        for step, values in series
        for key, value in values.items()
    ]
    for start in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[start : start + 1000])


def _metric_key(name: str) -> str:
    """MLflow accepts letters, digits, '_', '-', '.', ' ', '/' and ':' in metric names."""
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", name)


def _log_if_exists(client: MlflowClient, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    if path.is_dir():
        client.log_artifacts(run_id, str(path), artifact_path or path.name)
    elif path.is_file():
        client.log_artifact(run_id, str(path), artifact_path)


def _log_dataset_input(client: MlflowClient, run_id: str, dataset: DatasetSummary | None) -> None:
    """The dataset as an MLflow dataset input: name, source and fingerprint, no rows."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    if dataset is None or not dataset.fingerprint:
        return
    entity = Dataset(
        name=dataset.source,
        digest=dataset.fingerprint[:36],
        source_type="external",
        source=json.dumps({"uri": dataset.source}),
        profile=json.dumps(
            {"rows": dataset.rows.model_dump(), "targets": dataset.targets, "tasks": dataset.tasks}
        ),
    )
    client.log_inputs(run_id, [DatasetInput(entity, [InputTag("mlflow.data.context", "training")])])


def _dataset_tags(dataset: DatasetSummary | None) -> dict[str, str]:
    """The data's source and fingerprints; empty values when the folder has no dataset.json."""
    return {
        tag.DATASET_SOURCE: dataset.source if dataset is not None else "",
        tag.DATASET_FINGERPRINT: dataset.fingerprint if dataset is not None else "",
        tag.DATASET_TEST_FINGERPRINT: dataset.test_fingerprint if dataset is not None else "",
    }


def _trial_tags(trial: TrialRecord | None, served: bool) -> dict[str, str]:
    """A search trial's number and fate; nothing for a member of a run without a search."""
    if trial is None:
        return {}
    fate = "pruned" if trial.pruned_at_epoch is not None else "kept" if served else "not kept"
    return {tag.TRIAL_NUMBER: str(trial.number), tag.TRIAL_FATE: fate}


def _log_member(
    client: MlflowClient, experiment_id: str, parent_run_id: str, output: TrainingOutput, member: MemberOutput
) -> str:
    served, weight, reason = output.status(member)
    tags = {
        tag.PARENT_RUN: parent_run_id,
        tag.ENSEMBLE: output.manifest.name,
        tag.MEMBER: member.model_name,
        tag.SERVED: "true" if served else "false",
        tag.WEIGHT: f"{weight:.6f}",
        **_dataset_tags(output.dataset),
    }
    if reason:
        tags[tag.DROPPED_REASON] = reason
    record = member.record
    tags.update(_trial_tags(record.trial, served))
    run = client.create_run(experiment_id, run_name=member.model_name, tags=tags)
    run_id = str(run.info.run_id)
    params = flatten(record.hyperparameters)
    params.update(
        {
            "member.index": str(record.index),
            "member.seed": str(record.seed),
            "member.fold": str(record.fold),
            "member.epochs_trained": str(record.epochs_trained),
            tag.DATASET_FINGERPRINT: _dataset_tags(output.dataset)[tag.DATASET_FINGERPRINT],
        }
    )
    _log_params(client, run_id, params)
    final = member.metrics
    final["train_seconds"] = record.train_seconds
    final["ensemble_weight"] = weight
    _log_metrics(client, run_id, [*member.history(), (0, final)])
    client.log_artifacts(run_id, str(member.saved_model), SAVED_MODEL_ARTIFACT)
    tensorboard = member.folder.tensorboard
    for path in member.folder.artifacts():
        _log_if_exists(client, run_id, path, tensorboard.name if path == tensorboard else None)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def record_training(
    out_dir: Path, tracking_uri: str | None, *, register: bool, alias: str | None
) -> LoggedTraining:
    """Log ``out_dir`` (parent and member runs) and optionally register it; return what was created."""
    if alias and not register:
        raise InvalidArgument("an alias needs registration (--register)")
    if alias:
        check_alias(alias)
    output = read_training_output(out_dir)
    uri = default_tracking_uri(tracking_uri)
    client = connect(uri, create=True)
    experiment_id = ensure_experiment(client, output.manifest.name)
    with translated(f"logging {out_dir}"):
        parent = client.create_run(
            experiment_id,
            run_name=output.manifest.name,
            tags={
                tag.ENSEMBLE: output.manifest.name,
                tag.KIND: "ensemble",
                **_dataset_tags(output.dataset),
            },
        )
        parent_id = str(parent.info.run_id)
        try:
            # Every trained member gets a run, served or not: a search's trials and pruned members too.
            run_ids = {
                member.model_name: _log_member(client, experiment_id, parent_id, output, member)
                for member in output.trained or output.members
            }
            _log_parent(client, parent_id, output)
            served = [run_ids[member.model_name] for member in output.members]
            logged = LoggedTraining(uri, experiment_id, parent_id, served)
            logged.dropped_run_ids = [run_id for run_id in run_ids.values() if run_id not in served]
            if register:
                register_training(client, output, logged, alias=alias)
        except BaseException:
            client.set_terminated(parent_id, "FAILED")
            raise
        client.set_terminated(parent_id, "FINISHED")
    return logged


def _log_parent(client: MlflowClient, run_id: str, output: TrainingOutput) -> None:
    manifest = output.manifest
    params = {
        "ensemble.members": str(len(manifest.members)),
        "ensemble.combiner": manifest.combiner.method,
        **_dataset_tags(output.dataset),  # as parameters too, to compare runs by their data
    }
    params.update({f"weight.{member.name}": f"{member.weight:.6f}" for member in manifest.members})
    params.update({f"weight.{m.model_name}": "0.000000" for m in output.trained if not output.status(m)[0]})
    layout = output.layout
    if layout.config.is_file():
        import yaml

        config = yaml.safe_load(layout.config.read_text()) or {}
        if isinstance(config, dict):
            params.update({f"config.{key}": value for key, value in flatten(config).items()})
    _log_params(client, run_id, params)
    run_tags = {
        f"{tag.DROPPED_PREFIX}{m.model_name}": output.status(m)[2]
        for m in output.trained
        if not output.status(m)[0]
    }
    report = output.report
    if report is not None and report.weights.note:
        run_tags[tag.WEIGHTS_NOTE] = report.weights.note
    _log_tags(client, run_id, run_tags)
    metrics = dict(manifest.metrics)
    if report is not None:
        metrics.update(_report_metrics(report.model_dump(exclude_unset=True)))
    _log_metrics(client, run_id, [(0, metrics)])
    _log_dataset_input(client, run_id, output.dataset)
    for path in (layout.config, layout.dataset, layout.report):
        _log_if_exists(client, run_id, path)
    _log_if_exists(client, run_id, layout.plots, "plots")
    # The training-time manifest; the registered one (member versions rewritten) goes to manifest/.
    _log_if_exists(client, run_id, layout.manifest, "training")


def _report_metrics(report: dict[str, Any], prefix: str = "report.") -> dict[str, float]:
    """Numeric leaves of report.json as ``report.<path>`` metrics (member vs ensemble comparison)."""
    out: dict[str, float] = {}
    for key, value in report.items():
        if isinstance(value, dict):
            out.update(_report_metrics(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            continue
        else:
            out.update({f"{prefix}{k}": v for k, v in numeric_items({key: value}).items()})
    return out


def ui_hint(uri: str) -> str:
    """How to open the MLflow UI for ``uri``.

    Names this interpreter rather than ``mlflow``: the ``mlflow`` script is on PATH only inside an
    activated virtual environment, while the interpreter's full path works from any shell.
    """
    if is_local_store(uri):
        python = shlex.quote(sys.executable)
        return f"{python} -m mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000)"
    return uri


def training_summary(logged: LoggedTraining) -> list[str]:
    """What a user reads after a run is logged: the parent run, the registered versions, the UI."""
    dropped = f", {len(logged.dropped_run_ids)} not served" if logged.dropped_run_ids else ""
    lines = [
        f"MLflow: parent run {logged.parent_run_id} "
        f"({len(logged.member_run_ids) + len(logged.dropped_run_ids)} member runs{dropped})"
    ]
    if logged.ensemble_version is not None:
        members = ", ".join(f"{name} v{version}" for name, version in logged.member_versions.items())
        lines.append(f"registered ensemble version {logged.ensemble_version} (members: {members})")
        if logged.alias:
            lines.append(f"alias {logged.alias} -> version {logged.ensemble_version}")
    lines.append(f"MLflow UI: {ui_hint(logged.tracking_uri)}")
    return lines
