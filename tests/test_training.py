"""Training: the DPO loss against an independent computation, pair building, checkpoints, and
two real iterations of the loop on a tiny Llama built here (HF sampler, real MiniLM
featurizer, the built-in RMs), resumed exactly from a checkpoint."""

from __future__ import annotations

import asyncio
import errno
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from laser.bandit import from_bytes
from laser.server.config import default_reward_models
from laser.server.data import arithmetic_items, write_prompts
from laser.server.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from laser.server.training.config import TrainConfig
from laser.server.training.dpo import dpo_loss, response_logps
from laser.server.training.loop import Trainer, TrainingError, build_pairs, run_training

from .conftest import MODEL_CACHE


def test_dpo_loss_matches_hand_computation() -> None:
    pc, pr = [-10.0, -4.0, -7.5], [-12.0, -3.0, -7.5]
    rc, rr = [-11.0, -4.5, -6.0], [-11.5, -2.0, -9.0]
    nll = [1.2, 0.4, 0.9]
    beta, w = 0.1, 1.0
    expected_pairs = []
    for i in range(3):
        z = beta * ((pc[i] - rc[i]) - (pr[i] - rr[i]))
        expected_pairs.append(math.log1p(math.exp(-z)) + w * nll[i])
    out = dpo_loss(
        torch.tensor(pc),
        torch.tensor(pr),
        torch.tensor(rc),
        torch.tensor(rr),
        beta=beta,
        chosen_nll=torch.tensor(nll),
        nll_weight=w,
    )
    assert float(out.loss) == pytest.approx(sum(expected_pairs) / 3, rel=1e-6)
    assert out.per_pair.tolist() == pytest.approx(expected_pairs, rel=1e-6)
    m = out.metrics
    chosen_r = [beta * (pc[i] - rc[i]) for i in range(3)]
    rejected_r = [beta * (pr[i] - rr[i]) for i in range(3)]
    assert m["rewards/chosen"] == pytest.approx(sum(chosen_r) / 3, rel=1e-6)
    assert m["rewards/margins"] == pytest.approx(
        sum(c - r for c, r in zip(chosen_r, rejected_r, strict=True)) / 3, rel=1e-6
    )
    assert m["rewards/accuracies"] == pytest.approx(2 / 3)  # pair 2 prefers rejected
    assert m["nll_loss"] == pytest.approx(sum(nll) / 3, rel=1e-6)
    # Without the NLL term it is plain DPO; with the policy equal to the reference, log 2.
    z = torch.zeros(4)
    assert float(dpo_loss(z, z, z, z, beta=0.1).loss) == pytest.approx(math.log(2))


def test_build_pairs_top_vs_next_ranks() -> None:
    assert build_pairs([0.2, 0.9, 0.5, 0.1], ["a", "b", "c", "d"], 2) == [(1, 2), (1, 0)]
    assert build_pairs([0.5, 0.5, 0.5], ["a", "b", "c"], 2) == []  # all tied
    assert build_pairs([0.9, 0.1], ["same", "same"], 1) == []  # identical texts
    assert build_pairs([0.9, 0.1], ["  ", "x"], 1) == []  # empty chosen


def test_config_rejects_contradictions() -> None:
    with pytest.raises(ValueError, match="fixed_rm"):
        TrainConfig(selector="fixed")
    with pytest.raises(ValueError, match="not one of"):
        TrainConfig(selector="fixed", fixed_rm="nope")
    with pytest.raises(ValueError, match="per_query"):
        TrainConfig(selector="random", bandit_mode="per_query")
    with pytest.raises(ValueError, match="pairs_per_prompt"):
        TrainConfig(n=4, pairs_per_prompt=4)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer and chat template, random weights."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from laser.server import assets

    tok = AutoTokenizer.from_pretrained(assets.embedded_model(MODEL_CACHE))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_response_logps_match_token_by_token(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]]
    with torch.no_grad():
        summed, nll = response_logps(model, prompts, responses, pad_id=0)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0].log_softmax(-1)
        want = sum(float(logp[len(p) - 1 + j, tok]) for j, tok in enumerate(r))
        assert float(summed[i]) == pytest.approx(want, abs=1e-4)
        assert float(nll[i]) == pytest.approx(-want / len(r), abs=1e-4)


def _config(tiny_model: Path, data: Path, out: Path, **kw: Any) -> TrainConfig:
    prompts = data / "train.jsonl"
    if not prompts.exists():
        write_prompts(prompts, arithmetic_items(8, seed=1))
    base = {
        "prompts": str(prompts),
        "model": str(tiny_model),
        "engine": "hf",
        "output_dir": str(out),
        "n": 4,
        "pairs_per_prompt": 2,
        "batch_size": 4,
        "iterations": 2,
        "max_tokens": 10,
        "max_model_len": 256,
        "learning_rate": 5e-3,
        "seed": 3,
    }
    return TrainConfig(**{**base, **kw})


def _adapter(out: Path, iteration: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = out / "checkpoints" / f"iter-{iteration}" / "adapter" / "adapter_model.safetensors"
    return load_file(str(path))


def test_two_iterations_learn_and_resume_exactly(tiny_model: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    summary = asyncio.run(run_training(_config(tiny_model, tmp_path, full), progress=False))
    assert summary["steps"] == 4 and summary["pairs"] > 0

    # The log: one line per step, TRL's metric names, the chosen RM and its bandit reward.
    steps = [json.loads(line) for line in (full / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    trained = [s for s in steps if s["loss"] is not None]
    assert trained
    for s in trained:
        for key in ("rewards/chosen", "rewards/margins", "rewards/accuracies", "nll_loss"):
            assert math.isfinite(s[key])
        assert s["rm"] in {rm.name for rm in default_reward_models()}
        assert 0.0 <= s["bandit_reward"] <= 1.0
    if all(s["loss"] is not None for s in steps):
        # The shared baseline: none at an iteration's first step (reward 0.5), then the
        # moving average of the losses; iteration 2 restarts it (the reference re-synced).
        assert [s["bandit_baseline"] for s in steps][::2] == [None, None]
        assert [s["bandit_reward"] for s in steps][::2] == [0.5, 0.5]
        assert steps[1]["bandit_baseline"] == pytest.approx(steps[0]["loss"])
        # The warm start: 4 steps, 4 different RMs (every RM is tried twice first).
        assert len({s["rm"] for s in steps}) == 4
    pairs = [json.loads(line) for line in (full / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == summary["pairs"]
    assert {"prompt", "chosen", "rejected"} <= set(pairs[0])
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    assert (full / "training.png").stat().st_size > 1000

    # Parameters changed (LoRA B starts at zero) and the bandit learned from every step.
    lora_b = [v for k, v in _adapter(full, 2).items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().max()) > 0 for v in lora_b)
    ckpt = load_checkpoint(latest_checkpoint(full / "checkpoints"))  # type: ignore[arg-type]
    bandit = from_bytes(ckpt["selector"])
    # (a step without pairs is rewarded 0 when its RM tied candidates that differed)
    assert all(s["bandit_reward"] in (0.0, None) for s in steps if s["loss"] is None)
    assert sum(bandit["meta"]["pulls"]) == sum(s["bandit_reward"] is not None for s in steps)
    assert ckpt["state"]["step"] == 4 and ckpt["state"]["iteration"] == 2

    # The loss falls on a fixed batch: step 1's pairs, judged against the initial model.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    first = [p for p in pairs if p["step"] == steps[0]["step"]] or pairs[: len(pairs) // 2]

    def fixed_batch_loss(model: Any, ref: Any) -> float:
        def ids(text: str) -> list[int]:
            return list(tok(text, add_special_tokens=False)["input_ids"])

        prompts = [ids(p["prompt"]) for p in first] * 2
        resp = [ids(p["chosen"]) for p in first] + [ids(p["rejected"]) for p in first]
        k = len(first)
        with torch.no_grad():
            lp, nll = response_logps(model, prompts, resp, tok.pad_token_id)
            rlp, _ = response_logps(ref, prompts, resp, tok.pad_token_id)
        out = dpo_loss(lp[:k], lp[k:], rlp[:k], rlp[k:], beta=0.1, chosen_nll=nll[:k], nll_weight=1)
        return float(out.loss)

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    before = fixed_batch_loss(base, base)
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        str(full / "checkpoints" / "iter-2" / "adapter"),
    )
    assert fixed_batch_loss(tuned, base) < before

    # Resume: one iteration, stop, then --resume to two: bit-for-bit the same adapter.
    part = tmp_path / "part"
    asyncio.run(run_training(_config(tiny_model, tmp_path, part, iterations=1), progress=False))
    asyncio.run(run_training(_config(tiny_model, tmp_path, part), resume=True, progress=False))
    a, b = _adapter(full, 2), _adapter(part, 2)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    resumed = [json.loads(line) for line in (part / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in resumed] == [1, 2, 3, 4]
    assert [s["loss"] for s in resumed] == [s["loss"] for s in steps]
    # ... and the bandit chose and was rewarded the same: its and the reward's state resumed.
    for key in ("rm", "bandit_reward", "bandit_baseline"):
        assert [s.get(key) for s in resumed] == [s.get(key) for s in steps], key


def test_bad_inputs_fail_before_any_work(tmp_path: Path) -> None:
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    with pytest.raises(TrainingError, match=r"prompts.jsonl:2"):
        Trainer(TrainConfig(prompts=str(bad), output_dir=str(tmp_path / "o")))
    bad.write_text('{"prompt": "ok"}\nnot json\n')
    with pytest.raises(TrainingError, match=r"prompts.jsonl:2: not valid JSON"):
        Trainer(TrainConfig(prompts=str(bad), output_dir=str(tmp_path / "o")))
    good = tmp_path / "good.jsonl"
    write_prompts(good, arithmetic_items(2))
    with pytest.raises(TrainingError, match="not a model folder"):
        Trainer(TrainConfig(prompts=str(good), model=str(tmp_path / "missing")))
    with pytest.raises(TrainingError, match="is not a folder"):
        Trainer(
            TrainConfig(
                prompts=str(good),
                reward_models=[{"name": "rm", "kind": "hf", "options": {"path": "/nope"}}],
            )
        )


def test_failed_checkpoint_write_keeps_the_last_one(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=0.1)

    def write(iteration: int, fail: bool) -> Path:
        def save_adapter(path: Path) -> None:
            if fail:  # what a full disk looks like to the writer
                raise OSError(errno.ENOSPC, "No space left on device")
            path.mkdir()
            (path / "adapter_model.safetensors").write_bytes(b"x")

        return save_checkpoint(
            root,
            iteration,
            save_adapter=save_adapter,
            reference={"w": torch.ones(2) * iteration},
            optimizer_state=opt.state_dict(),
            selector_bytes=None,
            squash_bytes=b"",
            rng={"torch": torch.get_rng_state()},
            state={"iteration": iteration, "step": iteration * 2},
        )

    write(1, fail=False)
    with pytest.raises(OSError):
        write(2, fail=True)
    latest = latest_checkpoint(root)
    assert latest is not None and latest.name == "iter-1"
    assert load_checkpoint(latest)["state"]["step"] == 2
    assert not list(root.glob("*.tmp"))


def test_two_processes_under_accelerate_launch(tiny_model: Path, tmp_path: Path) -> None:
    """`accelerate launch` with 2 CPU processes (gloo DDP): the prompts of each batch are
    split between them and every step is logged once, with every pair."""
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    cmd = [
        str(bin_dir / "accelerate"),
        "launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(bin_dir / "laser-server"),
        "train",
        "--demo",
        "8",
        "--demo-eval",
        "4",
        "--engine",
        "hf",
        "--model",
        str(tiny_model),
        "--iterations",
        "1",
        "--batch-size",
        "4",
        "--n",
        "4",
        "--pairs-per-prompt",
        "2",
        "--max-tokens",
        "8",
        "--lr",
        "1e-3",
        "--output-dir",
        str(tmp_path / "ddp"),
        "--cache-dir",
        str(MODEL_CACHE),
        "--no-progress",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [json.loads(x) for x in (tmp_path / "ddp" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    assert all(s["prompts"] == 4 for s in steps)
    pairs = (tmp_path / "ddp" / "pairs.jsonl").read_text().splitlines()
    assert len(pairs) == sum(s["pairs"] for s in steps) > 0
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["steps"] == 2


@pytest.mark.parametrize(
    ("selector", "mode"), [("laser", "per_query"), ("ensemble", "batch"), ("sequential", "batch")]
)
def test_selectors_and_per_query_mode(
    tiny_model: Path, tmp_path: Path, selector: str, mode: str
) -> None:
    out = tmp_path / selector
    cfg = _config(tiny_model, tmp_path, out, iterations=1, selector=selector, bandit_mode=mode)
    summary = asyncio.run(run_training(cfg, progress=False))
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 2 and summary["steps"] == 2
    used = {rm for s in steps for rm in s["rms"]}
    if selector == "ensemble":
        assert used == {"ensemble"}
    elif selector == "sequential":  # one RM after another
        assert [s["rm"] for s in steps] == [rm.name for rm in default_reward_models()[:2]]
    else:  # per query: every prompt's RM is counted, and each was rewarded on its own
        assert sum(summary["rm_counts"].values()) == 8
        bandit = from_bytes(load_checkpoint(out / "checkpoints" / "iter-1")["selector"])
        trained_prompts = {p["prompt"] for p in map(json.loads, (out / "pairs.jsonl").open())}
        # (a prompt without pairs is rewarded 0 when its RM tied candidates that differed)
        assert len(trained_prompts) <= sum(bandit["meta"]["pulls"]) <= 8
