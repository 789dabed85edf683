"""The gateway's settings: one pydantic-settings class, built in the entrypoint and passed in.

Precedence, highest first: command-line flags (passed as keyword arguments), environment variables
prefixed ``ENSEMBLE_`` (e.g. ``ENSEMBLE_GRPC_PORT=8500``), an optional YAML file (``--config``),
then the defaults below. List settings also accept a comma-separated string in the environment
(``ENSEMBLE_BACKENDS=host-a:8500,host-b:8500``); ``member_backends`` takes JSON there
(``ENSEMBLE_MEMBER_BACKENDS='{"digits-m0": ["host-c:8500"]}'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from serving.traffic.policy import TrafficPolicy, check_policies

ENV_PREFIX = "ENSEMBLE_"

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


def _split_list(value: Any) -> Any:
    """Accept ``a,b`` as well as a list: environment variables are flat strings."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _check_address(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"backend address {address!r} must be HOST:PORT")
    return address


class GatewaySettings(BaseSettings):
    """Everything the ensemble gateway process needs to know."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
    )

    # --- listening ---------------------------------------------------------------------------
    rest_host: str = Field(default="0.0.0.0", description="Interface the REST API listens on.")
    rest_port: int = Field(
        default=8501,
        ge=0,
        le=65535,
        description="REST port. 8501 is TF Serving's usual REST port, so a switched client works unchanged.",
    )
    grpc_host: str = Field(default="0.0.0.0", description="Interface the gRPC API listens on.")
    grpc_port: int = Field(
        default=8500, ge=0, le=65535, description="gRPC port. 8500 is TF Serving's default gRPC port."
    )

    # --- where the ensemble comes from -----------------------------------------------------------
    manifest: Path | None = Field(
        default=None,
        description="An ensemble.json to serve. Re-read when the file changes (hot reload).",
    )
    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI of the registry to resolve aliases from."
    )
    ensemble: str | None = Field(
        default=None, description="Registered ensemble name to serve from the registry."
    )
    aliases: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["champion"],
        description=(
            "Registry aliases to serve; the first is the default, each is also a TF Serving version label."
        ),
    )
    poll_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="How often the manifest source (file or registry alias) is checked for a change.",
    )
    last_good_manifest: Path | None = Field(
        default=None,
        description=(
            "A local file where the gateway keeps the last manifests it served from the registry; a "
            "gateway that cannot reach the registry at start serves them (None: not kept)."
        ),
    )

    # --- where the members live ----------------------------------------------------------------
    backends: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="TF Serving gRPC addresses (HOST:PORT) that host every member; requests round-robin.",
    )
    member_backends: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per-member overrides: member model name -> its own list of HOST:PORT addresses.",
    )
    alias_backends: dict[str, list[str]] = Field(
        default_factory=dict,
        description=(
            "Per-alias placement: alias -> the HOST:PORT addresses that host the members of the "
            "ensemble served under it (a challenger on backends of its own). It wins over "
            "member_backends and backends for that alias's members. Read at start only."
        ),
    )

    # --- deadlines, hedging, breaker ------------------------------------------------------------
    member_deadline_s: float = Field(
        default=2.0, gt=0, description="Deadline of one backend call; a member slower than this is dropped."
    )
    request_deadline_s: float = Field(
        default=5.0,
        gt=0,
        description="Deadline of a whole request when the client sets none (a shorter client deadline wins).",
    )
    hedge_after_s: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Send a second try to another replica of a member after this delay; None turns hedging off."
        ),
    )
    breaker_failures: int = Field(
        default=5, ge=1, description="Consecutive failures that open a member's circuit breaker."
    )
    breaker_cooldown_s: float = Field(
        default=5.0, gt=0, description="How long an open breaker waits before letting one probe through."
    )

    # --- micro-batching ------------------------------------------------------------------------
    batching: bool = Field(
        default=False,
        description="Coalesce concurrent requests into one backend call per member.",
    )
    max_batch_size: int = Field(default=64, ge=1, description="Most rows one coalesced backend call carries.")
    max_delay_ms: float = Field(
        default=2.0, ge=0, description="Longest a request waits for others to join its batch."
    )
    max_inflight_batches: int = Field(
        default=2,
        ge=0,
        description=(
            "Batches per input shape out at once; while that many are out, the next batch gathers "
            "until one comes back, whatever max_delay_ms says (0: no limit)."
        ),
    )

    # --- protection and process ----------------------------------------------------------------
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1,
        description="Largest REST body or gRPC message accepted; larger gets 413 / RESOURCE_EXHAUSTED.",
    )
    max_decoded_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description=(
            "Most bytes the input tensors of one request may decode to (elements x dtype size), checked "
            "on the declared shapes before decoding; larger gets 400 / INVALID_ARGUMENT."
        ),
    )
    auth_token: SecretStr | None = Field(
        default=None,
        description=(
            "Bearer token required on REST (Authorization header) and gRPC (authorization metadata);"
            " None turns auth off."
        ),
    )
    drain_timeout_s: float = Field(
        default=20.0,
        ge=0,
        description="On SIGTERM, how long in-flight requests get to finish before the process exits.",
    )
    log_level: LogLevel = Field(default="info", description="Log level of the gateway process.")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Gateway processes sharing the REST and gRPC ports (SO_REUSEPORT), each with its "
        "own event loop, batcher and manifest watch; 1 serves from this process alone.",
    )

    # --- champion vs challenger ------------------------------------------------------------------
    traffic: dict[str, TrafficPolicy] = Field(
        default_factory=dict,
        description=(
            "Traffic policy per served ensemble (name -> shadow, sticky canary, comparison window);"
            " re-read from the config file while the gateway runs."
        ),
    )

    # Where these settings came from, so that the config file can be read again (``reload``).
    _config_file: Path | None = PrivateAttr(default=None)
    _overrides: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("aliases", "backends", mode="before")
    @classmethod
    def _comma_lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("backends")
    @classmethod
    def _backend_addresses(cls, value: list[str]) -> list[str]:
        return [_check_address(a) for a in value]

    @field_validator("member_backends", "alias_backends")
    @classmethod
    def _placed_addresses(cls, value: dict[str, list[str]], info: ValidationInfo) -> dict[str, list[str]]:
        what = "member" if info.field_name == "member_backends" else "alias"
        for key, addresses in value.items():
            if not addresses:
                raise ValueError(f"{what} {key!r} needs at least one backend address")
            for address in addresses:
                _check_address(address)
        return value

    @field_validator("aliases")
    @classmethod
    def _alias_names(cls, value: list[str]) -> list[str]:
        for alias in value:
            if not alias.replace("_", "").isalnum():
                raise ValueError(f"alias {alias!r} must match [a-zA-Z0-9_]+ (a TF Serving label)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> GatewaySettings:
        from_registry = self.tracking_uri is not None or self.ensemble is not None
        if self.manifest is not None and from_registry:
            raise ValueError("give either a manifest file or a tracking URI with an ensemble name, not both")
        if from_registry and (self.tracking_uri is None or self.ensemble is None):
            raise ValueError("serving from the registry needs both a tracking URI and an ensemble name")
        if from_registry and not self.aliases:
            raise ValueError("serving from the registry needs at least one alias")
        return self

    @model_validator(mode="after")
    def _traffic_pairs(self) -> GatewaySettings:
        check_policies(
            self.traffic,
            ensemble=self.ensemble,
            aliases=self.aliases,
            from_registry=self.tracking_uri is not None,
        )
        return self

    @model_validator(mode="after")
    def _placed_aliases(self) -> GatewaySettings:
        unknown = sorted(set(self.alias_backends) - set(self.aliases))
        if unknown:
            served = ", ".join(self.aliases) or "none"
            raise ValueError(
                f"alias_backends names {', '.join(unknown)}, which is not a served alias (aliases: {served})"
            )
        return self

    def addresses_for(self, member: str, alias: str | None = None) -> list[str]:
        """The backend addresses of ``member`` served under ``alias``: the alias's placement, else
        the member's override, else the shared backends."""
        return self.alias_backends.get(alias or "") or self.member_backends.get(member) or self.backends

    @property
    def has_backends(self) -> bool:
        """Whether any backend address is configured at all."""
        return bool(self.backends or self.member_backends or self.alias_backends)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> GatewaySettings:
        """Build the settings from flags (``overrides``, None values ignored), env and a YAML file."""
        given = {key: value for key, value in overrides.items() if value is not None}
        if config_file is None:
            settings = cls(**given)
        else:
            if not config_file.is_file():
                raise ValueError(f"config file {config_file} does not exist")
            # A subclass bound to this file keeps the class itself free of any global file path.
            bound = type(
                cls.__name__,
                (cls,),
                {"model_config": SettingsConfigDict(**{**cls.model_config, "yaml_file": config_file})},
            )
            settings = bound(**given)
        settings._config_file = config_file
        settings._overrides = given
        return settings

    @property
    def config_file(self) -> Path | None:
        """The YAML file these settings were read from, if any."""
        return self._config_file

    def sources(self) -> tuple[Path | None, dict[str, Any]]:
        """The config file and flags these settings were loaded from: ``load(*sources)`` builds them
        again in another process (a worker), which reads the same environment."""
        return self._config_file, dict(self._overrides)

    def reload(self) -> GatewaySettings:
        """The settings as they read now: the same flags and environment, the config file read again.

        Raises what :meth:`load` raises (ValidationError, ValueError) for a file that became invalid.
        """
        return GatewaySettings.load(self._config_file, **self._overrides)
