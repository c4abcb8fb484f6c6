"""One place that builds the parts every command needs from `Settings`: the engine, the
sentence encoder, the featurizer and the reward models. `serve`, `eval`, `bench` and `train`
all use it, so a setting means the same everywhere.

>>> # svc = load_services(settings); rms = svc.reward_models(settings.reward_models)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from laser.server import assets
from laser.server.config import EngineSettings, RewardModelSpec, Settings, resolve_secret
from laser.server.engines.base import Engine
from laser.server.featurize import Featurizer, SentenceEncoder
from laser.server.outbound import LOOPBACK
from laser.server.rms.base import RewardModel
from laser.server.rms.builtin import (
    AgreementRM,
    ArithmeticVerifierRM,
    GroundingRM,
    JudgeRM,
    LogLikelihoodRM,
    RelevanceRM,
)
from laser.server.rms.ensemble import EnsembleRM
from laser.server.rms.model_backed import HFRewardModel, RemoteRM, VLLMPoolingRM
from laser.server.store.base import LogStore
from laser.server.store.sqlite import Store

log = logging.getLogger("laser.server")


def model_path_and_name(engine: EngineSettings, cache_dir: Path) -> tuple[str, str]:
    """The policy's folder and served name: `engine.model`, or the embedded SmolLM2 converted
    into `cache_dir` (once)."""
    if engine.model:
        return engine.model, engine.model.rstrip("/").split("/")[-1]
    return str(assets.embedded_model(cache_dir)), assets.EMBEDDED_MODEL_NAME


def encoder_path(settings: Settings) -> str:
    return settings.featurizer.model or str(assets.minilm_path())


def outbound_urls(spec: RewardModelSpec) -> list[str]:
    """The URLs an RM built from `spec` would call (checked against `outbound_hosts`)."""
    url = spec.options.get("url")
    return [str(url)] if spec.kind == "remote" and url is not None else []


# The option each kind of RM cannot be built without, and what to say when it is missing.
_REQUIRED_OPTIONS = {
    "remote": ("url", "a `remote` reward model needs options.url"),
    "vllm_pooling": ("path", "a `vllm_pooling` reward model needs options.path"),
    "hf": ("path", "an `hf` reward model needs options.path (a model folder)"),
    "ensemble": ("members", "an `ensemble` reward model needs options.members (RM names)"),
}


def check_reward_model_options(spec: RewardModelSpec) -> None:
    """Raise ValueError if `spec` lacks the option its kind needs: `url` for a `remote` RM,
    `path` for `hf` and `vllm_pooling`. `build_reward_model` checks it; training checks it
    before any model loads."""
    required = _REQUIRED_OPTIONS.get(spec.kind)
    if required is not None and required[0] not in spec.options:
        raise ValueError(required[1])
    if spec.kind == "ensemble":
        members = spec.options["members"]
        if (
            not isinstance(members, list)
            or len(members) < 2
            or not all(isinstance(m, str) for m in members)
            or len(set(members)) != len(members)
        ):
            raise ValueError("options.members of an ensemble: two or more distinct RM names")
        if spec.name in members:
            raise ValueError("an ensemble cannot be its own member")


def build_ensemble(spec: RewardModelSpec, models: Mapping[str, RewardModel]) -> RewardModel:
    """An `ensemble` RM over already built `models` (every member must be one of them and
    none an ensemble itself)."""
    check_reward_model_options(spec)
    members = spec.options["members"]
    missing = [m for m in members if m not in models]
    if missing:
        raise ValueError(f"ensemble {spec.name}: unknown member(s) {', '.join(missing)}")
    nested = [m for m in members if models[m].kind == "ensemble"]
    if nested:
        raise ValueError(f"ensemble {spec.name}: members cannot be ensembles ({nested[0]})")
    return EnsembleRM(spec.name, {m: models[m] for m in members})


def build_reward_model(
    spec: RewardModelSpec,
    *,
    engine: Engine,
    encoder: SentenceEncoder,
    allowed_hosts: Sequence[str] = LOOPBACK,
) -> RewardModel:
    """Instantiate the RM a config entry describes. A `remote` RM may only call
    `allowed_hosts` (`HostNotAllowedError` otherwise)."""
    check_reward_model_options(spec)
    opts = dict(spec.options)
    if spec.kind == "loglik":
        return LogLikelihoodRM(spec.name, engine)
    if spec.kind == "agreement":
        return AgreementRM(spec.name, use_reference=bool(opts.get("use_reference", True)))
    if spec.kind == "relevance":
        return RelevanceRM(spec.name, encoder, **opts)
    if spec.kind == "judge":
        return JudgeRM(spec.name, engine)
    if spec.kind == "arith":
        return ArithmeticVerifierRM(spec.name)
    if spec.kind == "grounding":
        return GroundingRM(spec.name, **opts)
    if spec.kind == "remote":
        # The token is read now from where the options name it; only the name is stored.
        opts["api_key"] = resolve_secret(
            opts.pop("api_key", None),
            opts.pop("api_key_env", ""),
            opts.pop("api_key_file", None),
            f"reward model {spec.name}: options.api_key",
        )
        return RemoteRM(spec.name, **opts, allowed_hosts=allowed_hosts)
    if spec.kind == "vllm_pooling":
        return VLLMPoolingRM(spec.name, **opts)
    if spec.kind == "hf":
        return HFRewardModel(spec.name, **opts)
    if spec.kind == "ensemble":
        raise ValueError("an ensemble is built over the other RMs (build_ensemble)")
    raise ValueError(f"unknown reward model kind {spec.kind!r}")


@dataclass
class Services:
    """The heavy, reusable parts (the engine and the sentence encoder) and what is built on
    them."""

    engine: Engine
    encoder: SentenceEncoder
    outbound_hosts: Sequence[str] = tuple(LOOPBACK)

    def featurizer(self, settings: Settings) -> Featurizer:
        return Featurizer.from_settings(self.encoder, settings.featurizer)

    def reward_model(self, spec: RewardModelSpec) -> RewardModel:
        rm: RewardModel = build_reward_model(
            spec, engine=self.engine, encoder=self.encoder, allowed_hosts=self.outbound_hosts
        )
        return rm

    def reward_models(self, specs: Sequence[RewardModelSpec]) -> dict[str, RewardModel]:
        """Every RM `specs` names; ensembles last, over the others."""
        out = {s.name: self.reward_model(s) for s in specs if s.kind != "ensemble"}
        for spec in specs:
            if spec.kind == "ensemble":
                out[spec.name] = build_ensemble(spec, out)
        return {s.name: out[s.name] for s in specs}

    async def aclose(self) -> None:
        """Close the engine's HTTP clients (on the loop that used them), then stop it."""
        await self.engine.aclose()
        self.engine.shutdown()

    def shutdown(self) -> None:
        self.engine.shutdown()


def open_store(settings: Settings) -> LogStore:
    """The log `settings` name: SQLite at `<data_dir>/laser.db`, or the PostgreSQL database of
    `store.url` (migrated first unless `store.auto_upgrade` is off)."""
    if settings.store.url:
        from laser.server.store.postgres import PgStore

        return PgStore(
            settings.store.url,
            pool_size=settings.store.pool_size,
            upgrade=settings.store.auto_upgrade,
        )
    return Store(settings.store_path)


def vllm_engine(e: EngineSettings, model_path: str, name: str) -> Engine:
    """The in-process vLLM engine `e` describes (serving, and training's sampler)."""
    from laser.server.engines.vllm_engine import VLLMEngine

    return VLLMEngine(
        model_path,
        name=name,
        max_model_len=e.max_model_len,
        seed=e.seed,
        dtype=e.dtype,
        tensor_parallel_size=e.tensor_parallel_size,
        gpu_memory_utilization=e.gpu_memory_utilization,
        kv_cache_gib=e.kv_cache_gib,
        enforce_eager=e.enforce_eager,
        enable_lora=e.enable_lora,
        max_lora_rank=e.max_lora_rank,
        cpu_threads_bind=e.cpu_threads_bind,
    )


def load_services(settings: Settings) -> Services:
    """Load the engine and the encoder named by `settings` (minutes at worst; logs progress)."""

    e = settings.engine
    enc_path = encoder_path(settings)
    model_path, name = model_path_and_name(e, settings.model_cache)
    engine: Engine
    if e.kind == "remote":
        from laser.server.engines.remote_engine import RemoteOpenAIEngine

        if not e.url:
            raise ValueError("engine.kind = 'remote' needs engine.url")
        log.info("remote engine at %s (model %s)", e.url, e.served_name or name)
        engine = RemoteOpenAIEngine(
            e.url,
            model=e.served_name or name,
            tokenizer=e.tokenizer or model_path,
            max_model_len=e.max_model_len,
            api_key=e.bearer(),
            allowed_hosts=settings.outbound_hosts,
        )
        return Services(engine, SentenceEncoder(enc_path), settings.outbound_hosts)
    log.info("starting engine: vLLM, model %s (%s)", name, model_path)
    engine = vllm_engine(e, model_path, name)
    log.info("loading sentence encoder %s", enc_path)
    return Services(engine, SentenceEncoder(enc_path), settings.outbound_hosts)
