"""Fault injection, a testing aid for resilience tests and benchmarks: added latency and errors per model.

Off unless the backend is started with ``--fault_config FILE`` (YAML or JSON)::

    seed: 7                      # optional, for repeatable runs
    default:                     # every model without its own entry
      latency_ms: 20
      latency_distribution: exponential
    models:
      digits-m1:
        latency_ms: 300
        latency_distribution: normal
        latency_spread_ms: 50
        error_rate: 0.2
        error_code: UNAVAILABLE

Only Predict is affected; status and metadata answer normally.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Literal

import grpc
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.errors import one_line, validation_summary
from serving.errors import from_status_code

Distribution = Literal["fixed", "uniform", "normal", "exponential", "lognormal"]
ErrorCodeName = Literal[
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "INTERNAL",
    "UNAVAILABLE",
]


class FaultSpec(BaseModel):
    """The faults one model's predictions get."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(0.0, ge=0)
    """Added latency: the fixed value, or the mean (normal, exponential, uniform) or median (lognormal)."""
    latency_distribution: Distribution = "fixed"
    """How the added latency varies from one request to the next."""
    latency_spread_ms: float = Field(0.0, ge=0)
    """Standard deviation (normal) or half-width (uniform) of the added latency."""
    latency_sigma: float = Field(0.5, ge=0)
    """Shape of the lognormal distribution (sigma of the log)."""
    error_rate: float = Field(0.0, ge=0, le=1)
    """Fraction of predictions that fail, after the latency."""
    error_code: ErrorCodeName = "UNAVAILABLE"
    """The gRPC status code of an injected failure (REST maps it as TF Serving does)."""
    error_message: str = "injected fault"
    """The message of an injected failure."""


class FaultConfig(BaseModel):
    """The ``--fault_config`` file."""

    model_config = ConfigDict(extra="forbid")

    seed: int | None = None
    """Seed for the random draws; None for a different sequence each run."""
    default: FaultSpec = FaultSpec()
    """Faults of models without an entry in ``models``."""
    models: dict[str, FaultSpec] = {}
    """Faults per model name."""

    @classmethod
    def from_file(cls, path: Path) -> FaultConfig:
        """Read the file; ValueError with a one-line reason when it is missing or invalid."""
        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            return cls.model_validate(doc)
        except OSError as exc:
            raise ValueError(f"{path}: cannot read fault config: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML/JSON: {one_line(exc)}") from None
        except ValidationError as exc:
            raise ValueError(f"{path}: {validation_summary(exc)}") from None


class FaultInjector:
    """Applies a FaultConfig to predictions: sleeps, then maybe raises the configured error."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._random = random.Random(config.seed)

    def spec(self, model_name: str) -> FaultSpec:
        return self.config.models.get(model_name, self.config.default)

    def latency_s(self, spec: FaultSpec) -> float:
        mean = spec.latency_ms
        draw = self._random
        match spec.latency_distribution:
            case "fixed":
                latency = mean
            case "uniform":
                latency = draw.uniform(mean - spec.latency_spread_ms, mean + spec.latency_spread_ms)
            case "normal":
                latency = draw.gauss(mean, spec.latency_spread_ms)
            case "exponential":
                latency = draw.expovariate(1.0 / mean) if mean > 0 else 0.0
            case "lognormal":
                latency = draw.lognormvariate(0.0, spec.latency_sigma) * mean
        return max(0.0, latency) / 1000.0

    async def apply(self, model_name: str) -> None:
        """Wait the drawn latency, then raise the configured error with the configured probability."""
        spec = self.spec(model_name)
        delay = self.latency_s(spec)
        if delay > 0:
            await asyncio.sleep(delay)
        if spec.error_rate > 0 and self._random.random() < spec.error_rate:
            raise from_status_code(grpc.StatusCode[spec.error_code], spec.error_message)
