"""The `probe` bandit reward: did the step move the policy the way the RMs agree on?

The loss-based rewards judge an RM by how easy its pairs are for the policy, which calls a
verifier weak exactly where it teaches something (its right-vs-wrong pairs are the ones the
policy does not prefer yet). The probe asks instead what a step DID to the policy, measured
on a small fixed set of label-free preference pairs of each kind of query:

1. At the start (`build_probe`) the first `probe_prompts` training prompts of each kind are
   sampled `n` times with the starting policy and every RM scores the samples; each prompt
   gives one pair, the consensus's top sample against its bottom one (the min-max normalised
   mean of all RMs, the score ensemble's ranking). No reference is read: the probe is what
   the RMs agree on, built once, at the ensemble's cost for a handful of prompts.
2. The policy's margin on a kind's probe is the mean over its pairs of
   `mean token logprob(chosen) - mean token logprob(rejected)` under the current weights
   (`ProbeMargins.measure`, at engine speed with vLLM: its prompt logprobs over the weights
   the sampler holds after the hand-over).
3. After each DPO step the margins are measured again; the RM the step used for prompts of
   kind k earns the change of kind k's margin, `after - before`, against a moving average of
   that kind's earlier changes, squashed to [0, 1] by the 20th/80th percentiles of the last
   20 such advantages (`ProbeReward`). One step's change is its
   own doing: the margins are measured right before and right after it. Batches are best
   one kind each (`batch_by_task`), so that a step's change belongs to one RM and one kind.

An RM earns more when training on its pairs generalises to other prompts of the same kind in
the direction the RMs' consensus points to. An RM whose pairs are noise moves the probe
little; one that contradicts the consensus moves it down. (`tests/test_train_reward.py`
shows LinUCB learning the right RM per kind with this reward on a synthetic case, where the
loss-based reward does not.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from laser.bandit import PercentileSquash
from laser.server.engines.base import Sampling
from laser.server.rms.base import Query
from laser.server.rms.builtin import normalized_mean

if TYPE_CHECKING:
    from laser.server.data import PromptItem
    from laser.server.engines.base import Adapter, Engine
    from laser.server.rms.base import RewardModel
    from laser.server.training.parts import Policy

PROBE_FILE = "probe.json"
PROBE_WINDOW = 20
"""The squash's percentiles are those of the last this-many margin changes."""


@dataclass(frozen=True)
class ProbePair:
    kind: str
    item: int  # the training prompt it came from
    chosen: str
    rejected: str


def kind_of(item: PromptItem) -> str:
    return item.task or "all"


async def build_probe(
    items: Sequence[PromptItem],
    prompts: Sequence[str],
    engine: Engine,
    rms: dict[str, RewardModel],
    per_kind: int,
    sampling: Sampling,
    adapter: Adapter | None = None,
) -> list[ProbePair]:
    """One consensus pair for each of the first `per_kind` prompts of every kind (see the
    module docstring); a prompt whose samples all tie under the consensus gives none."""
    chosen: list[int] = []
    seen: dict[str, int] = {}
    for i, it in enumerate(items):
        k = kind_of(it)
        if seen.get(k, 0) < per_kind:
            seen[k] = seen.get(k, 0) + 1
            chosen.append(i)
    gens = await engine.generate_batch([prompts[i] for i in chosen], sampling, adapter)
    pairs = []
    for i, gen in zip(chosen, gens, strict=True):
        it = items[i]
        texts = [c.text for c in gen.completions]
        if len({t for t in texts if t.strip()}) < 2:
            continue
        query = Query(it.prompt, prompts[i], it.documents, it.task, None)  # no reference
        per_rm = [[float(s) for s in await rm.score(query, texts)] for rm in rms.values()]
        consensus = normalized_mean(per_rm)
        top, bottom = int(np.argmax(consensus)), int(np.argmin(consensus))
        if consensus[top] > consensus[bottom] and texts[top] != texts[bottom]:
            pairs.append(ProbePair(kind_of(it), i, texts[top], texts[bottom]))
    return pairs


def save_probe(out: Path, pairs: list[ProbePair]) -> None:
    (out / PROBE_FILE).write_text(json.dumps([asdict(p) for p in pairs], indent=1))


def load_probe(out: Path) -> list[ProbePair] | None:
    path = out / PROBE_FILE
    if not path.is_file():
        return None
    return [ProbePair(**p) for p in json.loads(path.read_text())]


class ProbeMargins:
    """Measures the current policy's margin on each kind's probe pairs."""

    def __init__(self, pairs: list[ProbePair], prompts: Sequence[str]) -> None:
        self.pairs, self.prompts = pairs, prompts

    @property
    def kinds(self) -> list[str]:
        return sorted({p.kind for p in self.pairs})

    async def measure(self, engine: Engine, policy: Policy | None = None) -> dict[str, float]:
        """{kind: mean margin}. With a vLLM engine holding the policy's weights: its prompt
        logprobs (`current_loglikelihoods`); otherwise a forward pass of `policy` itself."""
        current = getattr(engine, "current_loglikelihoods", None)
        if current is not None:
            scored = await asyncio.gather(
                *(current(self.prompts[p.item], [p.chosen, p.rejected]) for p in self.pairs)
            )
            margins = [c - r for c, r in scored]
        else:
            assert policy is not None, "an engine without current likelihoods needs the policy"
            margins = await asyncio.to_thread(self._torch_margins, policy)
        by_kind: dict[str, list[float]] = {}
        for p, m in zip(self.pairs, margins, strict=True):
            by_kind.setdefault(p.kind, []).append(float(m))
        return {k: float(np.mean(v)) for k, v in by_kind.items()}

    def _torch_margins(self, policy: Policy) -> list[float]:
        import torch

        from laser.server.training.dpo import response_logps

        tok = policy.tok
        out = []
        policy.model.eval()
        with torch.no_grad():
            for p in self.pairs:
                ids = tok(self.prompts[p.item], add_special_tokens=False)["input_ids"]
                resp = [
                    tok(t, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
                    for t in (p.chosen, p.rejected)
                ]
                _, nll = response_logps(policy.model, [ids, ids], resp, tok.pad_token_id)
                out.append(float(nll[1] - nll[0]))  # -nll is the mean token logprob
        return out


class ProbeReward:
    """The change of a kind's probe margin over a step, against a running baseline of that
    kind's earlier changes, squashed; keeps the last margins measured.

    The changes drift as training goes on (while the policy moves, later steps change the
    margins less, or Adam's momentum carries earlier steps' direction), and that drift is no
    RM's doing: measured raw, every later change is the smallest so far and the squash
    gives every RM 0. So, as the `baseline` loss reward does for the loss, each change is
    compared with an exponential moving average of the kind's previous changes (weight
    `weight` on the newest, whatever RM made them), and the advantage `change - baseline`
    is squashed to [0, 1] by the 20th/80th percentiles of the last `window` advantages. A
    kind's first change, with no baseline yet, earns 0.5."""

    kind = "probe_margin"

    def __init__(self, window: int = PROBE_WINDOW, weight: float = 0.3) -> None:
        self.squash = PercentileSquash(window)
        self.weight = weight
        self.baseline: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def rewards(self, kinds: Sequence[str], after: dict[str, float]) -> dict[str, float]:
        """The rewards, for prompts of each of `kinds`, of the step that led from the last
        margins to `after` (a kind without probe pairs gets none); `after` becomes the last
        margins of every kind."""
        out = {}
        for kind in dict.fromkeys(kinds):
            before, now = self.last.get(kind), after.get(kind)
            if before is None or now is None:
                continue
            change = now - before
            base = self.baseline.get(kind)
            out[kind] = 0.5 if base is None else float(self.squash(change - base))
            w = self.weight
            self.baseline[kind] = change if base is None else (1.0 - w) * base + w * change
        self.last.update(after)
        return out

    def state_dict(self) -> dict[str, Any]:
        inner = self.squash.state_dict()
        inner["meta"] = {
            **inner["meta"],
            "kind": self.kind,
            "last": dict(self.last),
            "baseline": dict(self.baseline),
            "weight": self.weight,
        }
        return inner

    def load_state_dict(self, state: dict[str, Any]) -> None:
        meta = state["meta"]
        self.last = {str(k): float(v) for k, v in meta.get("last", {}).items()}
        self.baseline = {str(k): float(v) for k, v in meta.get("baseline", {}).items()}
        self.weight = float(meta.get("weight", self.weight))
        self.squash.load_state_dict(state)
