"""DPO (+NLL) on summed response log-probs, as LASeR trains (Rafailov et al. 2023; the NLL
term of iterative RPO, Pang et al. 2024). Metric names follow TRL's DPOTrainer.

    loss_i = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) + w * nll_i

where pi_c/pi_r are the policy's summed log-probs of the chosen/rejected response, ref_* the
frozen reference's, and nll_i the chosen response's mean token negative log-likelihood
under the policy.

>>> import torch
>>> out = dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.1)
>>> round(float(out.loss), 4)  # log 2: policy == reference
0.6931

`build_pairs` makes a step's preference pairs from its scored candidates; `dpo_step` takes
one exact optimiser step on them; `resync_reference` makes the policy the new reference.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from laser.server.engines.base import Completion
    from laser.server.training.config import TrainConfig
    from laser.server.training.parts import Policy


@dataclass
class DPOOutput:
    loss: torch.Tensor
    """Mean over pairs of the DPO loss plus `nll_weight` times the chosen NLL."""
    per_pair: torch.Tensor
    """Each pair's loss (DPO + weighted NLL), detached; grouped per prompt for `per_query`."""
    metrics: dict[str, float]


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    chosen_nll: torch.Tensor | None = None,
    nll_weight: float = 0.0,
) -> DPOOutput:
    """The loss over a batch of pairs; every argument is a 1-D tensor with one entry per pair."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    dpo = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    per_pair = dpo
    if chosen_nll is not None and nll_weight:
        per_pair = dpo + nll_weight * chosen_nll
    reward_c = (beta * chosen_ratio).detach()
    reward_r = (beta * rejected_ratio).detach()
    metrics = {
        "loss": float(per_pair.detach().mean()),
        "dpo_loss": float(dpo.detach().mean()),
        "rewards/chosen": float(reward_c.mean()),
        "rewards/rejected": float(reward_r.mean()),
        "rewards/accuracies": float((reward_c > reward_r).float().mean()),
        "rewards/margins": float((reward_c - reward_r).mean()),
        "logps/chosen": float(policy_chosen.detach().mean()),
        "logps/rejected": float(policy_rejected.detach().mean()),
    }
    if chosen_nll is not None:
        metrics["nll_loss"] = float(chosen_nll.detach().mean())
    return DPOOutput(per_pair.mean(), per_pair.detach(), metrics)


def response_logps(
    model: Any,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    max_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob, mean token NLL) of each response after its prompt, in one forward.

    Sequences are right-padded; prompts are cut from the left when prompt + response would
    exceed `max_len`, so the response is always scored whole.
    """
    seqs, starts = [], []
    for p, r in zip(prompts, responses, strict=True):
        p = list(p)
        if max_len is not None and len(p) + len(r) > max_len:
            p = p[len(p) + len(r) - max_len :]
        seqs.append(p + list(r))
        starts.append(len(p))
    width = max(len(s) for s in seqs)
    device = next(model.parameters()).device
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
    target_mask = torch.zeros((len(seqs), width - 1), dtype=torch.float32, device=device)
    for i, (s, start) in enumerate(zip(seqs, starts, strict=True)):
        ids[i, : len(s)] = torch.tensor(s, device=device)
        mask[i, : len(s)] = 1
        # Position t predicts token t+1: response tokens are targets start..len-1.
        target_mask[i, max(start - 1, 0) : len(s) - 1] = 1.0
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    logp = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:, None]).squeeze(-1)
    summed = (logp * target_mask).sum(-1)
    counts = target_mask.sum(-1).clamp(min=1.0)
    return summed, -summed / counts


@dataclass
class Pair:
    """A preference pair for the prompt `item`: its chosen and rejected responses."""

    item: int
    chosen: str
    rejected: str
    chosen_ids: list[int]
    rejected_ids: list[int]


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


def prompt_pairs(
    item: int, candidates: list[Completion], scores: list[float], k: int, policy: Policy
) -> list[Pair]:
    """Prompt `item`'s preference pairs (`build_pairs`) from its scored candidates."""
    pairs = []
    for c, r in build_pairs(scores, [c.text for c in candidates], k):
        chosen, rejected = candidates[c], candidates[r]
        pairs.append(
            Pair(
                item,
                chosen.text,
                rejected.text,
                policy.response_ids(chosen.text, chosen.finish_reason),
                policy.response_ids(rejected.text, rejected.finish_reason),
            )
        )
    return pairs


def dpo_step(
    policy: Policy, pairs: list[Pair], prompt_ids: list[list[int]], cfg: TrainConfig, chunk: int = 8
) -> tuple[dict[str, float], torch.Tensor]:
    """One optimiser step over all pairs, exact: gradients accumulate over chunks. Returns
    the step's metrics (over all pairs) and each pair's loss.

    Under `accelerate launch` with several processes every process holds every pair and
    trains on its share (`pairs[rank::world]`); DDP averages the gradients once, at the
    last chunk, which every process reaches the same number of times.
    """
    acc, model, pad_id = policy.acc, policy.model, policy.tok.pad_token_id
    world, rank = acc.num_processes, acc.process_index
    mine = pairs[rank::world]
    ref_c, ref_r = (
        reference_logps(policy, mine, prompt_ids, cfg, chunk)
        if mine
        else (torch.zeros(0), torch.zeros(0))
    )
    # Every process runs as many chunks as the busiest one (empty ones do a zero step).
    n_chunks = max(1, math.ceil(math.ceil(len(pairs) / world) / chunk))
    # The step's loss is the mean over ALL pairs; DDP divides by `world` again.
    scale = world / len(pairs)
    pcs, prs, nlls = [], [], []
    model.train()
    policy.optimizer.zero_grad()
    for c in range(n_chunks):
        part = mine[c * chunk : (c + 1) * chunk]
        last = c == n_chunks - 1
        sync = contextlib.nullcontext() if last else acc.no_sync(model)
        with sync:
            if not part:  # keeps DDP's collective calls in step across processes
                dummy = model(input_ids=torch.tensor([[pad_id] * 2]))
                acc.backward(dummy.logits.sum() * 0.0)
                continue
            prompts = [prompt_ids[p.item] for p in part] * 2
            resp = [p.chosen_ids for p in part] + [p.rejected_ids for p in part]
            lp, nll = response_logps(model, prompts, resp, pad_id, cfg.max_model_len)
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
            acc.backward(out.loss * (k * scale))
        pcs.append(lp[:k].detach())
        prs.append(lp[k:].detach())
        nlls.append(nll[:k].detach())
    policy.optimizer.step()
    policy.optimizer.zero_grad()
    values = torch.stack(
        [torch.cat(pcs), torch.cat(prs), ref_c, ref_r, torch.cat(nlls)]
        if pcs
        else [torch.zeros(0)] * 5
    )
    if world > 1:  # every process reports on every pair, in the original order
        values = _gathered(values, len(pairs), world)
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


def _gathered(values: torch.Tensor, n_pairs: int, world: int) -> torch.Tensor:
    """Every process's `values` (a row per quantity, a column per pair of its share
    `pairs[rank::world]`), merged into columns for all `n_pairs` pairs in their order."""
    from accelerate.utils import gather_object

    shards = gather_object([values.T.tolist()])
    merged: list[list[float]] = [[] for _ in range(n_pairs)]
    for r, shard in enumerate(shards):
        for j, row in enumerate(shard):
            merged[r + j * world] = row
    return torch.tensor(merged).T


def reference_logps(
    policy: Policy, pairs: list[Pair], prompt_ids: list[list[int]], cfg: TrainConfig, chunk: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's summed log-probs (no grad) of every pair's chosen and rejected
    response, chunked to bound memory."""
    rc, rr = [], []
    with torch.no_grad():
        _swap_reference(policy)
        try:
            for i in range(0, len(pairs), chunk):
                part = pairs[i : i + chunk]
                prompts = [prompt_ids[p.item] for p in part] * 2
                resp = [p.chosen_ids for p in part] + [p.rejected_ids for p in part]
                lp, _ = response_logps(
                    policy.model, prompts, resp, policy.tok.pad_token_id, cfg.max_model_len
                )
                rc.append(lp[: len(part)])
                rr.append(lp[len(part) :])
        finally:
            _swap_reference(policy)
    return torch.cat(rc), torch.cat(rr)


def _swap_reference(policy: Policy) -> None:
    """Swap the policy's trainable weights with the reference's (twice: back as before)."""
    for name, p in policy.params.items():
        p.data, policy.reference[name] = policy.reference[name], p.data


def resync_reference(policy: Policy) -> None:
    """The reference becomes the current policy (at the end of an iteration)."""
    for name, p in policy.params.items():
        policy.reference[name] = p.detach().clone()
