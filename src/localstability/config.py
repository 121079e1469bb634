"""Configuration, in one home: defaults < TOML file < LOCALSTABILITY_* environment variables.

The TOML file is named by `--config` or LOCALSTABILITY_CONFIG. Relative paths inside it are
resolved against the file's own folder.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from localstability.engines import CATALOGUE, ENGINE_ID, LORA_SUFFIX, Family, is_lora_name
from localstability.protocol import LORA_WEIGHT_LIMIT
from localstability.safety.settings import SafetySettings

CONFIG_ENV = "LOCALSTABILITY_CONFIG"


class EngineLora(BaseModel):
    """A LoRA adapter an engine applies to every request (a request may reweigh it, or switch
    it off with weight 0)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The adapter: its file's name in lora_dir/<family>/.")
    weight: float = Field(1.0, ge=-LORA_WEIGHT_LIMIT, le=LORA_WEIGHT_LIMIT)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not is_lora_name(value):
            raise ValueError(
                f"LoRA {value!r}: name the adapter by its file's name without {LORA_SUFFIX} "
                "(letters, digits, then also '.', '_' and '-'), not by a path"
            )
        return value


class EngineConfig(BaseModel):
    """Where one engine's weights come from, and how to load them."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(
        None,
        description="A Hugging Face repo id, a local diffusers folder, or a single "
        ".safetensors/.ckpt file. Unset: the catalogue's default.",
    )
    config: str | None = Field(
        None,
        description="For a single-file source: a diffusers folder or repo id that holds the "
        "component configs (needed offline).",
    )
    variant: str | None = Field(None, description="Weight variant to load, e.g. 'fp16'.")
    inpainting_source: str | None = Field(
        None,
        description="A dedicated inpainting checkpoint (9-channel UNet) for masking; unset: "
        "masking uses the engine's own weights.",
    )
    label: str | None = Field(None, description="A note shown by `models list`.")
    family: Family | None = Field(
        None,
        description="An engine of your own: the model family of its weights (sd1, sd2, "
        "sdxl, sd3, flux, esrgan, latent-upscaler). Unset: detected from the weights (a "
        "diffusers folder, a single .safetensors file, or a Hub repo already in the cache).",
    )
    name: str | None = Field(None, description="The name /v1/engines/list gives the engine.")
    description: str | None = Field(
        None, description="The description /v1/engines/list gives the engine."
    )
    batch_max_images: int | None = Field(
        None,
        ge=1,
        description="The most images queued requests may run together in one pipeline call; "
        "1: no batching. Unset: the catalogue's (4 for SD 1.x/2.x, else 1).",
    )
    cost_factor: float | None = Field(
        None, ge=0, description="Price relative to SDXL per pixel and step; unset: the catalogue's."
    )
    loras: list[EngineLora] = Field(
        default_factory=list,
        description="LoRA adapters applied to every request of this engine, from "
        "lora_dir/<family>/ (a request's `loras` may reweigh them).",
    )
    enabled: bool = True


class Settings(BaseSettings):
    """Every setting of a localstability deployment."""

    model_config = SettingsConfigDict(
        env_prefix="LOCALSTABILITY_", env_nested_delimiter="__", extra="forbid"
    )

    config_file: Path | None = Field(None, description="The TOML file these settings came from.")
    data_dir: Path = Field(Path("data"), description="Database, caches and other state.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL. Unset: SQLite file in data_dir."
    )
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'...")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    offline: bool = Field(
        False, description="Never contact the Hugging Face Hub; load weights from disk only."
    )
    log_level: str = "INFO"
    log_json: bool = True
    log_prompts: bool = Field(
        False,
        description="Put a generation's text prompts in its access-log line (off: a log "
        "never carries what users asked for).",
    )
    metrics: bool = Field(
        True,
        description="Serve GET /metrics (Prometheus text format, no key) on the server.",
    )
    worker_metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="A `localstability worker` serves its own /metrics on this port "
        "(unset: none). Each worker needs a port of its own on its machine.",
    )
    worker_metrics_host: str = Field(
        "127.0.0.1", description="The address a worker's /metrics listens on."
    )
    bootstrap_key: bool = Field(
        True,
        description="On first start with an empty database, create a user, an organization "
        "and an API key and print the key once.",
    )
    bootstrap_credits: float = 1000.0
    admin_key: SecretStr | None = Field(
        None,
        description="The key of the admin HTTP API (/admin/v1); unset: that API is off. "
        "Use a long random string, e.g. from `openssl rand -hex 32`.",
    )
    billing: bool = Field(
        True,
        description="Charge credits for generations; off: nothing is reserved or charged "
        "(generations are still recorded).",
    )
    rate_limit_requests: int = Field(
        150, description="Requests per API key in each rate-limit window; 0 turns limits off."
    )
    rate_limit_window_s: float = Field(10.0, description="The rate-limit window in seconds.")
    max_queued_jobs: int = Field(
        256,
        description="Generations that may wait in the queue; beyond: 503 queue_full. 0: no bound.",
    )
    max_jobs_per_organization: int = Field(
        64,
        description="Generations one organization may have queued or running; beyond: "
        "429 too_many_jobs. 0: no cap.",
    )
    batching: bool = Field(
        True,
        description="Run queued requests that fit together as one pipeline call (up to each "
        "engine's batch_max_images); off: every generation runs alone.",
    )
    batch_window_ms: float = Field(
        0.0,
        ge=0,
        description="How long a batch that has room waits for more matching requests before it "
        "starts; 0: it takes only those already queued (no added latency).",
    )
    result_ttl_s: float = Field(
        600.0, description="How long a finished generation's images stay for GET by id."
    )
    artifact_store: Literal["memory", "disk"] = Field(
        "memory",
        description="Where uploads and results are kept: this process's memory, or files in "
        "data_dir/artifacts (which survive a restart).",
    )
    shutdown_grace_s: float = Field(
        30.0,
        description="On SIGTERM, how long queued and running generations may take to finish "
        "before they are cancelled and refunded.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="How long a client may take to send a request's line and headers, from "
        "its first byte (or from the connection's start); then the connection is closed.",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="Open client connections the server holds at most; a connection beyond "
        "is answered 503 and closed at once (keep it under the process's file limit).",
    )
    runner_heartbeat_s: float = Field(
        10.0,
        gt=0,
        description="How often a server process writes that it is alive (its runner row), and "
        "looks for generations that dead processes left unfinished.",
    )
    runner_timeout_s: float = Field(
        60.0,
        gt=0,
        description="A process not heard of for this long is taken for dead: what it held is "
        "refunded by any other process of the deployment.",
    )
    backend: Literal["local", "celery"] = Field(
        "local",
        description="Where generations run: 'local', in this process (one box, no services), "
        "or 'celery', on `localstability worker` processes through Redis (docs/deploy.md).",
    )
    redis_url: str | None = Field(
        None,
        description="Redis for the celery backend: the broker, the job board, the shared "
        "artifact store and rate limits (e.g. redis://10.0.0.5:6379/0).",
    )
    redis_prefix: str = Field(
        "localstability:",
        description="The prefix of every Redis key of this deployment (and of its queues).",
    )
    job_visibility_timeout_s: float | None = Field(
        None,
        gt=0,
        description="Celery backend: a job whose worker stopped acknowledging goes back to its "
        "queue after this long. Unset: runner_timeout_s + 2 x runner_heartbeat_s, so that the "
        "next delivery finds its worker dead and runs it.",
    )
    job_restore_interval_s: float = Field(
        1.0,
        gt=0,
        description="Celery backend: how often a worker looks for such jobs.",
    )
    generation_retention_days: float = Field(
        90.0,
        ge=0,
        description="How long the records of charged generations are kept; 0: for ever.",
    )
    refunded_retention_hours: float = Field(
        24.0,
        ge=0,
        description="How long the records of failed and cancelled generations (refunded: "
        "nothing was spent) and their reserve and refund entries are kept; 0: for ever.",
    )
    trim_memory: bool = Field(
        True,
        description="Return freed memory to the OS after each job (lower resident memory; "
        "the next job pays some page faults).",
    )
    max_loaded_engines: int = Field(
        0,
        ge=0,
        description="The most pipelines a process (the server, or each worker) holds loaded; "
        "a load beyond unloads the least recently used one that no running job holds. 0: no "
        "limit.",
    )
    max_loaded_bytes: int = Field(
        0,
        ge=0,
        description="The most bytes of model parameters and buffers (measured after each load) "
        "a process holds loaded, on the same terms; a pipeline larger alone still loads. 0: no "
        "limit.",
    )
    preload: list[str] | Literal["all"] = Field(
        default_factory=list,
        description="Engines whose pipelines a process loads in the background at start (the "
        "server answers meanwhile), so that their first image costs no load; 'all': every "
        "enabled engine. Unknown ids are a configuration error at start.",
    )
    max_upload_bytes: int = Field(10 * 1024 * 1024, description="Largest accepted image file.")
    mcp_inline_bytes: int = Field(
        768 * 1024,
        ge=0,
        description="An MCP tool result carries its PNGs inline while their base64 fits this "
        "many bytes; past it, each image comes as a JPEG preview and a link to the full PNG "
        "(resources/read). The Python MCP SDK's clients refuse any server-sent event over 1 MiB.",
    )
    max_upload_pixels: int = Field(
        4096 * 4096, description="Largest accepted image, in pixels (decompression bombs)."
    )
    lora_dir: Path | None = Field(
        None,
        description="The LoRA adapters requests may name: lora_dir/<family>/<name>.safetensors "
        "(family: sd1, sd2, sdxl...), read again at each request. Unset: data_dir/loras. Every "
        "machine of a deployment needs the same folder.",
    )
    v2beta_engines: dict[str, str] = Field(
        default_factory=dict,
        description="Which engine serves a v2beta endpoint (core, ultra) or generate/sd3 model "
        "(sd3.5-large, sd3.5-flash...), over the defaults (docs/api.md, v2beta).",
    )
    safety: SafetySettings = Field(
        default_factory=SafetySettings, description="The prompt and output filters."
    )
    engines: dict[str, EngineConfig] = Field(default_factory=dict)

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def lora_folder(self) -> Path:
        """Where the LoRA adapters are (lora_dir, else data_dir/loras)."""
        return (self.lora_dir or self.data_dir / "loras").expanduser()

    @field_validator("engines")
    @classmethod
    def _engine_ids(cls, engines: dict[str, EngineConfig]) -> dict[str, EngineConfig]:
        for engine_id, engine in engines.items():
            if not ENGINE_ID.fullmatch(engine_id):
                raise ValueError(
                    f"engine id {engine_id!r}: lowercase letters and digits, then also '.', "
                    "'_' and '-', at most 64 characters (it is a segment of the URL path)"
                )
            if engine_id not in CATALOGUE and not engine.source:
                raise ValueError(
                    f"engine {engine_id} is not in the catalogue: an engine of your own needs "
                    "a source (a Hub repo id, a diffusers folder or a .safetensors file)"
                )
        return engines

    def custom_engines(self) -> dict[str, EngineConfig]:
        """The operator's own engines (ids not in the catalogue), in the file's order."""
        return {i: e for i, e in self.engines.items() if i not in CATALOGUE}

    @property
    def visibility_timeout_s(self) -> float:
        """When an unacknowledged job is delivered again (see job_visibility_timeout_s)."""
        derived = self.runner_timeout_s + 2 * self.runner_heartbeat_s
        return self.job_visibility_timeout_s or derived

    @property
    def sqlite_file(self) -> Path | None:
        """The SQLite database file in data_dir, when no database_url is set."""
        return None if self.database_url else (self.data_dir / "localstability.db").resolve()

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.sqlite_file}"

    def engine_config(self, engine_id: str) -> EngineConfig:
        return self.engines.get(engine_id, EngineConfig())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the TOML file, which arrives as init arguments.
        return env_settings, init_settings


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Resolve data_dir, lora_dir and local paths (engine sources, the safety files)
    relative to the TOML file's folder."""
    for key in ("data_dir", "lora_dir"):
        if key in raw:
            raw[key] = str((base / Path(raw[key]).expanduser()).resolve())
    tables: list[tuple[dict[str, Any], tuple[str, ...]]] = [
        (raw.get("safety", {}), ("prompt_words_file", "output_model"))
    ]
    tables += [
        (e, ("source", "config", "inpainting_source")) for e in raw.get("engines", {}).values()
    ]
    for table, keys in tables:
        for key in keys:
            value = table.get(key)
            # A relative path (not a Hub repo id): from the TOML file's folder.
            if isinstance(value, str) and value.startswith((".", "~")):
                table[key] = str((base / Path(value).expanduser()).resolve())
    return raw


def load_settings(config_file: Path | str | None = None) -> Settings:
    """Settings from the TOML file (argument, else LOCALSTABILITY_CONFIG) and the environment."""
    path = config_file or os.environ.get(CONFIG_ENV)
    if not path:
        return Settings()
    file = Path(path).expanduser().resolve()
    with file.open("rb") as handle:
        raw = tomllib.load(handle)
    raw = _resolve_paths(raw, file.parent)
    return Settings(config_file=file, **raw)
