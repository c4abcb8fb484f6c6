"""LASeR's training loop (the paper's Algorithm 1), readable top to bottom.

Per batch of prompts:
1. context: the prompts' features (mean over the batch in `batch` mode, per prompt in
   `per_query` mode), from the featurizer the server uses, built from the same settings
   (kind of query by default, its one-hot kinds being the warm start's regions);
2. the selector picks an RM (LinUCB for LASeR, configured as the server's: its warm start
   tries every RM `warmup` times per kind of query before UCB decides; fixed / random /
   sequential baselines; the ensemble uses all RMs and averages their normalised scores);
3. the CURRENT policy samples n responses per prompt, all prompts submitted together;
4. the RM scores them; the top response is "chosen" against ranks 2..k+1 ("rejected");
5. one DPO(+NLL) step on those pairs against the frozen reference;
6. the bandit's reward (`bandit_reward`, laser.server.training.reward): by default the
   advantage of the step's loss over a running baseline shared by all RMs (a moving
   average of the previous steps' losses), squashed by the 20th/80th percentiles of past
   advantages, so RMs are compared fairly while the loss falls; or the paper's negative
   loss squashed by the percentiles of past rewards (`squashed_loss`).
After each pass over the prompts (an iteration) the reference is re-synced to the policy
(and the reward's baseline restarts) and a checkpoint is written.

    summary = asyncio.run(run_training(load_train_config("train.toml")))

Over 400 lines on purpose, like nanoGPT's train.py: one `Trainer` whose steps share the
policy, the reference, the optimizer, the sampler and the selector, read in order; split up,
they would pass that state around.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from laser.bandit import (
    FixedArm,
    LinUCB,
    LinUCBConfig,
    RoundRobin,
    UniformRandom,
    from_bytes,
    load_selector,
    to_bytes,
)
from laser.server import answers
from laser.server.data import DataError, PromptItem, load_prompts
from laser.server.engines.vllm_engine import Adapter, Sampling
from laser.server.prompts import format_documents
from laser.server.rms.base import Query
from laser.server.rms.builtin import normalized_mean
from laser.server.runtime import write_atomic_text
from laser.server.training import handover
from laser.server.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from laser.server.training.config import TrainConfig
from laser.server.training.reward import BanditReward

log = logging.getLogger("laser.server.training")


class TrainingError(ValueError):
    """The run cannot start (bad prompts, unknown RM, missing model) or cannot go on."""


class Cancelled(Exception):
    """`should_stop()` turned true between steps; the last checkpoint stands."""


@dataclass
class Pair:
    item: int
    chosen: str
    rejected: str
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass
class RunState:
    iteration: int = 0  # iterations completed
    step: int = 0  # optimisation steps completed
    rm_counts: dict[str, int] = field(default_factory=dict)
    eval_before: dict[str, Any] | None = None
    elapsed_s: float = 0.0


def linucb_config(cfg: TrainConfig, dim: int, regions: int) -> LinUCBConfig:
    """LinUCB as the server configures it (`cfg.bandit`), seeded by the run's `seed`."""
    return cfg.bandit.linucb(dim, regions, seed=cfg.seed)


def make_selector(cfg: TrainConfig, names: list[str], dim: int, regions: int = 0) -> Any:
    """The run's selector over RMs `names` for `dim`-feature contexts whose first `regions`
    features are the kind-of-query one-hot (None for the ensemble: no choice)."""
    if cfg.selector == "laser":
        return LinUCB(linucb_config(cfg, dim, regions), names)
    if cfg.selector == "fixed":
        assert cfg.fixed_rm is not None
        return FixedArm(cfg.fixed_rm, names)
    if cfg.selector == "random":
        return UniformRandom(names, seed=cfg.seed)
    if cfg.selector == "sequential":
        return RoundRobin(names)
    return None  # ensemble: every RM, no choice


def build_pairs(scores: list[float], texts: list[str], k: int) -> list[tuple[int, int]]:
    """(chosen, rejected) candidate indices: the top-scored vs ranks 2..k+1.

    Ties with the top, identical texts and an empty chosen text give no pair.

    >>> build_pairs([0.1, 0.9, 0.5, 0.9], ["a", "b", "c", "d"], 2)
    [(1, 2), (1, 0)]
    """
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    top = order[0]
    if not texts[top].strip():
        return []
    out = []
    for j in order[1 : k + 1]:
        if scores[j] < scores[top] and texts[j] != texts[top]:
            out.append((top, j))
    return out


def _check_inputs(cfg: TrainConfig) -> tuple[list[PromptItem], list[PromptItem]]:
    """Everything that can be checked before any model loads."""
    if not cfg.prompts:
        raise TrainingError("no prompts file: set `prompts` (a JSONL of prompt/reference/task)")
    try:
        items = load_prompts(cfg.prompts)
        held_out = load_prompts(cfg.eval_prompts) if cfg.eval_prompts else []
    except DataError as exc:
        raise TrainingError(str(exc)) from None
    if any(it.reference is None for it in held_out):
        raise TrainingError("every eval_prompts item needs a `reference`")
    if cfg.model and not (Path(cfg.model) / "config.json").is_file():
        raise TrainingError(f"model {cfg.model!r} is not a model folder (no config.json)")
    for rm in cfg.reward_models:
        path = rm.options.get("path")
        if rm.kind in ("hf", "vllm_pooling") and not (path and Path(str(path)).is_dir()):
            raise TrainingError(f"reward model {rm.name!r}: path {path!r} is not a folder")
        if rm.kind == "remote" and "url" not in rm.options:
            raise TrainingError(f"reward model {rm.name!r}: a remote RM needs options.url")
    return items, held_out


class Trainer:
    """One training run. Build it, then `await trainer.run()`."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        resume: bool = False,
        progress: bool = True,
        cache_dir: Path | None = None,
        should_stop: Callable[[], bool] | None = None,
        initial_bandit: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.items, self.held_out = _check_inputs(cfg)
        self.out = Path(cfg.output_dir)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrainingError(f"cannot create output_dir {str(self.out)!r}: {exc}") from None
        self.resume = resume
        self.progress = progress
        self.cache_dir = cache_dir or Path("laser-data") / "cache"
        self.should_stop = should_stop or (lambda: False)
        self.initial_bandit = initial_bandit
        self.state = RunState()

    # -- set-up -----------------------------------------------------------------------------
    def _load(self) -> None:
        import torch
        from accelerate import Accelerator
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from laser.server import assets
        from laser.server.featurize import Featurizer, SentenceEncoder
        from laser.server.services import build_reward_model

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.torch = torch
        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        self.model_path = cfg.model or str(assets.embedded_model(self.cache_dir))
        self.model_name = Path(self.model_path).name
        self.tok = AutoTokenizer.from_pretrained(self.model_path)
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        base = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_targets),
            task_type="CAUSAL_LM",
        )
        try:
            self.policy = get_peft_model(base, lora)
        except ValueError as exc:
            raise TrainingError(f"LoRA targets {cfg.lora_targets}: {exc}") from None
        self.params = {n: p for n, p in self.policy.named_parameters() if p.requires_grad}
        # The reference starts as the initial policy (LoRA B = 0: the base model).
        self.reference = {n: p.detach().clone() for n, p in self.params.items()}
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=cfg.learning_rate)
        self.model, self.optimizer = self.acc.prepare(self.policy, self.optimizer)

        if cfg.engine == "hf":
            from laser.server.engines.hf_engine import HFEngine

            self.engine: Any = HFEngine(
                self.policy,
                self.tok,
                name=self.model_name,
                max_model_len=cfg.max_model_len,
                scoring_context=self.policy.disable_adapter,
            )
        else:
            from laser.server.services import vllm_engine

            # The server's engine settings (dtype, KV cache, ...); the run fixes the context,
            # the seed and LoRA (on, at the rank it trains, when the adapter is handed over).
            with_lora = cfg.handover == "lora"
            settings = cfg.vllm.model_copy(
                update={
                    "max_model_len": cfg.max_model_len,
                    "seed": cfg.seed,
                    "enable_lora": with_lora,
                    "max_lora_rank": max(cfg.lora_r, 8),
                }
            )
            self.engine = vllm_engine(settings, self.model_path, self.model_name)
        # The step whose weights the vLLM sampler holds (0: the base model's).
        self._sampler_step = 0
        self.encoder = SentenceEncoder(cfg.featurizer.model or assets.minilm_path())
        # The server's featurizer, from the same settings: a seeded bandit means the same.
        self.featurizer = Featurizer.from_settings(self.encoder, cfg.featurizer)
        self.rms = {
            spec.name: build_reward_model(
                spec, engine=self.engine, encoder=self.encoder, allowed_hosts=cfg.outbound_hosts
            )
            for spec in cfg.reward_models
        }
        self.selector = make_selector(
            cfg, list(self.rms), self.featurizer.dim, self.featurizer.regions
        )
        if self.initial_bandit is not None and isinstance(self.selector, LinUCB):
            self.selector = self._seeded(self.selector)
        per_step = cfg.batch_size if cfg.bandit_mode == "per_query" else 1
        self.reward = BanditReward(cfg.bandit_reward, cfg.baseline_weight, per_step)
        self.prompts = [self._render(it) for it in self.items]
        self.prompt_ids = [self.tok(p, add_special_tokens=False)["input_ids"] for p in self.prompts]
        for i, ids in enumerate(self.prompt_ids):
            if len(ids) + cfg.max_tokens > cfg.max_model_len:
                raise TrainingError(
                    f"prompt {i + 1} is {len(ids)} tokens; with max_tokens={cfg.max_tokens} it "
                    f"does not fit max_model_len={cfg.max_model_len}"
                )
        self.contexts = self.featurizer.features_batch(
            [it.prompt for it in self.items],
            [bool(it.documents) for it in self.items],
            [it.task for it in self.items],
        )

    def _seeded(self, fresh: LinUCB) -> LinUCB:
        """The server's bandit (what it learnt), run with this run's settings."""
        assert self.initial_bandit is not None
        seeded = load_selector(self.initial_bandit)
        if not isinstance(seeded, LinUCB) or (seeded.config.dim, seeded.config.regions) != (
            fresh.config.dim,
            fresh.config.regions,
        ):
            raise TrainingError(
                "initial bandit: not a LinUCB over this featurizer's context (dimension and "
                "kinds of query must match the server's [featurizer] settings)"
            )
        seeded.config = fresh.config  # alpha, epsilon, warm-up: this run's (as on restore)
        for name in self.rms:
            if name not in seeded.arms:
                seeded.add_arm(name)
            elif not seeded.is_enabled(name):
                seeded.enable_arm(name)
        return seeded

    def _render(self, item: PromptItem) -> str:
        content = format_documents(item.prompt, item.documents) if item.documents else item.prompt
        rendered: str = self.engine.render_chat([{"role": "user", "content": content}])
        return rendered

    # -- resume -----------------------------------------------------------------------------
    def _restore(self) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        ckpt = latest_checkpoint(self.out / "checkpoints")
        if ckpt is None:
            log.info("no checkpoint in %s: starting from the beginning", self.out)
            return
        data = load_checkpoint(ckpt)
        adapter = load_file(str(data["adapter_dir"] / "adapter_model.safetensors"))
        set_peft_model_state_dict(self.policy, adapter)
        for name, value in data["reference"].items():
            self.reference[name] = value.to(self.params[name].device)
        self.optimizer.load_state_dict(data["optimizer"])
        self.torch.set_rng_state(data["rng"]["torch"])
        if data["selector"] is not None and self.selector is not None:
            self.selector.load_state_dict(from_bytes(data["selector"]))
        try:
            self.reward.load_state_dict(from_bytes(data["squash"]))
        except ValueError as exc:
            raise TrainingError(f"cannot resume from {ckpt}: {exc}") from None
        s = data["state"]
        self.state = RunState(
            iteration=s["iteration"],
            step=s["step"],
            rm_counts=s["rm_counts"],
            eval_before=s.get("eval_before"),
            elapsed_s=s.get("elapsed_s", 0.0),
        )
        # Logs written after the checkpoint belong to the interrupted attempt: drop them.
        for name in ("steps.jsonl", "pairs.jsonl"):
            self._truncate_log(self.out / name, s["step"])
        log.info("resumed from %s (iteration %d, step %d)", ckpt, s["iteration"], s["step"])

    @staticmethod
    def _truncate_log(path: Path, last_step: int) -> None:
        if not path.exists():
            return
        keep = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] <= last_step
        ]
        write_atomic_text(path, "".join(line + "\n" for line in keep))

    def _checkpoint(self) -> Path:
        rng = {"torch": self.torch.get_rng_state()}
        return save_checkpoint(
            self.out / "checkpoints",
            self.state.iteration,
            save_adapter=lambda p: self.acc.unwrap_model(self.model).save_pretrained(p),
            reference=self.reference,
            optimizer_state=self.optimizer.state_dict(),
            selector_bytes=to_bytes(self.selector) if self.selector is not None else None,
            squash_bytes=to_bytes(self.reward),
            rng=rng,
            state={
                "iteration": self.state.iteration,
                "step": self.state.step,
                "rm_counts": self.state.rm_counts,
                "eval_before": self.state.eval_before,
                "elapsed_s": self.state.elapsed_s,
                "config": self.cfg.storable(),
            },
        )

    # -- the loop ---------------------------------------------------------------------------
    def _batches(self, iteration: int) -> list[list[int]]:
        order = np.random.default_rng(self.cfg.seed + iteration).permutation(len(self.items))
        bs = self.cfg.batch_size
        return [order[i : i + bs].tolist() for i in range(0, len(order), bs)]

    async def _current_adapter(self) -> Adapter | None:
        """How the new weights reach vLLM (`handover.py`): `merged` reloads the merged weights
        into the engine once per step (no adapter then); `lora` saves the adapter, which vLLM
        loads under a new id (it caches adapters by id). HF generation uses the model itself."""
        if self.cfg.engine == "hf" or self.state.step == 0:
            return None
        if self.cfg.handover == "merged":
            if self._sampler_step != self.state.step:
                folder = self.out / "sampler" / f"rank-{self.acc.process_index}"
                policy = self.acc.unwrap_model(self.model)
                dtype = handover.torch_dtype(getattr(self.engine, "dtype", "float32"))
                await asyncio.to_thread(handover.write_merged, policy, folder, dtype)
                await self.engine.load_weights(str(folder))
                self._sampler_step = self.state.step
            return None
        path = self.out / "adapters" / f"step-{self.state.step}"
        if not path.exists():
            self.acc.unwrap_model(self.model).save_pretrained(path)
            old = self.out / "adapters" / f"step-{self.state.step - 2}"
            shutil.rmtree(old, ignore_errors=True)
        return Adapter(f"policy-{self.state.step}", str(path), self.state.step + 1)

    async def _scores(
        self, arms: list[str], batch: list[int], gens: list[Any]
    ) -> list[list[float]]:
        out = []
        for arm, i, gen in zip(arms, batch, gens, strict=True):
            item = self.items[i]
            # RMs never see the gold reference while training: they judge as they would live.
            query = Query(item.prompt, self.prompts[i], item.documents, item.task, None)
            texts = [c.text for c in gen.completions]
            if arm == "ensemble":
                per_rm = [await self.rms[name].score(query, texts) for name in self.rms]
                out.append(normalized_mean(per_rm))
            else:
                out.append([float(s) for s in await self.rms[arm].score(query, texts)])
        return out

    def _response_ids(self, text: str, finish: str | None) -> list[int]:
        ids: list[int] = self.tok(text, add_special_tokens=False)["input_ids"]
        # A response that ended by itself is trained to end: its EOS is part of it.
        if finish == "stop" and self.tok.eos_token_id is not None:
            ids = [*ids, self.tok.eos_token_id]
        return ids

    def _logps(self, pairs: list[Pair], chunk: int = 8) -> tuple[Any, ...]:
        """Reference log-probs (no grad) for every pair, chunked to bound memory."""
        torch = self.torch
        from laser.server.training.dpo import response_logps

        rc, rr = [], []
        with torch.no_grad():
            self._swap_reference()
            try:
                for i in range(0, len(pairs), chunk):
                    part = pairs[i : i + chunk]
                    prompts = [self.prompt_ids[p.item] for p in part] * 2
                    resp = [p.chosen_ids for p in part] + [p.rejected_ids for p in part]
                    lp, _ = response_logps(
                        self.model, prompts, resp, self.tok.pad_token_id, self.cfg.max_model_len
                    )
                    rc.append(lp[: len(part)])
                    rr.append(lp[len(part) :])
            finally:
                self._swap_reference()
        return torch.cat(rc), torch.cat(rr)

    def _swap_reference(self) -> None:
        for name, p in self.params.items():
            p.data, self.reference[name] = self.reference[name], p.data

    def _dpo_step(self, pairs: list[Pair]) -> tuple[dict[str, float], Any]:
        """One optimiser step over all pairs, exact: gradients accumulate over chunks.

        Under `accelerate launch` with several processes every process holds every pair and
        trains on its share (`pairs[rank::world]`); DDP averages the gradients once, at the
        last chunk, which every process reaches the same number of times.
        """
        torch = self.torch
        from laser.server.training.dpo import dpo_loss, response_logps

        cfg, chunk = self.cfg, 8
        world, rank = self.acc.num_processes, self.acc.process_index
        mine = pairs[rank::world]
        ref_c, ref_r = self._logps(mine, chunk) if mine else (torch.zeros(0), torch.zeros(0))
        # Every process runs as many chunks as the busiest one (empty ones do a zero step).
        n_chunks = max(1, math.ceil(math.ceil(len(pairs) / world) / chunk))
        # The step's loss is the mean over ALL pairs; DDP divides by `world` again.
        scale = world / len(pairs)
        pcs, prs, nlls = [], [], []
        self.model.train()
        self.optimizer.zero_grad()
        for c in range(n_chunks):
            part = mine[c * chunk : (c + 1) * chunk]
            last = c == n_chunks - 1
            sync = contextlib.nullcontext() if last else self.acc.no_sync(self.model)
            with sync:
                if not part:  # keeps DDP's collective calls in step across processes
                    dummy = self.model(input_ids=torch.tensor([[self.tok.pad_token_id] * 2]))
                    self.acc.backward(dummy.logits.sum() * 0.0)
                    continue
                prompts = [self.prompt_ids[p.item] for p in part] * 2
                resp = [p.chosen_ids for p in part] + [p.rejected_ids for p in part]
                lp, nll = response_logps(
                    self.model, prompts, resp, self.tok.pad_token_id, cfg.max_model_len
                )
                k, i = len(part), c * chunk
                out = dpo_loss(
                    lp[:k],
                    lp[k:],
                    ref_c[i : i + k],
                    ref_r[i : i + k],
                    beta=cfg.beta,
                    chosen_nll=nll[:k],
                    nll_weight=cfg.nll_weight,
                )
                self.acc.backward(out.loss * (k * scale))
            pcs.append(lp[:k].detach())
            prs.append(lp[k:].detach())
            nlls.append(nll[:k].detach())
        self.optimizer.step()
        self.optimizer.zero_grad()
        values = torch.stack(
            [torch.cat(pcs), torch.cat(prs), ref_c, ref_r, torch.cat(nlls)]
            if pcs
            else [torch.zeros(0)] * 5
        )
        if world > 1:  # every process reports on every pair, in the original order
            from accelerate.utils import gather_object

            shards = gather_object([values.T.tolist()])
            merged: list[list[float]] = [[] for _ in pairs]
            for r, shard in enumerate(shards):
                for j, row in enumerate(shard):
                    merged[r + j * world] = row
            values = torch.tensor(merged).T
        full = dpo_loss(
            values[0],
            values[1],
            values[2],
            values[3],
            beta=cfg.beta,
            chosen_nll=values[4],
            nll_weight=cfg.nll_weight,
        )
        return full.metrics, full.per_pair

    def _choose(self, batch: list[int]) -> tuple[list[str], Any]:
        cfg = self.cfg
        if self.selector is None:
            return ["ensemble"] * len(batch), None
        # A seeded bandit may know RMs this run does not have: choose among the run's.
        among = {"among": list(self.rms)} if isinstance(self.selector, LinUCB) else {}
        if cfg.bandit_mode == "per_query":
            arms = [self.selector.select(self.contexts[i], **among).arm for i in batch]
            return arms, None
        x = self.contexts[batch].mean(axis=0)  # the paper: mean context of the batch
        return [self.selector.select(x, **among).arm] * len(batch), x

    async def _step(self, batch: list[int], iteration: int) -> dict[str, Any]:
        cfg, t0 = self.cfg, time.perf_counter()
        arms, x = self._choose(batch)
        sampling = Sampling(cfg.n, cfg.max_tokens, cfg.temperature)
        t_ad = time.perf_counter()
        adapter = await self._current_adapter()
        t_adapter = time.perf_counter() - t_ad  # handing the new weights to vLLM
        # Several processes (accelerate launch): each samples and scores its share of prompts.
        world, rank = self.acc.num_processes, self.acc.process_index
        mine, my_arms = batch[rank::world], arms[rank::world]
        gens = await self.engine.generate_batch([self.prompts[i] for i in mine], sampling, adapter)
        t_gen = time.perf_counter() - t_ad - t_adapter
        scores = await self._scores(my_arms, mine, gens)
        pairs: list[Pair] = []
        # Prompts whose candidates differ: an RM that yields no pair there failed to rank them.
        rankable = []
        for i, gen, sc in zip(mine, gens, scores, strict=True):
            texts = [c.text for c in gen.completions]
            if len({t for t in texts if t.strip()}) > 1:
                rankable.append(i)
            for c, r in build_pairs(sc, texts, cfg.pairs_per_prompt):
                pairs.append(
                    Pair(
                        i,
                        texts[c],
                        texts[r],
                        self._response_ids(texts[c], gen.completions[c].finish_reason),
                        self._response_ids(texts[r], gen.completions[r].finish_reason),
                    )
                )
        if world > 1:
            from accelerate.utils import gather_object

            pairs = [Pair(**p) for p in gather_object([vars(p) for p in pairs])]
            rankable = list(gather_object(rankable))
        record: dict[str, Any] = {
            "step": self.state.step + 1,
            "iteration": iteration + 1,
            "rm": arms[0] if len(set(arms)) == 1 else "mixed",
            "rms": dict(Counter(arms)),
            "tasks": [self.items[i].task for i in batch],
            "prompts": len(batch),
            "pairs": len(pairs),
        }
        if pairs:
            metrics, per_pair = self._dpo_step(pairs)
            record.update(metrics)
            if self.selector is not None and cfg.bandit_reward == "baseline":
                record["bandit_baseline"] = self.reward.baseline  # before this step
            record["bandit_reward"] = self._update_bandit(
                batch, arms, x, pairs, per_pair, metrics["loss"], set(rankable)
            )
        else:
            # Every candidate tied: nothing to learn from, and no loss.
            reward = self._update_bandit(batch, arms, x, [], None, None, set(rankable))
            record.update({"loss": None, "bandit_reward": reward})
            log.warning("step %d: no preference pairs (all candidates tied)", record["step"])
        with (self.out / "pairs.jsonl").open("a", encoding="utf-8") as f:
            for p in pairs if self.acc.is_main_process else []:
                f.write(
                    json.dumps(
                        {
                            "prompt": self.prompts[p.item],
                            "chosen": p.chosen,
                            "rejected": p.rejected,
                            "step": record["step"],
                            "rm": arms[batch.index(p.item)],
                        }
                    )
                    + "\n"
                )
        elapsed = time.perf_counter() - t0
        record.update(
            {
                "handover_s": round(t_adapter, 3),
                "generate_s": round(t_gen, 3),
                "step_s": round(elapsed, 3),
                "pairs_per_s": round(len(pairs) / elapsed, 3),
            }
        )
        return record

    def _update_bandit(
        self,
        batch: list[int],
        arms: list[str],
        x: Any,
        pairs: list[Pair],
        per_pair: Any,
        loss: float | None,
        rankable: set[int],
    ) -> float | None:
        """Update the selector; returns the (mean) reward it got, None without one.

        The rule (`bandit_reward`) is laser.server.training.reward's; `loss` is the step's
        loss over all its pairs (None without pairs), which the shared baseline takes in.
        An RM that gave no pair although the candidates differed (`rankable` prompts) could
        not rank them: it earns the lowest reward, 0 (left unrewarded, the warm start would
        keep choosing it). Where every candidate was the same text no RM could have done
        better: no reward.
        """
        if self.selector is None:
            return None
        if self.cfg.bandit_mode == "batch":
            if loss is None:
                if not rankable:
                    return None
                self.selector.update(arms[0], x, 0.0)
                return 0.0
            (reward,) = self.reward.rewards([loss], loss)
            self.selector.update(arms[0], x, reward)
            return reward
        # per_query: each prompt's RM is rewarded with the loss of that prompt's own pairs;
        # an RM that gave its prompt no pairs although the candidates differed earns 0.
        rewarded, tied = [], []
        for i, arm in zip(batch, arms, strict=True):
            mine = [k for k, p in enumerate(pairs) if p.item == i]
            if mine:
                rewarded.append((i, arm, float(per_pair[mine].mean())))
            elif i in rankable:
                tied.append((i, arm))
        for i, arm in tied:
            self.selector.update(arm, self.contexts[i], 0.0)
        if not rewarded or loss is None:
            return 0.0 if tied else None
        rewards = self.reward.rewards([v for _, _, v in rewarded], loss)
        for (i, arm, _), r in zip(rewarded, rewards, strict=True):
            self.selector.update(arm, self.contexts[i], r)
        return float(np.mean([*rewards, *[0.0] * len(tied)]))

    # -- evaluation on held-out prompts -----------------------------------------------------
    async def evaluate(self) -> dict[str, Any] | None:
        """Greedy accuracy on `eval_prompts` with the current policy (None without them)."""
        if not self.held_out:
            return None
        prompts = [self._render(it) for it in self.held_out]
        gens = await self.engine.generate_batch(
            prompts, Sampling(1, self.cfg.max_tokens, 0.0), await self._current_adapter()
        )
        by_task: dict[str, list[bool]] = {}
        for it, gen in zip(self.held_out, gens, strict=True):
            assert it.reference is not None
            ok = answers.matches(
                gen.completions[0].text, it.reference, answers.answer_kind(it.task, it.reference)
            )
            by_task.setdefault(it.task or "all", []).append(ok)
        flat = [v for vs in by_task.values() for v in vs]
        return {
            "accuracy": sum(flat) / len(flat),
            "items": len(flat),
            "by_task": {t: sum(v) / len(v) for t, v in by_task.items()},
        }

    def _status(self, state: str, last: dict[str, Any] | None, total: int, **extra: Any) -> None:
        if not self.acc.is_main_process:  # one writer per run
            return
        write_atomic_text(
            self.out / "status.json",
            json.dumps(
                {
                    "state": state,
                    "iteration": self.state.iteration,
                    "iterations": self.cfg.iterations,
                    "step": self.state.step,
                    "steps": total,
                    "last_loss": None if last is None else last.get("loss"),
                    "last_rm": None if last is None else last.get("rm"),
                    "rm_counts": self.state.rm_counts,
                    "updated": time.time(),
                    **extra,
                }
            ),
        )

    async def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        self._load()
        if self.resume:
            self._restore()
        steps_per_iter = math.ceil(len(self.items) / self.cfg.batch_size)
        total = steps_per_iter * self.cfg.iterations
        if self.state.eval_before is None and self.held_out:
            log.info("evaluating the starting policy on %d held-out items", len(self.held_out))
            self.state.eval_before = await self.evaluate() if self.acc.is_main_process else None
        bar = tqdm(
            total=total,
            initial=self.state.step,
            desc=f"train[{self.cfg.label}]",
            disable=not self.progress or not self.acc.is_main_process,
            unit="step",
        )
        last: dict[str, Any] | None = None
        t_start = time.perf_counter() - self.state.elapsed_s
        self._status("running", last, total)
        for iteration in range(self.state.iteration, self.cfg.iterations):
            self.reward.restart()  # the reference was re-synced: the loss jumps
            for batch in self._batches(iteration):
                if self.should_stop():
                    self._status("cancelled", last, total)
                    raise Cancelled(f"stopped at step {self.state.step}")
                last = await self._step(batch, iteration)
                self.state.step += 1
                for arm, count in last["rms"].items():
                    self.state.rm_counts[arm] = self.state.rm_counts.get(arm, 0) + count
                last["elapsed_s"] = round(time.perf_counter() - t_start, 3)
                if self.acc.is_main_process:
                    with (self.out / "steps.jsonl").open("a", encoding="utf-8") as f:
                        f.write(json.dumps(last) + "\n")
                loss = last.get("loss")
                bar.set_postfix(
                    loss="-" if loss is None else f"{loss:.4f}",
                    rm=last["rm"],
                    pairs_s=last["pairs_per_s"],
                )
                bar.update(1)
                self._status("running", last, total)
            # End of an iteration: the reference becomes the current policy.
            self.reference = {n: p.detach().clone() for n, p in self.params.items()}
            self.state.iteration = iteration + 1
            self.state.elapsed_s = time.perf_counter() - t_start
            if self.acc.is_main_process:
                self._checkpoint()
            self.acc.wait_for_everyone()
        bar.close()
        if not self.acc.is_main_process:
            return {}
        summary = await self._summary(total, time.perf_counter() - t_start)
        self._status("succeeded", last, total)
        return summary

    async def _summary(self, total: int, wall: float) -> dict[str, Any]:
        from laser.server.training.report import plot_training

        steps = [
            json.loads(line)
            for line in (self.out / "steps.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        eval_after = await self.evaluate()
        losses = [s["loss"] for s in steps if s.get("loss") is not None]
        rewarded: dict[str, list[float]] = {}
        for s in steps:
            if s.get("bandit_reward") is not None and s["rm"] != "mixed":
                rewarded.setdefault(s["rm"], []).append(s["bandit_reward"])
        summary = {
            "selector": self.cfg.label,
            "bandit_mode": self.cfg.bandit_mode,
            "bandit_reward": self.cfg.bandit_reward if self.selector is not None else None,
            "model": self.model_name,
            "iterations": self.cfg.iterations,
            "steps": total,
            "pairs": sum(s["pairs"] for s in steps),
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "rm_counts": self.state.rm_counts,
            # Which RM each step used, per iteration, and the mean reward each RM earned.
            "rm_by_step": {
                str(k): [s["rm"] for s in steps if s["iteration"] == k]
                for k in sorted({s["iteration"] for s in steps})
            },
            "rm_mean_reward": {
                rm: round(float(np.mean(v)), 4) for rm, v in sorted(rewarded.items())
            },
            "bandit_estimates": self._estimates(),
            "eval_before": self.state.eval_before,
            "eval_after": eval_after,
            "wall_s": round(wall, 1),
            "adapter": str(self.out / "checkpoints" / f"iter-{self.state.iteration}" / "adapter"),
        }
        write_atomic_text(self.out / "summary.json", json.dumps(summary, indent=1))
        try:
            plot_training(steps, self.out / "training.png", title=f"{self.cfg.label} training")
        except Exception as exc:  # a plot is never worth failing a finished run
            log.warning("plot failed: %s", exc)
        return summary

    def _estimates(self) -> dict[str, dict[str, float]] | None:
        """LinUCB's expectation and UCB per RM at the mean training context (None for the
        baselines): what LASeR would pick next, and how sure it is."""
        if not isinstance(self.selector, LinUCB):
            return None
        x = self.contexts.mean(axis=0)
        out = self.selector.predict(x)
        return {
            arm: {k: round(v, 4) for k, v in est.items()}
            for arm, est in out.items()
            if arm in self.rms
        }

    def shutdown(self) -> None:
        if hasattr(self, "engine"):
            self.engine.shutdown()


async def run_training(cfg: TrainConfig, **kwargs: Any) -> dict[str, Any]:
    """Build a Trainer, run it, shut its engine down."""
    trainer = Trainer(cfg, **kwargs)
    try:
        return await trainer.run()
    finally:
        trainer.shutdown()


__all__ = [
    "Cancelled",
    "Trainer",
    "TrainingError",
    "build_pairs",
    "run_training",
]
