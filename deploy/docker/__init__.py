"""Scripts the Dockerfile copies into the build: dependency export and the gateway health check."""
