"""Service settings: every knob is an ``R2RANK_*`` environment variable (or a ``.env`` line)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from threadpoolctl import threadpool_limits

REPO_ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER_SECRET = "CHANGE-ME"
DEMO_SECRET = "local-demo-only"  # deploy/docker-compose.yml's defaults: public, so never with keys turned on


class Settings(BaseSettings):
    # hide_input_in_errors: a validation error names the setting and what is wrong, never the values it was
    # given (a model-level error would otherwise print every setting, secrets included, into the logs)
    model_config = SettingsConfigDict(env_prefix="R2RANK_", env_file=".env", extra="ignore", hide_input_in_errors=True)

    # --- model and engine ---
    model_path: Path = Field(REPO_ROOT / "models" / "default", description="Checkpoint directory (with manifest.json).")
    models_root: Path | None = Field(
        None,
        description="Hot reload (POST /admin/models) only loads checkpoints under this directory "
        "(default: the parent of R2RANK_MODEL_PATH).",
    )
    engine: Literal["local", "remote"] = Field("local", description="In-process vLLM or a remote vLLM server.")
    engine_url: str | None = Field(None, description="Remote engine base URL, e.g. http://vllm:8000 (engine=remote).")
    engine_model_name: str | None = Field(
        None,
        description="Name the remote server serves this checkpoint under (default: its model_version); the API "
        "is not ready while the server does not serve it.",
    )
    engine_api_key: str | None = Field(None, description="Bearer token for the remote engine, if it wants one.")
    engine_timeout_s: float = Field(120.0, gt=0, description="Per engine call timeout (remote).")
    engine_batch: bool = Field(
        True, description="Remote: send a request's prompts as two list-valued calls (false: two calls per item)."
    )
    api_blas_threads: int = Field(
        1,
        ge=1,
        description="NumPy BLAS threads of the process that builds prompts (the sequence model's forward pass per "
        "request is small, and idle BLAS workers would spin on the cores the engine computes on).",
    )
    max_rationale_tokens: int | None = Field(None, ge=1, le=1024, description="Override the manifest's rationale cap.")
    model_sync_interval_s: float = Field(
        5.0, ge=0, description="How often a replica checks Redis for the fleet's published model (0: never)."
    )

    # local vLLM engine
    dtype: str = Field("float32", description="float32 is fastest on CPUs without AVX-512/AMX; 'auto' on GPUs.")
    max_model_len: int = Field(2048, ge=128)
    enable_prefix_caching: bool = True
    enforce_eager: bool = Field(False, description="Skip torch.compile: faster start-up, slower steady state.")
    max_num_seqs: int = Field(256, ge=1)
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    kv_block_size: int | None = Field(
        None,
        ge=1,
        description="Tokens per KV-cache block, what prefix caching reuses (unset: 32 on CPUs, vLLM's own on GPUs).",
    )
    cpu_kvcache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE: KV cache size on CPU, GiB.")
    cpu_omp_threads_bind: str | None = Field(
        None, description="VLLM_CPU_OMP_THREADS_BIND, e.g. '0-1'; unset lets vLLM decide."
    )
    cpu_reserved_cpus: int | None = Field(
        0, description="VLLM_CPU_NUM_OF_RESERVED_CPU: cores kept for the API process (0 = engine uses all)."
    )

    # --- Redis state ---
    redis_url: str | None = Field(
        "redis://127.0.0.1:6379/0", description="Histories, catalogue, score cache; empty disables them."
    )
    redis_prefix: str = Field("r2r", min_length=1, description="Prefix of every key this service writes.")
    redis_timeout_s: float = Field(0.5, gt=0, description="Socket connect/read timeout per Redis call.")
    history_max: int = Field(50, ge=1, description="Stored history keeps the most recent N items per user.")
    user_ttl_s: int | None = Field(None, ge=1, description="Expire a user's history N s after their last write.")
    score_cache: bool = Field(True, description="Cache scores in Redis (keyed by model, format, history).")
    score_cache_ttl_s: int = Field(86400, ge=1, description="TTL of score cache entries.")

    # --- HTTP ---
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_candidates: int = Field(200, ge=1, le=1000, description="Most candidates one /rank may carry.")
    max_history_request: int = Field(500, ge=1, le=10_000, description="Most history items one request may carry.")
    log_level: str = "info"
    log_json: bool = Field(True, description="One JSON object per log line (with request_id).")

    # --- security ---
    auth_enabled: bool = Field(False, description="Require API keys (off for the local demo, on in deploy/).")
    api_keys: dict[str, list[Literal["rank", "ingest", "admin"]]] = Field(
        default_factory=dict,
        description='JSON {"<sha256 of key>": ["rank"|"ingest"|"admin", ...]}; more keys in Redis.',
    )
    key_secret: SecretStr | None = Field(
        None, description="Signs the API key entries in Redis (r2rank-serve keys add); without it none is honoured."
    )

    # --- reliability ---
    default_deadline_ms: int = Field(
        30_000, ge=1, description="Deadline of a /rank without deadline_ms; unscored items then get a fallback."
    )
    max_inflight_items: int = Field(
        1024, ge=1, description="Items admitted to the engine at once; beyond it /rank answers 429 (Retry-After)."
    )
    global_max_inflight_items: int | None = Field(
        None,
        ge=1,
        description="With the remote engine: items in flight across every API pod (shared through "
        "Redis), so autoscaled pods cannot overfill the one vLLM queue; unset: each pod's own bound only.",
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body; beyond it 413.")
    max_title_chars: int = Field(2000, ge=1, le=2000, description="Longest title accepted (422 beyond).")
    engine_restart: bool = Field(True, description="Restart/reconnect a dead engine with backoff.")
    shutdown_grace_s: int = Field(30, ge=0, description="On SIGTERM, finish in-flight requests for up to this long.")

    @model_validator(mode="after")
    def _remote_needs_url(self) -> Settings:
        if self.engine == "remote" and not self.engine_url:
            raise ValueError("R2RANK_ENGINE_URL is required when R2RANK_ENGINE=remote")
        return self

    @model_validator(mode="after")
    def _no_placeholder_secrets(self) -> Settings:
        """The deploy manifests ship CHANGE-ME placeholders: serving with one would be serving with no secret. The
        compose demo's public defaults pass only while API keys are off (a laptop demo)."""
        secrets = {
            "R2RANK_KEY_SECRET": self.key_secret.get_secret_value() if self.key_secret else "",
            "R2RANK_ENGINE_API_KEY": self.engine_api_key or "",
            "R2RANK_REDIS_URL": self.redis_url or "",
        }
        for name, value in secrets.items():
            if PLACEHOLDER_SECRET in value:
                raise ValueError(f"{name} holds the {PLACEHOLDER_SECRET} placeholder: set a real secret")
            if self.auth_enabled and DEMO_SECRET in value:  # the demo's public default guards nothing
                raise ValueError(f"{name} holds compose's public {DEMO_SECRET!r} default, which API keys must "
                                 "not rely on: set REDIS_PASSWORD, R2RANK_KEY_SECRET and VLLM_API_KEY")  # fmt: skip
        return self

    def apply_blas_threads(self) -> None:
        """Keep NumPy's BLAS in this process to ``api_blas_threads``. Process-wide on purpose: prompts are built
        in worker threads, and a limit entered and left per call would race between them."""
        threadpool_limits(limits=self.api_blas_threads, user_api="blas")

    def apply_vllm_cpu_env(self) -> None:
        """vLLM's CPU backend reads these from the environment at engine start; explicit env wins."""
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.cpu_kvcache_gib))
        if self.cpu_reserved_cpus is not None:
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(self.cpu_reserved_cpus))
        if self.cpu_omp_threads_bind:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", self.cpu_omp_threads_bind)
