"""The model registry: MLflow tracking, registered ensembles, aliases, promotion and repository sync.

The only package that imports mlflow, and only inside functions. Light names re-exported here.
"""

from __future__ import annotations

from registry.defaults import DEFAULT_TRACKING_URI

__all__ = ["DEFAULT_TRACKING_URI"]
