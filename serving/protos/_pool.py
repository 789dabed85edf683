"""The private descriptor pool that every generated module of ``serving.protos`` registers into.

TensorFlow and ``tensorflow-serving-api`` register ``tensorflow.TensorProto``,
``tensorflow.serving.PredictRequest`` … in protobuf's default pool. Ours live in a separate pool,
so both can be imported in one process without a duplicate-symbol error; on the wire they are
the same messages.
"""

from __future__ import annotations

from functools import cache

from google.protobuf import any_pb2, descriptor_pool, wrappers_pb2


@cache
def pool() -> descriptor_pool.DescriptorPool:
    """The pool, created on first use with the well-known types our protos import."""
    private = descriptor_pool.DescriptorPool()
    for well_known in (any_pb2, wrappers_pb2):
        private.AddSerializedFile(well_known.DESCRIPTOR.serialized_pb)
    return private
