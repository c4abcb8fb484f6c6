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
from laser.server.training.probe import ProbeMargins, build_probe, kind_of, load_probe, save_probe
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
        self.probe: ProbeMargins | None = None  # `probe` reward: built when the run starts
        self.state = RunState()

    # -- the loop ---------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        """Every iteration's steps, a checkpoint after each; the summary at the end."""
        from tqdm import tqdm

        acc = self.policy.acc
        if self.resume:
            self.state = restore_run(self.out, self.policy, self.selector, self.reward)
        total = math.ceil(len(self.items) / self.cfg.batch_size) * self.cfg.iterations
        if self.state.eval_before is None and self.cfg.eval_before_from:
            shared = json.loads(Path(self.cfg.eval_before_from).read_text())["eval_before"]
            if shared is None or shared.get("items") != len(self.held_out):
                raise TrainingError("eval_before_from: its eval_before is not over these items")
            self.state.eval_before = shared
        if self.state.eval_before is None and self.held_out:
            log.info("evaluating the starting policy on %d held-out items", len(self.held_out))
            self.state.eval_before = await self.evaluate() if acc.is_main_process else None
        # The run's wall time starts here: building the probe is part of what LASeR costs.
        t_start = time.perf_counter() - self.state.elapsed_s
        if self.cfg.bandit_reward == "probe" and self.selector is not None:
            await self._start_probe()
        bar = tqdm(
            total=total,
            initial=self.state.step,
            desc=f"train[{self.cfg.label}]",
            disable=not self.progress or not acc.is_main_process,
            unit="step",
        )
        last: dict[str, Any] | None = None
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
        timings["score_s"] = time.perf_counter() - t0 - sum(timings.values())
        pairs, rankable = self._pairs(mine, gens, scores)
        # 5. One DPO step; none when every candidate tied (nothing to learn, no loss).
        t_dpo = time.perf_counter()
        metrics, per_pair = self._dpo_step(pairs) if pairs else ({}, None)
        timings["dpo_s"] = time.perf_counter() - t_dpo
        # 6. The bandit's reward (the shared baseline is recorded as it was before).
        baseline, loss = self.reward.baseline, metrics.get("loss")
        t_reward = time.perf_counter()
        margins = await self._probe_after_step() if self.probe is not None and pairs else None
        reward = self._update_bandit(batch, arms, x, pairs, per_pair, loss, rankable, margins)
        timings["reward_s"] = time.perf_counter() - t_reward
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
        by_task = self.cfg.fixed_rm_by_task
        if by_task:  # the best fixed RM per kind of query
            default = self.cfg.fixed_rm or next(iter(by_task.values()))
            return [by_task.get(self.items[i].task or "", default) for i in batch]
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
        margins: dict[str, float] | None = None,
    ) -> float | None:
        """Step 6: reward the RM(s) the selector chose with the step's loss, by the rule
        `bandit_reward` (laser.server.training.reward); returns the (mean) reward they got,
        None without one. `loss` is the step's loss over all its pairs (None without pairs);
        `rankable`: the prompts whose candidates differed."""
        if self.selector is None:
            return None
        if self.cfg.bandit_reward == "probe":
            return self._probe_update(batch, arms, x, margins, rankable)
        if self.cfg.bandit_mode == "batch":
            assert x is not None  # the batch's context
            return reward_batch(self.selector, self.reward, arms[0], x, loss, bool(rankable))
        return reward_per_query(
            self.selector, self.reward, self.contexts, batch, arms, pairs, per_pair, loss, rankable
        )

    # -- the `probe` reward (laser.server.training.probe) --------------------------------------
    async def _start_probe(self) -> None:
        """Build the probe (or read the run's, on resume) and measure its starting margins."""
        pairs = load_probe(self.out)
        if pairs is None:
            log.info("building the probe: %d prompts per kind of query", self.cfg.probe_prompts)
            adapter = await self.sampler.adapter(self.state.step)
            sampling = Sampling(self.cfg.n, self.cfg.max_tokens, self.cfg.temperature)
            pairs = await build_probe(
                self.items,
                self.prompts,
                self.engine,
                self.rms,
                self.cfg.probe_prompts,
                sampling,
                adapter,
            )
            if self.policy.acc.is_main_process:
                save_probe(self.out, pairs)
        self.probe = ProbeMargins(pairs, self.prompts)
        if not self.reward.has_margins:
            await self.sampler.adapter(self.state.step)
            self.reward.probe_rewards([], await self.probe.measure(self.engine, self.policy))

    async def _probe_after_step(self) -> dict[str, float]:
        """The probe margins after this step's DPO update: the new weights are handed to the
        sampler now (the next step's hand-over is then free) and measured there."""
        assert self.probe is not None
        await self.sampler.adapter(self.state.step + 1)
        return await self.probe.measure(self.engine, self.policy)

    def _probe_update(
        self,
        batch: list[int],
        arms: list[str],
        x: Contexts | None,
        margins: dict[str, float] | None,
        rankable: set[int],
    ) -> float | None:
        """Reward each prompt's RM with its kind's margin change (once per kind and RM in
        `batch` mode); an RM that gave no pair where candidates differed earns 0."""
        assert self.selector is not None
        kinds = [kind_of(self.items[i]) for i in batch]
        if margins is None:  # no pairs, no update: 0 where the candidates differed
            failed = [(i, arm) for i, arm in zip(batch, arms, strict=True) if i in rankable]
            for i, arm in failed[:1] if x is not None else failed:
                self.selector.update(arm, self.contexts[i] if x is None else x, 0.0)
            return 0.0 if failed else None
        per_kind = self.reward.probe_rewards(kinds, margins)
        if x is not None:  # batch mode: one RM, the batch's context, its main kind's change
            r = per_kind.get(max(set(kinds), key=kinds.count))
            if r is not None:
                self.selector.update(arms[0], x, r)
            return r
        got = []
        for i, arm, k in zip(batch, arms, kinds, strict=True):
            if k in per_kind:
                self.selector.update(arm, self.contexts[i], per_kind[k])
                got.append(per_kind[k])
        return float(np.mean(got)) if got else None

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
                **{k: round(v, 3) for k, v in timings.items()},
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
        """This iteration's batches, shuffled by the run's seed (the same on resume). With
        `batch_by_task`, each batch holds one task's prompts and the tasks take turns."""
        rng = np.random.default_rng(self.cfg.seed + iteration)
        order = rng.permutation(len(self.items))
        bs = self.cfg.batch_size
        if not self.cfg.batch_by_task:
            return [order[i : i + bs].tolist() for i in range(0, len(order), bs)]
        by_task: dict[str, list[int]] = {}
        for i in order.tolist():
            by_task.setdefault(kind_of(self.items[i]), []).append(i)
        queues = [[ids[j : j + bs] for j in range(0, len(ids), bs)] for ids in by_task.values()]
        batches: list[list[int]] = []
        while any(queues):
            for q in queues:
                if q:
                    batches.append(q.pop(0))
        return batches

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
