"""Test helpers for the gateway: manifests and member answers computed without TensorFlow."""

from __future__ import annotations

import numpy as np

from registry.manifest import Combiner, Manifest, MemberRef, OutputSpec, TensorSpec

N_FEATURES = 4
N_CLASSES = 3


def make_manifest(
    weights: tuple[float, ...] = (0.5, 0.3, 0.2),
    *,
    name: str = "toy",
    version: int | None = 1,
    min_members: int = 2,
    min_weight: float = 0.0,
    method: str = "weighted_mean",
) -> Manifest:
    return Manifest(
        name=name,
        version=version,
        members=[MemberRef(name=f"{name}-m{i}", version=1, weight=w) for i, w in enumerate(weights)],
        combiner=Combiner(method=method, min_members=min_members, min_weight=min_weight),  # type: ignore[arg-type]
        inputs=[TensorSpec(name="x", dtype="float32", shape=[-1, N_FEATURES])],
        outputs=[
            OutputSpec(
                name="probabilities",
                dtype="float32",
                shape=[-1, N_CLASSES],
                kind="probabilities",
                target="y",
                classes=[str(c) for c in range(N_CLASSES)],
            )
        ],
    )


def member_matrix(member: str) -> np.ndarray:
    """A fixed, member-specific linear model: the 'weights' of a fake member."""
    seed = sum(member.encode()) * 7919
    return np.random.default_rng(seed).normal(size=(N_FEATURES, N_CLASSES)).astype(np.float32)


def member_answer(member: str, x: np.ndarray) -> np.ndarray:
    """What a fake member returns for ``x``: a softmax, float32, like a Keras classifier."""
    logits = x.astype(np.float32) @ member_matrix(member)
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float32)
