"""LASeR's training loop (the paper's Algorithm 1), readable top to bottom.

Per batch of prompts, `Trainer._step` runs six steps, one call each:
1. `_context`: the prompts' features (mean over the batch in `batch` mode, per prompt in
   `per_query` mode), from the featurizer the server uses, built from the same settings
   (kind of query by default, its one-hot kinds being the warm start's regions);
2. `_choose`: the selector picks an RM (LinUCB for LASeR, configured as the server's: its
   warm start tries every RM `warmup` times per kind of query before UCB decides; fixed /
   random / sequential baselines; the ensemble uses all RMs and averages their normalised
   scores);
3. `_sample`: the CURRENT policy samples n responses per prompt, all prompts submitted
   together;
4. `_score`: the RM scores them; `_pairs`: the top response is "chosen" against ranks
   2..k+1 ("rejected");
5. `_dpo_step`: one DPO(+NLL) step on those pairs against the frozen reference;
6. `_update_bandit`: the bandit's reward (`bandit_reward`, laser.server.training.reward): by
   default the advantage of the step's loss over a running baseline shared by all RMs (a
   moving average of the previous steps' losses), squashed by the 20th/80th percentiles of
   past advantages, so RMs are compared fairly while the loss falls; or the paper's negative
   loss squashed by the percentiles of past rewards (`squashed_loss`).
After each pass over the prompts (an iteration) the reference is re-synced to the policy
(and the reward's baseline restarts) and a checkpoint is written.

    summary = asyncio.run(run_training(load_train_config("train.toml")))

What the loop works on is built once, before it starts (`parts.py`); the DPO step is
`dpo.py`'s, the sampler's handover `handover.py`'s, checkpoints and `--resume` `resume.py`'s
and the summary and plot `report.py`'s.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from laser.server.engines.base import Generation, Sampling
from laser.server.rms.base import Query
from laser.server.rms.builtin import normalized_mean
from laser.server.training.config import TrainConfig
from laser.server.training.dpo import (
    Pair,
    build_pairs,
    dpo_step,
    prompt_pairs,
    resync_reference,
)
from laser.server.training.handover import PolicySampler
from laser.server.training.parts import (
    Contexts,
    TrainingError,
    TrainingParts,
    build_parts,
    linucb_config,
    make_selector,
)
from laser.server.training.report import (
    append_pairs,
    bandit_estimates,
    held_out_accuracy,
    read_steps,
    summarize,
    write_report,
    write_status,
)
from laser.server.training.resume import RunState, restore_run, save_run
from laser.server.training.reward import BanditReward, reward_batch, reward_per_query

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger("laser.server.training")


class Cancelled(Exception):
    """`should_stop()` turned true between steps; the last checkpoint stands."""


class Trainer:
    """One training run. Build it (which loads its parts), then `await trainer.run()`, then
    `trainer.shutdown()`."""

    def __init__(
        self,
        cfg: TrainConfig,
        parts: TrainingParts | None = None,
        *,
        resume: bool = False,
        progress: bool = True,
        should_stop: Callable[[], bool] | None = None,
        cache_dir: Path | None = None,
        initial_bandit: Path | None = None,
    ) -> None:
        """`parts`: what `build_parts(cfg, cache_dir=..., initial_bandit=...)` builds (it is
        called when they are not given)."""
        if parts is None:
            parts = build_parts(cfg, cache_dir=cache_dir, initial_bandit=initial_bandit)
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.resume, self.progress = resume, progress
        self.should_stop = should_stop or (lambda: False)
        # The prompts: as given, as the policy sees them, tokenized, and as bandit contexts.
        self.items, self.held_out = parts.items, parts.held_out
        self.prompts, self.prompt_ids = parts.prompts, parts.prompt_ids
        self.contexts: Contexts = parts.contexts
        # The policy with its reference and optimiser, its sampler, the RMs, the selector.
        self.policy, self.model_name, self.engine = parts.policy, parts.model_name, parts.engine
        self.sampler = PolicySampler(parts.engine, parts.policy, cfg, self.out)
        self.rms, self.selector = parts.rms, parts.selector
        # The bandit's reward rule, with its running state (the shared loss baseline).
        per_step = cfg.batch_size if cfg.bandit_mode == "per_query" else 1
        self.reward = BanditReward(cfg.bandit_reward, cfg.baseline_weight, per_step)
        self.state = RunState()

    # -- the loop ---------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        """Every iteration's steps, a checkpoint after each; the summary at the end."""
        from tqdm import tqdm

        acc = self.policy.acc
        if self.resume:
            self.state = restore_run(self.out, self.policy, self.selector, self.reward)
        total = math.ceil(len(self.items) / self.cfg.batch_size) * self.cfg.iterations
        if self.state.eval_before is None and self.held_out:
            log.info("evaluating the starting policy on %d held-out items", len(self.held_out))
            self.state.eval_before = await self.evaluate() if acc.is_main_process else None
        bar = tqdm(
            total=total,
            initial=self.state.step,
            desc=f"train[{self.cfg.label}]",
            disable=not self.progress or not acc.is_main_process,
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
                self._log_step(last, t_start, bar, total)
            # End of an iteration: the reference becomes the current policy.
            resync_reference(self.policy)
            self.state.iteration = iteration + 1
            self.state.elapsed_s = time.perf_counter() - t_start
            if acc.is_main_process:
                save_run(self.out, self.state, self.policy, self.selector, self.reward, self.cfg)
            acc.wait_for_everyone()
        bar.close()
        if not acc.is_main_process:
            return {}
        summary = await self._summary(total, time.perf_counter() - t_start)
        self._status("succeeded", last, total)
        return summary

    async def _step(self, batch: list[int], iteration: int) -> dict[str, Any]:
        """The six steps on the prompts `batch` (indices into `items`); the step's record."""
        t0 = time.perf_counter()
        x = self._context(batch)  # 1. the batch's context (None: each prompt's own)
        arms = self._choose(batch, x)  # 2. the RM for each prompt
        # Several processes (accelerate launch): each samples and scores its share of prompts.
        world, rank = self.policy.acc.num_processes, self.policy.acc.process_index
        mine, my_arms = batch[rank::world], arms[rank::world]
        gens, timings = await self._sample(mine)  # 3. n responses per prompt
        scores = await self._score(my_arms, mine, gens)  # 4. scored; the top vs the next k
        pairs, rankable = self._pairs(mine, gens, scores)
        # 5. One DPO step; none when every candidate tied (nothing to learn, no loss).
        metrics, per_pair = self._dpo_step(pairs) if pairs else ({}, None)
        # 6. The bandit's reward (the shared baseline is recorded as it was before).
        baseline, loss = self.reward.baseline, metrics.get("loss")
        reward = self._update_bandit(batch, arms, x, pairs, per_pair, loss, rankable)
        return self._record(batch, iteration, arms, pairs, metrics, baseline, reward, timings, t0)

    def _context(self, batch: list[int]) -> Contexts | None:
        """Step 1: the batch's context, the mean of its prompts' (the paper's); None in
        `per_query` mode, where each prompt is chosen for on its own context."""
        if self.cfg.bandit_mode == "per_query":
            return None
        x: Contexts = self.contexts[batch].mean(axis=0)
        return x

    def _choose(self, batch: list[int], x: Contexts | None) -> list[str]:
        """Step 2: the RM for each prompt of `batch` ("ensemble" for the ensemble)."""
        if self.selector is None:
            return ["ensemble"] * len(batch)
        # A seeded bandit may know RMs this run does not have: choose among the run's.
        among = list(self.rms)
        if x is None:  # per_query
            return [self.selector.select(self.contexts[i], among=among).arm for i in batch]
        return [self.selector.select(x, among=among).arm] * len(batch)

    async def _sample(self, batch: list[int]) -> tuple[list[Generation], dict[str, float]]:
        """Step 3: n responses to each prompt of `batch` from the current policy, and how
        long handing its weights to the sampler and sampling took."""
        sampling = Sampling(self.cfg.n, self.cfg.max_tokens, self.cfg.temperature)
        t0 = time.perf_counter()
        adapter = await self.sampler.adapter(self.state.step)
        t_adapter = time.perf_counter() - t0  # handing the new weights to vLLM
        prompts = [self.prompts[i] for i in batch]
        gens = await self.engine.generate_batch(prompts, sampling, adapter)
        t_gen = time.perf_counter() - t0 - t_adapter
        return gens, {"handover_s": t_adapter, "generate_s": t_gen}

    async def _score(
        self, arms: list[str], batch: list[int], gens: list[Generation]
    ) -> list[list[float]]:
        """Step 4: each prompt's candidates scored by its RM (the ensemble: the mean of every
        RM's normalised scores)."""
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

    def _pairs(
        self, batch: list[int], gens: list[Generation], scores: list[list[float]]
    ) -> tuple[list[Pair], set[int]]:
        """Step 4, continued: the preference pairs (`build_pairs`) of every process, and the
        prompts whose candidates differ (an RM that yields no pair there failed to rank)."""
        pairs: list[Pair] = []
        rankable = []
        for i, gen, sc in zip(batch, gens, scores, strict=True):
            if len({c.text for c in gen.completions if c.text.strip()}) > 1:
                rankable.append(i)
            pairs += prompt_pairs(i, gen.completions, sc, self.cfg.pairs_per_prompt, self.policy)
        if self.policy.acc.num_processes > 1:
            from accelerate.utils import gather_object

            pairs = [Pair(**p) for p in gather_object([vars(p) for p in pairs])]
            rankable = list(gather_object(rankable))
        return pairs, set(rankable)

    def _dpo_step(self, pairs: list[Pair]) -> tuple[dict[str, float], torch.Tensor]:
        """Step 5: one exact DPO(+NLL) step on all pairs (`dpo.dpo_step`): its metrics and
        each pair's loss."""
        return dpo_step(self.policy, pairs, self.prompt_ids, self.cfg)

    def _update_bandit(
        self,
        batch: list[int],
        arms: list[str],
        x: Contexts | None,
        pairs: list[Pair],
        per_pair: torch.Tensor | None,
        loss: float | None,
        rankable: set[int],
    ) -> float | None:
        """Step 6: reward the RM(s) the selector chose with the step's loss, by the rule
        `bandit_reward` (laser.server.training.reward); returns the (mean) reward they got,
        None without one. `loss` is the step's loss over all its pairs (None without pairs);
        `rankable`: the prompts whose candidates differed."""
        if self.selector is None:
            return None
        if self.cfg.bandit_mode == "batch":
            assert x is not None  # the batch's context
            return reward_batch(self.selector, self.reward, arms[0], x, loss, bool(rankable))
        return reward_per_query(
            self.selector, self.reward, self.contexts, batch, arms, pairs, per_pair, loss, rankable
        )

    # -- the step's record and logs ---------------------------------------------------------
    def _record(
        self,
        batch: list[int],
        iteration: int,
        arms: list[str],
        pairs: list[Pair],
        metrics: dict[str, float],
        baseline: float | None,
        reward: float | None,
        timings: dict[str, float],
        t0: float,
    ) -> dict[str, Any]:
        """The step's record for `steps.jsonl`, with `_sample`'s timings and the whole
        step's (from `t0`); its pairs are appended to `pairs.jsonl`."""
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
            record.update(metrics)
            if self.selector is not None and self.cfg.bandit_reward == "baseline":
                record["bandit_baseline"] = baseline
            record["bandit_reward"] = reward
        else:
            record.update({"loss": None, "bandit_reward": reward})
            log.warning("step %d: no preference pairs (all candidates tied)", record["step"])
        written = pairs if self.policy.acc.is_main_process else []  # one writer per run
        rm_of = dict(zip(batch, arms, strict=True))
        append_pairs(self.out, record["step"], written, self.prompts, rm_of)
        elapsed = time.perf_counter() - t0
        record.update(
            {
                "handover_s": round(timings["handover_s"], 3),
                "generate_s": round(timings["generate_s"], 3),
                "step_s": round(elapsed, 3),
                "pairs_per_s": round(len(pairs) / elapsed, 3),
            }
        )
        return record

    def _log_step(self, record: dict[str, Any], t_start: float, bar: tqdm[Any], total: int) -> None:
        """Count the finished step in the run's state; log it to `steps.jsonl`, the progress
        bar and `status.json`."""
        self.state.step += 1
        for arm, count in record["rms"].items():
            self.state.rm_counts[arm] = self.state.rm_counts.get(arm, 0) + count
        record["elapsed_s"] = round(time.perf_counter() - t_start, 3)
        if self.policy.acc.is_main_process:
            with (self.out / "steps.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        loss = record.get("loss")
        bar.set_postfix(
            loss="-" if loss is None else f"{loss:.4f}",
            rm=record["rm"],
            pairs_s=record["pairs_per_s"],
        )
        bar.update(1)
        self._status("running", record, total)

    def _status(self, status: str, last: dict[str, Any] | None, total: int) -> None:
        if self.policy.acc.is_main_process:  # one writer per run
            write_status(self.out, status, self.state, self.cfg.iterations, total, last)

    def _batches(self, iteration: int) -> list[list[int]]:
        order = np.random.default_rng(self.cfg.seed + iteration).permutation(len(self.items))
        bs = self.cfg.batch_size
        return [order[i : i + bs].tolist() for i in range(0, len(order), bs)]

    # -- evaluation and the summary ---------------------------------------------------------
    async def evaluate(self) -> dict[str, Any] | None:
        """Greedy accuracy on `eval_prompts` with the current policy (None without them)."""
        adapter = await self.sampler.adapter(self.state.step) if self.held_out else None
        return await held_out_accuracy(self.engine, self.held_out, self.cfg.max_tokens, adapter)

    async def _summary(self, total: int, wall: float) -> dict[str, Any]:
        """`summary.json` and the plot, written; the summary."""
        steps = read_steps(self.out / "steps.jsonl")
        summary = summarize(
            self.cfg,
            steps,
            self.state,
            model=self.model_name,
            total=total,
            with_bandit=self.selector is not None,
            # LinUCB's estimates at the mean training context: what it would pick next.
            estimates=bandit_estimates(self.selector, self.contexts.mean(axis=0), list(self.rms)),
            eval_after=await self.evaluate(),
            wall_s=wall,
            adapter=self.out / "checkpoints" / f"iter-{self.state.iteration}" / "adapter",
        )
        write_report(self.out, summary, steps, title=f"{self.cfg.label} training")
        return summary

    def shutdown(self) -> None:
        self.engine.shutdown()


async def run_training(cfg: TrainConfig, **kwargs: Any) -> dict[str, Any]:
    """Build a Trainer (its parts first), run it, shut its engine down. `kwargs`: the
    Trainer's (`resume`, `progress`, `should_stop`, `cache_dir`, `initial_bandit`)."""
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
    "linucb_config",
    "make_selector",
    "run_training",
]
