"""The MLflow tag keys the registry writes and reads back: each spelled once, here.

Runs, registered models and model versions carry them; ``ensemble list``/``show``, the promotion
gates and the alias history read them, and users filter runs by them in MLflow's UI.
"""

from __future__ import annotations

PARENT_RUN = "mlflow.parentRunId"
"""MLflow's own: a member run's parent (the training run)."""

KIND = "ensemble.kind"
"""On a registered model: ``ensemble`` (manifest versions) or ``member`` (SavedModel versions)."""
ENSEMBLE = "ensemble.name"
"""The ensemble a run or member version belongs to."""
MEMBER = "ensemble.member"
"""On a member run: its registered model name."""
SERVED = "ensemble.served"
"""On a member run: ``true`` when the manifest serves it, ``false`` when it was dropped."""
WEIGHT = "ensemble.weight"
"""On a member run: its weight in the manifest (0 when dropped)."""
DROPPED_REASON = "ensemble.dropped_reason"
"""On a dropped member's run: why it is not served."""
TRIAL_FATE = "search.fate"
"""On a search trial's run: ``kept``, ``pruned``, ``not kept`` or ``failed``."""
TRIAL_NUMBER = "search.trial"
"""On a search trial's run: its trial number in the shared Optuna study."""
WEIGHTS_NOTE = "ensemble.weights"
"""On the training run: how the weights were chosen (the report's note)."""

DATASET_SOURCE = "dataset.source"
DATASET_FINGERPRINT = "dataset.fingerprint"
DATASET_TEST_FINGERPRINT = "dataset.test_fingerprint"
"""sha256 of the held-out rows: equal values mean the same test data, so metrics compare."""

METRIC_PREFIX = "metric."
"""``metric.<name>`` on a model version: a held-out metric."""
MEMBER_VERSION_PREFIX = "member."
"""``member.<model>`` on a manifest version: the member version it serves."""
DROPPED_PREFIX = "dropped."
"""``dropped.<model>`` on the training run: why that member is not served."""
GATE_PREFIX = "gate."
"""``gate.<alias>.offline`` / ``.online`` on a manifest version: a promotion gate's record (JSON)."""
ALIAS_MOVE_PREFIX = "alias_move."
"""``alias_move.<alias>.<seq>.<id>`` on a registered ensemble: one move of an alias (JSON)."""
