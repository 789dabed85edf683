"""The project's protos against the official TensorFlow / TF Serving modules: same wire format."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, EnumDescriptor

import serving.protos as ours
from serving.tensors import from_tensor_proto, to_tensor_proto

pytest.importorskip("tensorflow_serving.apis.predict_pb2")

# (our module, the official module, message or enum names to compare)
PAIRS = [
    ("tensorflow.core.framework.types_pb2", "tensorflow.core.framework.types_pb2", ["DataType"]),
    (
        "tensorflow.core.framework.tensor_shape_pb2",
        "tensorflow.core.framework.tensor_shape_pb2",
        ["TensorShapeProto"],
    ),
    (
        "tensorflow.core.framework.tensor_pb2",
        "tensorflow.core.framework.tensor_pb2",
        ["TensorProto", "VariantTensorDataProto"],
    ),
    (
        "tensorflow.core.framework.resource_handle_pb2",
        "tensorflow.core.framework.resource_handle_pb2",
        ["ResourceHandleProto"],
    ),
    (
        "tensorflow.core.protobuf.meta_graph_pb2",
        "tensorflow.core.protobuf.meta_graph_pb2",
        ["TensorInfo", "SignatureDef"],
    ),
    ("tensorflow_serving.apis.model_pb2", "tensorflow_serving.apis.model_pb2", ["ModelSpec"]),
    (
        "tensorflow_serving.apis.predict_pb2",
        "tensorflow_serving.apis.predict_pb2",
        ["PredictRequest", "PredictResponse"],
    ),
    (
        "tensorflow_serving.apis.get_model_metadata_pb2",
        "tensorflow_serving.apis.get_model_metadata_pb2",
        ["SignatureDefMap", "GetModelMetadataRequest", "GetModelMetadataResponse"],
    ),
    (
        "tensorflow_serving.apis.get_model_status_pb2",
        "tensorflow_serving.apis.get_model_status_pb2",
        ["GetModelStatusRequest", "ModelVersionStatus", "GetModelStatusResponse"],
    ),
    ("tensorflow_serving.apis.status_pb2", "tensorflow_serving.apis.status_pb2", ["StatusProto"]),
    (
        "tensorflow_serving.apis.model_management_pb2",
        "tensorflow_serving.apis.model_management_pb2",
        ["ReloadConfigRequest", "ReloadConfigResponse", "Metric"],
    ),
    (
        "tensorflow_serving.config.model_server_config_pb2",
        "tensorflow_serving.config.model_server_config_pb2",
        ["ModelServerConfig", "ModelConfigList", "ModelConfig", "ModelType"],
    ),
    (
        "tensorflow_serving.config.file_system_storage_path_source_pb2",
        "tensorflow_serving.config.file_system_storage_path_source_pb2",
        ["FileSystemStoragePathSourceConfig"],
    ),
]


def _compare_enum(mine: EnumDescriptor, theirs: EnumDescriptor) -> None:
    assert mine.full_name == theirs.full_name
    assert {v.name: v.number for v in mine.values} == {v.name: v.number for v in theirs.values}


def _compare_message(mine: Descriptor, theirs: Descriptor) -> None:
    """Every field we declare exists in theirs with the same number, type and cardinality."""
    assert mine.full_name == theirs.full_name
    for field in mine.fields:
        other = theirs.fields_by_number.get(field.number)
        assert other is not None, f"{mine.full_name}.{field.name} = {field.number} not in the official proto"
        assert (field.name, field.type, field.is_repeated) == (other.name, other.type, other.is_repeated), (
            f"{mine.full_name}.{field.name}"
        )
        if field.message_type is not None:
            assert other.message_type is not None
            assert field.message_type.full_name == other.message_type.full_name
            if field.message_type.GetOptions().map_entry or field.message_type.containing_type is mine:
                _compare_message(field.message_type, other.message_type)
        if field.enum_type is not None:
            assert other.enum_type is not None
            _compare_enum(field.enum_type, other.enum_type)
        if field.containing_oneof is not None:
            assert other.containing_oneof is not None
            assert field.containing_oneof.name == other.containing_oneof.name
    for nested in mine.nested_types:
        if not nested.GetOptions().map_entry:
            _compare_message(nested, theirs.nested_types_by_name[nested.name])
    for enum in mine.enum_types:
        _compare_enum(enum, theirs.enum_types_by_name[enum.name])


@pytest.mark.parametrize(("mine", "theirs", "names"), PAIRS, ids=[p[0] for p in PAIRS])
def test_descriptors_match_the_official_protos(mine: str, theirs: str, names: list[str]) -> None:
    our_file = importlib.import_module(f"serving.protos.{mine}").DESCRIPTOR
    their_file = importlib.import_module(theirs).DESCRIPTOR
    assert our_file.package == their_file.package
    for name in names:
        if name in their_file.enum_types_by_name:
            _compare_enum(our_file.enum_types_by_name[name], their_file.enum_types_by_name[name])
        else:
            _compare_message(our_file.message_types_by_name[name], their_file.message_types_by_name[name])


def test_services_declare_the_official_method_paths() -> None:
    from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2

    from serving.protos.tensorflow_serving.apis import model_service_pb2 as our_model_service
    from serving.protos.tensorflow_serving.apis import prediction_service_pb2 as our_prediction_service

    for our_module, their_module in (
        (our_prediction_service, prediction_service_pb2),
        (our_model_service, model_service_pb2),
    ):
        for service in our_module.DESCRIPTOR.services_by_name.values():
            theirs = their_module.DESCRIPTOR.services_by_name[service.name]
            assert service.full_name == theirs.full_name
            for method in service.methods:
                other = theirs.methods_by_name[method.name]
                assert method.input_type.full_name == other.input_type.full_name
                assert method.output_type.full_name == other.output_type.full_name


def test_ours_live_in_a_private_pool() -> None:
    assert ours.TensorProto.DESCRIPTOR.file.pool is not descriptor_pool.Default()
    # tensorflow-serving-api is imported in this process too: both sets of classes coexist.
    from tensorflow.core.framework import tensor_pb2

    assert tensor_pb2.TensorProto is not ours.TensorProto


def test_predict_round_trips_through_the_official_messages() -> None:
    from tensorflow_serving.apis import predict_pb2

    request = ours.PredictRequest()
    request.model_spec.name = "digits"
    request.model_spec.version.value = 7
    request.model_spec.signature_name = "serving_default"
    features = np.arange(6, dtype=np.float32).reshape(2, 3)
    request.inputs["features"].CopyFrom(to_tensor_proto(features))
    request.inputs["label"].CopyFrom(to_tensor_proto(np.array([b"a", b"bc"], dtype=object)))
    request.output_filter.append("probabilities")

    theirs = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    assert theirs.model_spec.name == "digits"
    assert theirs.model_spec.version.value == 7
    assert theirs.model_spec.WhichOneof("version_choice") == "version"
    assert list(theirs.inputs["label"].string_val) == [b"a", b"bc"]
    assert [d.size for d in theirs.inputs["features"].tensor_shape.dim] == [2, 3]
    assert (
        np.frombuffer(theirs.inputs["features"].tensor_content, "<f4").tolist() == features.ravel().tolist()
    )

    # Their typed field answer (what TF Serving itself often writes) back through ours.
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "digits"
    response.model_spec.version_label = "champion"
    response.outputs["probabilities"].dtype = 1  # DT_FLOAT
    response.outputs["probabilities"].tensor_shape.dim.add().size = 2
    response.outputs["probabilities"].float_val.extend([0.25, 0.75])
    back = ours.PredictResponse.FromString(response.SerializeToString())
    assert back.model_spec.version_label == "champion"
    assert from_tensor_proto(back.outputs["probabilities"]).tolist() == [0.25, 0.75]


def test_metadata_and_status_round_trip() -> None:
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

    signatures = ours.SignatureDefMap()
    signature = signatures.signature_def["serving_default"]
    signature.method_name = "tensorflow/serving/predict"
    signature.inputs["age"].name = "serving_default_age:0"
    signature.inputs["age"].dtype = ours.DataType.DT_FLOAT
    signature.inputs["age"].tensor_shape.dim.add().size = -1
    response = ours.GetModelMetadataResponse()
    response.model_spec.name = "m"
    response.metadata["signature_def"].Pack(signatures)

    theirs = get_model_metadata_pb2.GetModelMetadataResponse.FromString(response.SerializeToString())
    their_map = get_model_metadata_pb2.SignatureDefMap()
    assert theirs.metadata["signature_def"].Unpack(their_map)
    their_input = their_map.signature_def["serving_default"].inputs["age"]
    assert (their_input.name, their_input.dtype, their_input.tensor_shape.dim[0].size) == (
        "serving_default_age:0",
        1,
        -1,
    )

    status = get_model_status_pb2.GetModelStatusResponse()
    entry = status.model_version_status.add(
        version=3, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE
    )
    entry.status.error_code = 5  # NOT_FOUND
    entry.status.error_message = "gone"
    back = ours.GetModelStatusResponse.FromString(status.SerializeToString())
    assert back.model_version_status[0].version == 3
    assert back.model_version_status[0].state == ours.ModelVersionStatus.AVAILABLE
    assert back.model_version_status[0].status.error_code == ours.ErrorCode.NOT_FOUND


def test_model_server_config_text_matches_the_official_parser() -> None:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    text = """
    model_config_list {
      config {
        name: "m0" base_path: "/models/m0" model_platform: "tensorflow"
        model_version_policy { specific { versions: 3 versions: 4 } }
        version_labels { key: "champion" value: 3 }
      }
    }
    """
    mine = text_format.Parse(text, ours.ModelServerConfig())
    theirs = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    assert mine.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)


def test_committed_generated_code_matches_the_protos() -> None:
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("grpc_tools")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "tools/gen_protos.py", "--check"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
