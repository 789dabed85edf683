"""The project's TF Serving wire types: one import point for the generated messages and gRPC stubs.

The ``.proto`` files under this package are the project's own, wire-compatible with TensorFlow's
and TF Serving's (same packages, message names and field numbers). Their generated code
(``tools/gen_protos.py``) registers into a private descriptor pool, so these classes never clash
with TensorFlow or ``tensorflow-serving-api`` imported in the same process; messages cross
between the two only as bytes (``SerializeToString`` / ``FromString``).
"""

from __future__ import annotations

from serving.protos.tensorflow.core.framework.tensor_pb2 import TensorProto
from serving.protos.tensorflow.core.framework.tensor_shape_pb2 import TensorShapeProto
from serving.protos.tensorflow.core.framework.types_pb2 import DataType
from serving.protos.tensorflow.core.protobuf.error_codes_pb2 import Code as ErrorCode
from serving.protos.tensorflow.core.protobuf.meta_graph_pb2 import SignatureDef
from serving.protos.tensorflow.core.protobuf.meta_graph_pb2 import TensorInfo as TensorInfoProto
from serving.protos.tensorflow_serving.apis.get_model_metadata_pb2 import (
    GetModelMetadataRequest,
    GetModelMetadataResponse,
    SignatureDefMap,
)
from serving.protos.tensorflow_serving.apis.get_model_status_pb2 import (
    GetModelStatusRequest,
    GetModelStatusResponse,
    ModelVersionStatus,
)
from serving.protos.tensorflow_serving.apis.model_management_pb2 import (
    ReloadConfigRequest,
    ReloadConfigResponse,
)
from serving.protos.tensorflow_serving.apis.model_pb2 import ModelSpec
from serving.protos.tensorflow_serving.apis.model_service_pb2_grpc import (
    ModelServiceServicer,
    ModelServiceStub,
    add_ModelServiceServicer_to_server,
)
from serving.protos.tensorflow_serving.apis.predict_pb2 import PredictRequest, PredictResponse
from serving.protos.tensorflow_serving.apis.prediction_service_pb2_grpc import (
    PredictionServiceServicer,
    PredictionServiceStub,
    add_PredictionServiceServicer_to_server,
)
from serving.protos.tensorflow_serving.apis.status_pb2 import StatusProto
from serving.protos.tensorflow_serving.config.file_system_storage_path_source_pb2 import (
    FileSystemStoragePathSourceConfig,
)
from serving.protos.tensorflow_serving.config.model_server_config_pb2 import (
    ModelConfig,
    ModelConfigList,
    ModelServerConfig,
)

ServableVersionPolicy = FileSystemStoragePathSourceConfig.ServableVersionPolicy

__all__ = [
    "DataType",
    "ErrorCode",
    "FileSystemStoragePathSourceConfig",
    "GetModelMetadataRequest",
    "GetModelMetadataResponse",
    "GetModelStatusRequest",
    "GetModelStatusResponse",
    "ModelConfig",
    "ModelConfigList",
    "ModelServerConfig",
    "ModelServiceServicer",
    "ModelServiceStub",
    "ModelSpec",
    "ModelVersionStatus",
    "PredictRequest",
    "PredictResponse",
    "PredictionServiceServicer",
    "PredictionServiceStub",
    "ReloadConfigRequest",
    "ReloadConfigResponse",
    "ServableVersionPolicy",
    "SignatureDef",
    "SignatureDefMap",
    "StatusProto",
    "TensorInfoProto",
    "TensorProto",
    "TensorShapeProto",
    "add_ModelServiceServicer_to_server",
    "add_PredictionServiceServicer_to_server",
]
