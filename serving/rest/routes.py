"""TF Serving's REST routes: ``/v1/models/NAME[/versions/N|/labels/L]`` with ``:predict`` and ``/metadata``.

URLs are matched case-insensitively, as TF Serving does. The handlers only convert between JSON
and numpy (``serving.tensors``) and delegate to the core. Two courtesies to KServe v1 clients cost
TF Serving clients nothing: ``GET /`` answers liveness and model status also carries ``name`` and
``ready``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from fastapi import APIRouter, Request, Response
from google.protobuf import json_format
from starlette.convertors import Convertor, register_url_convertor

from serving.core import ModelMetadata, ModelRef, ServingCore, TensorInfo, VersionStatus
from serving.errors import InvalidArgument, Unimplemented
from serving.rest.handlers import JSON
from serving.tensors import format_predict_response, parse_predict_request

# NAME, then an optional /versions/N or /labels/L, then an optional :verb or /metadata. ASCII
# digits only, as TF Serving's RE2 pattern: int() would read "/versions/\u0661" as version 1.
_MODEL_PATH = re.compile(
    r"(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>[^/:]+)|/(?P<metadata>metadata))?",
    re.IGNORECASE | re.ASCII,
)


class _V1ModelsPrefix(Convertor[str]):
    """``v1/models`` in any letter case."""

    regex: ClassVar[str] = "(?i:v1/models)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


def parse_model_path(method: str, path: str, rest: str) -> tuple[ModelRef, str | None, bool]:
    """The model reference, the ``:verb`` and whether ``/metadata`` was asked, from the part after
    ``/v1/models/``; InvalidArgument for anything TF Serving would not route."""
    match = _MODEL_PATH.fullmatch(rest)
    if match is None:
        raise InvalidArgument(f"Malformed request: {method} {path}")
    version = match["version"]
    ref = ModelRef(
        name=match["name"], version=int(version) if version is not None else None, label=match["label"]
    )
    verb = match["verb"].lower() if match["verb"] else None
    return ref, verb, match["metadata"] is not None


def _status_json(name: str, statuses: list[VersionStatus]) -> dict[str, Any]:
    # "name" and "ready" are KServe v1's model status, which TF Serving clients do not read: with
    # them the KServe SDK's is_model_ready works against /v1/models/NAME too.
    return {
        "name": name,
        "ready": any(status.state == "AVAILABLE" for status in statuses),
        "model_version_status": [
            {
                "version": str(status.version),
                "state": status.state,
                "status": {"error_code": status.error_code, "error_message": status.error_message},
            }
            for status in statuses
        ],
    }


def _metadata_json(answer: ModelMetadata) -> dict[str, Any]:
    signature_def = json_format.MessageToDict(
        answer.signature_def,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return {
        "model_spec": {"name": answer.name, "signature_name": "", "version": str(answer.version)},
        "metadata": {"signature_def": signature_def},
    }


def create_tfs_router(
    core: ServingCore, *, timeout_s: float | None = None, max_decoded_bytes: int | None = None
) -> APIRouter:
    """The ``/v1/models/...`` routes on ``core``; ``timeout_s`` bounds each predict (TF Serving's
    ``--rest_api_timeout_in_ms``), ``max_decoded_bytes`` what one request's inputs may decode to;
    None for no bound."""
    import orjson

    register_url_convertor("tfs_v1_models", _V1ModelsPrefix())
    router = APIRouter()

    def _json(doc: Any) -> Response:
        return Response(orjson.dumps(doc), media_type=JSON)

    async def post(request: Request, rest: str) -> Response:
        ref, verb, metadata = parse_model_path("POST", request.url.path, rest)
        if metadata or verb is None:
            raise InvalidArgument(f"Malformed request: POST {request.url.path}")
        if verb in ("classify", "regress"):
            raise Unimplemented(f"The {verb} API is not served here, use predict")
        if verb != "predict":
            raise InvalidArgument(f"Malformed request: POST {request.url.path}")
        body = await request.body()

        def signature(signature_name: str) -> Mapping[str, TensorInfo]:
            return core.input_signature(replace(ref, signature_name=signature_name))

        parsed = parse_predict_request(body, signature, max_decoded_bytes)
        headers = {key.lower(): value for key, value in request.headers.items()}
        result = await core.predict(
            replace(ref, signature_name=parsed.signature_name),
            parsed.inputs,
            timeout_s=timeout_s,
            request_headers=headers,
        )
        content = format_predict_response(result.outputs, columnar=parsed.columnar)
        return Response(content, media_type=JSON, headers=result.headers)

    async def get(request: Request, rest: str) -> Response:
        ref, verb, metadata = parse_model_path("GET", request.url.path, rest)
        if verb is not None:
            raise InvalidArgument(f"Malformed request: GET {request.url.path}")
        if not metadata:
            return _json(_status_json(ref.name, await core.status(ref)))
        return _json(_metadata_json(await core.metadata(ref)))

    async def no_model(request: Request) -> Response:
        # TF Serving routes nothing here: a malformed request, not a missing page.
        raise InvalidArgument(f"Malformed request: {request.method} {request.url.path}")

    async def live() -> Response:
        # KServe v1's liveness (the KServe SDK's is_server_live); TF Serving routes nothing here.
        return _json({"status": "alive"})

    path = "/{prefix:tfs_v1_models}/{rest:path}"
    router.add_api_route(path, post, methods=["POST"], include_in_schema=False)
    router.add_api_route(path, get, methods=["GET"], include_in_schema=False)
    router.add_api_route("/v1/models", no_model, methods=["GET", "POST"], include_in_schema=False)
    router.add_api_route("/", live, methods=["GET"], include_in_schema=False)
    return router
