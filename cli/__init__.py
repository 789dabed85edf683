"""The command line: the only package that composes training, the registry and serving."""
