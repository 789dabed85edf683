"""TF Serving's REST API as a thin FastAPI adapter onto a ``serving.core.ServingCore``.

``create_tfs_router(core)`` serves ``/v1/models/...`` (predict, status, metadata) and
``install_error_handlers(app)`` turns every error into TF Serving's ``{"error": "..."}`` body
with its HTTP status. Both the gateway and the local backend mount these.
"""

from __future__ import annotations

from serving.rest.handlers import install_error_handlers
from serving.rest.routes import create_tfs_router, parse_model_path

__all__ = ["create_tfs_router", "install_error_handlers", "parse_model_path"]
