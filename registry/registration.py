"""Registering a logged training: member SavedModels and the manifest become model versions.

Each member SavedModel becomes a version of the registered model ``<ensemble>-m<i>`` whose source
is the member run's logged ``saved_model/`` artifact. The manifest, rewritten so its members name
those registered versions and its ``version`` is its own registered version, becomes a version of
the registered model ``<ensemble>``, its source the parent run's ``manifest/`` artifact folder.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from contracts import tags as tag
from contracts.manifest import Manifest
from registry.aliases import move_alias
from registry.client import translated
from registry.errors import RegistryError
from registry.logged import LoggedTraining
from registry.outdir import TrainingOutput
from registry.resolve import MANIFEST_ARTIFACT_DIR, MANIFEST_FILE

if TYPE_CHECKING:
    from mlflow import MlflowClient

SAVED_MODEL_ARTIFACT = "saved_model"
"""Artifact folder of a member run holding its SavedModel; the member version's source."""


def ensure_registered_model(client: MlflowClient, name: str, kind: str, description: str) -> None:
    """Create registered model ``name`` unless it exists (another run may have just created it)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, tags={tag.KIND: kind}, description=description)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _member_version(
    client: MlflowClient, ensemble: str, name: str, run_id: str, metrics: dict[str, float]
) -> int:
    ensure_registered_model(client, name, "member", f"A member of the ensemble {ensemble!r}.")
    run = client.get_run(run_id)
    version_tags = {
        tag.ENSEMBLE: ensemble,
        **{f"{tag.METRIC_PREFIX}{key}": f"{value:.6g}" for key, value in metrics.items()},
    }
    version = client.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/{SAVED_MODEL_ARTIFACT}",
        run_id=run_id,
        tags=version_tags,
        await_creation_for=0,  # file sources are READY at once; waiting only adds a request and a log line
    )
    return int(version.version)


def register_training(
    client: MlflowClient, output: TrainingOutput, logged: LoggedTraining, *, alias: str | None
) -> None:
    """Register members and manifest of a logged training; fill ``logged`` with the versions."""
    manifest = output.manifest
    with translated(f"registering {manifest.name!r}"):
        for member, run_id in zip(output.members, logged.member_run_ids, strict=True):
            logged.member_versions[member.model_name] = _member_version(
                client, manifest.name, member.model_name, run_id, member.metrics
            )
        ensure_registered_model(
            client, manifest.name, "ensemble", "An ensemble manifest: members, weights, combiner, metrics."
        )
        parent = client.get_run(logged.parent_run_id)
        source = f"{parent.info.artifact_uri}/{MANIFEST_ARTIFACT_DIR}"
        version_tags = {
            **{f"{tag.MEMBER_VERSION_PREFIX}{name}": str(v) for name, v in logged.member_versions.items()},
            **{f"{tag.METRIC_PREFIX}{key}": f"{value:.6g}" for key, value in manifest.metrics.items()},
            tag.DATASET_FINGERPRINT: manifest.provenance.dataset_fingerprint,
            tag.DATASET_TEST_FINGERPRINT: manifest.provenance.test_fingerprint,
        }
        created = client.create_model_version(
            manifest.name, source=source, run_id=logged.parent_run_id, tags=version_tags, await_creation_for=0
        )
        version = int(created.version)
        # Validated again: the rewritten manifest must still satisfy every manifest rule.
        registered = Manifest.model_validate(
            manifest.model_dump()
            | {
                "version": version,
                "members": [
                    {"name": ref.name, "version": logged.member_versions[ref.name], "weight": ref.weight}
                    for ref in manifest.members
                ],
                "provenance": manifest.provenance.model_dump()
                | {"parent_run_id": logged.parent_run_id, "member_run_ids": logged.member_run_ids},
            }
        )
        try:
            with tempfile.TemporaryDirectory(prefix="manifest-") as tmp:
                registered.save(Path(tmp) / MANIFEST_FILE)
                client.log_artifacts(logged.parent_run_id, tmp, MANIFEST_ARTIFACT_DIR)
        except Exception as exc:
            # A version whose manifest never arrived must not stay behind for an alias to find.
            client.delete_model_version(manifest.name, str(version))
            raise RegistryError(f"registering {manifest.name!r}: could not log the manifest ({exc})") from exc
    logged.ensemble_version = version
    if alias:
        move_alias(
            client,
            registered,
            alias,
            action="register",
            why="registered by training",
        )
        logged.alias = alias
