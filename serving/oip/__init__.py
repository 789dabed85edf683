"""The Open Inference Protocol (KServe v2): its datatypes, tensor codec, REST bodies and operations.

The protocol is a third adapter onto the same ``ServingCore`` as TF Serving's REST and gRPC API:
``service`` holds its operations, ``serving.rest.oip`` and ``serving.grpc.oip`` only convert their
transport's messages. The gateway and the local backend serve it on their TF Serving ports.
"""
