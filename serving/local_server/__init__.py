"""The local model server: a stand-in for ``tensorflow_model_server`` speaking TF Serving's API.

TF Serving ships as a C++ binary and container image only. This package serves the same model
repository (``<base>/<model>/<version>/saved_model.pb`` plus ``models.config``) over the same REST
and gRPC API, for the demo, the tests and single-machine use. It is not TF Serving; where it
differs, ``docs/local-backend.md`` says so. It is the only part of ``serving`` that imports
TensorFlow, and only inside ``saved_model`` (loaded when the server starts).
"""
