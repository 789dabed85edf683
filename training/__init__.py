"""Training: N independent Keras members, exported for TF Serving, assembled into a weighted ensemble."""
