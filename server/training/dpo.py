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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


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
