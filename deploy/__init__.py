"""Deployment helpers: container build and health-check scripts, monitoring configuration."""
