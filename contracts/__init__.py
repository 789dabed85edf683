"""The contracts every part relies on: the bottom layer, numpy and pydantic only.

training, registry and serving import these modules and never each other: the ensemble manifest,
the model repository's ``models.config``, combine, the run folder and its typed records, the
MLflow tag keys, the comparison summary, atomic writes and the one-line error helpers.
"""
