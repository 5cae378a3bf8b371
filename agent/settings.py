"""Daemon settings: validated once, from defaults < config file (YAML) < EDGE_AGENT_* env."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from agent.address import parse_listen_address
from agent.errors import AgentError, validation_message
from agent.paths import daemon_policy_path, default_socket, default_zoo_dir

#: Settings a reload (SIGHUP, `systemctl reload`) applies at once; the others need a restart.
LIVE_SETTINGS = frozenset({"admin_uids", "request_log_sample", "log_level"})


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class Settings(BaseSettings):
    """Everything `edge-agent serve` can be told. Threads: `workers` requests run at once,
    each onnxruntime call on `ort_threads` threads; by default workers x threads = cores, so
    the CPU is never oversubscribed and two requests on two cores do not wait on each other."""

    model_config = SettingsConfigDict(env_prefix="EDGE_AGENT_", extra="forbid")

    socket: Path = Field(default_factory=default_socket)
    socket_mode: int = 0o660
    metrics_listen: str | None = Field(
        default=None,
        description="HOST:PORT on which read-only GET /metrics and /v2/health/* are also served over TCP "
        "(for a fleet's Prometheus); off when unset",
    )
    zoo: Path = Field(default_factory=default_zoo_dir)
    policy: Path = Field(
        default_factory=daemon_policy_path,
        description="Policy file (YAML); the daemon does not start without it",
    )
    state_dir: Path | None = None
    workers: int = Field(default=0, ge=0, le=64, description="0: one per core")
    ort_threads: int = Field(default=0, ge=0, le=64, description="0: cores // workers")
    queue_size: int = Field(default=32, ge=0, le=10_000, description="Requests waiting beyond the workers")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Answer 431 and close when a request's headers grow past this"
    )
    drain_timeout_s: float = Field(default=10.0, ge=0)
    idle_timeout_s: float = Field(
        default=10.0, gt=0, description="Close a connection with no request under way (new or kept alive) after this"
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="Answer 408 and close if request headers take longer, from their first byte"
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="Answer 408 and close if a request body takes longer, from its headers"
    )
    body_grace_s: float = Field(
        default=2.0, gt=0, description="A request body's first deadline; each body_min_rate bytes received add 1 s"
    )
    body_min_rate: int = Field(
        default=16 * 1024,
        ge=0,
        description="Bytes/s under which a body is cut with 408 once body_grace_s has passed (0: off)",
    )
    control_requests: int = Field(
        default=32,
        ge=1,
        le=10_000,
        description="Status, health, metrics and admin requests handled at once, apart from inference",
    )
    max_body_bytes_inflight: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Declared bytes of the inference bodies held at once (received or being handled); past it 503",
    )
    max_decoded_bytes: int = Field(
        default=128 * 1024 * 1024,
        ge=1024 * 1024,
        description="Memory one request's decoding may take (estimated from the image header or body); past it 413",
    )
    max_decoded_bytes_inflight: int = Field(
        default=256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Memory the requests being decoded at once may take together; past it 503 + Retry-After",
    )
    loop_priority: int = Field(
        default=5,
        ge=0,
        le=20,
        description="Nice levels the event-loop thread runs above the workers, so it answers at once under full load",
    )
    admin_uids: list[int] = Field(default_factory=list, description="Besides root and the daemon's own uid")
    trusted_keys: list[Path] = Field(
        default_factory=list,
        description="minisign public key files; when set, the zoo's manifest.json and the policy file must carry "
        "a valid .minisig by one of them (docs/security.md)",
    )
    default_variant: str = "full"
    default_budget: float = Field(default=1.0, gt=0, le=1)
    warmup_runs: int = Field(default=3, ge=0)
    log_level: str = "info"
    log_json: bool | None = None
    request_log_sample: float = Field(default=0.0, ge=0, le=1, description="Share of requests logged at info")
    window_s: float = Field(default=60.0, gt=0, description="Latency samples kept (status, controller)")
    controller_interval_s: float = Field(default=0.5, gt=0, le=60, description="Controller tick period")
    policy_watch_s: float = Field(default=1.0, gt=0, le=3600, description="Policy file change check period")
    telemetry_source: Literal["psutil", "file", "trace"] = "psutil"
    telemetry_file: Path | None = Field(default=None, description="Override file merged over psutil (source 'file')")
    telemetry_trace: Path | None = Field(default=None, description="JSONL trace to replay (source 'trace')")
    sysfs_root: Path = Path("/sys")
    telemetry_interval_s: float = Field(default=1.0, gt=0, description="Seconds between telemetry readings")
    wall_clock_offset_file: Path | None = Field(
        default=None,
        description="For tests: a file holding seconds added to the daemon's wall clock (rehearses an NTP step)",
    )

    @field_validator("metrics_listen")
    @classmethod
    def _listen_address(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            return str(parse_listen_address(value))
        except AgentError as exc:
            raise PydanticCustomError("listen_address", "{reason}", {"reason": exc.message}) from None

    @model_validator(mode="after")
    def _threads(self) -> Settings:
        cores = _cores()
        if self.workers == 0:
            self.workers = max(1, cores // max(1, self.ort_threads)) if self.ort_threads else cores
        if self.ort_threads == 0:
            self.ort_threads = max(1, cores // self.workers)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Command-line flags (init) win over the environment, which wins over the file.
        return (init_settings, env_settings)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from an optional YAML file, the environment and explicit overrides."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise AgentError(f"{config_file}: cannot read config: {exc}") from exc
        if not isinstance(loaded, dict):
            raise AgentError(f"{config_file}: expected a mapping of settings")
        values.update(loaded)
    env_keys = {k[len("EDGE_AGENT_") :].lower() for k in os.environ if k.startswith("EDGE_AGENT_")}
    for key in env_keys:
        values.pop(key, None)  # the environment wins over the file
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        source = f"{config_file}: " if config_file else ""
        raise AgentError(f"{source}invalid setting {validation_message(exc)}") from exc
