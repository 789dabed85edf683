"""The ensemble manifest: the one document that says *what* to serve.

Training writes it next to the exported models (``<out>/ensemble.json``), the registry versions it,
and the gateway serves from it. It never says where backends live: that is deployment
configuration. Pure pydantic: no mlflow, no TensorFlow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts.files import atomic_write_text

MANIFEST_SCHEMA_VERSION = 1

DType = Literal["float32", "float64", "int32", "int64", "string", "bool"]
OutputKind = Literal["probabilities", "multilabel", "predictions"]
CombineMethod = Literal["mean", "weighted_mean"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One named input or output tensor, as the members' ``serving_default`` signature has it."""

    name: str = Field(description="Signature key, e.g. 'pixels' or 'bill_length_mm'.")
    dtype: DType = Field(description="Element type on the wire.")
    shape: list[int] = Field(
        description=(
            "Full shape with the batch dimension first as -1: [-1, 64] for a group of 64 columns, "
            "[-1] for one value per instance ([-1, 1] in manifests written before that)."
        )
    )

    @field_validator("shape")
    @classmethod
    def _batch_first(cls, shape: list[int]) -> list[int]:
        if not shape or shape[0] != -1:
            raise ValueError("shape must start with the batch dimension -1")
        if any(d < -1 or d == 0 for d in shape[1:]):
            raise ValueError("inner dimensions must be positive or -1")
        return shape


class OutputSpec(TensorSpec):
    """A member output. Every member has the same outputs; the ensemble combines each on its own."""

    kind: OutputKind = Field(
        description="'probabilities' for a classifier (one distribution per row), 'multilabel' for "
        "independent 0/1 labels (one probability per label), 'predictions' for a regressor."
    )
    target: str = Field(description="The target column (or multi-label set) this output predicts.")
    classes: list[str] | None = Field(
        default=None,
        description="Class labels (classifiers) or label columns (multilabel) in output order.",
    )


class MemberRef(_Strict):
    """A member: a registered model version and its weight in the combination."""

    name: str = Field(description="Registered model name, also the TF Serving model name.")
    version: int = Field(ge=1, description="Model version: the TF Serving version folder.")
    weight: float = Field(ge=0.0, description="Weight in the weighted mean; weights sum to 1.")


class Combiner(_Strict):
    """How member answers become one answer, and how many members must answer."""

    method: CombineMethod = "weighted_mean"
    min_members: int = Field(default=1, ge=1, description="Quorum: members that must answer.")
    min_weight: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Quorum: total weight that must answer."
    )


class Provenance(_Strict):
    """Where the ensemble came from, so any answer can be traced to its runs and data."""

    dataset: str = Field(default="", description="Where the data came from, e.g. 'sklearn:digits'.")
    dataset_fingerprint: str = Field(default="", description="sha256 of the whole raw table.")
    test_fingerprint: str = Field(
        default="", description="sha256 of the held-out rows: equal means 'same test data'."
    )
    targets: list[str] = Field(default_factory=list)
    seed: int = 0
    parent_run_id: str | None = None
    member_run_ids: list[str] = Field(default_factory=list)
    created_at: str = ""


class Manifest(_Strict):
    """The ensemble manifest (``ensemble.json``)."""

    schema_version: int = MANIFEST_SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Ensemble name.")
    version: int | None = Field(
        default=None, description="Registry version of this manifest; None before registration."
    )
    signature_name: str = "serving_default"
    members: list[MemberRef] = Field(min_length=1)
    combiner: Combiner = Field(default_factory=Combiner)
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[OutputSpec] = Field(min_length=1)
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="Held-out metrics of the weighted ensemble, e.g. {'test_nll': 0.08}.",
    )
    provenance: Provenance = Field(default_factory=Provenance)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError("member model names must be unique")
        total = sum(m.weight for m in self.members)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"member weights must sum to 1, got {total:.6f}")
        if self.combiner.min_members > len(self.members):
            raise ValueError("combiner.min_members exceeds the number of members")
        for specs in (self.inputs, self.outputs):
            keys = [s.name for s in specs]
            if len(set(keys)) != len(keys):
                raise ValueError(f"duplicate tensor names: {keys}")
        return self

    @property
    def weights(self) -> list[float]:
        return [m.weight for m in self.members]

    @property
    def kinds(self) -> dict[str, str]:
        """Each output's kind, by output name (the combine needs it for the disagreement)."""
        return {spec.name: spec.kind for spec in self.outputs}

    def output(self, name: str) -> OutputSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        return cls.model_validate_json(text)

    def save(self, path: Path) -> None:
        """Write atomically: a reader never sees half a manifest."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> Manifest:
        return cls.from_json(path.read_bytes())
