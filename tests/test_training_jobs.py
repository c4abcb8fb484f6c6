"""Training jobs on a live server (real processes, real SQLite) and serving the result live.

The jobs train the embedded SmolLM2-135M with the HF sampler on a handful of prompts, so the
adapter they produce is one the server's vLLM engine can load."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from laser.server.data import arithmetic_items
from laser.server.training.config import TrainConfig
from laser.server.training.jobs import JobManager

from .conftest import MODEL_CACHE, LiveServer, make_settings
from .test_training import tiny_model  # noqa: F401  (fixture)

KEY = {"authorization": "Bearer job-key"}


def _job_body(iterations: int = 1, **kw: Any) -> dict[str, Any]:
    return {
        "items": [it.to_json() for it in arithmetic_items(4, seed=5)],
        "engine": "hf",
        "iterations": iterations,
        "batch_size": 2,
        "n": 3,
        "pairs_per_prompt": 1,
        "max_tokens": 8,
        "max_model_len": 512,
        "learning_rate": 1e-3,
        **kw,
    }


def _wait(client: httpx.Client, job_id: str, states: set[str], limit_s: float = 300) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/training/jobs/{job_id}", headers=KEY).json()
        if job["state"] in states:
            return job
        time.sleep(1.0)
    raise AssertionError(f"job {job_id} did not reach {states}: {job}")


@pytest.fixture(scope="module")
def lora_services(loop_thread: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A second engine, started with LoRA support (`engine.enable_lora`, off by default)."""
    from laser.server.services import load_services

    settings = make_settings(tmp_path_factory.mktemp("lora"), engine={"enable_lora": True})

    async def load() -> Any:
        return load_services(settings)

    svc = loop_thread.run(load())
    yield svc
    svc.shutdown()


def test_jobs_train_then_serve_the_adapter(
    start_server: Callable[..., LiveServer], lora_services: Any, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path / "data", api_key="job-key", engine={"enable_lora": True})
    live = start_server(settings, lora_services)
    with httpx.Client(base_url=live.url, timeout=120) as c:
        assert c.post("/v1/training/jobs", json=_job_body()).status_code == 401
        r = c.post("/v1/training/jobs", json=_job_body(prompts="/etc/passwd"), headers=KEY)
        assert r.status_code == 403 and r.json()["error"]["code"] == "path_not_allowed"
        r = c.post("/v1/training/jobs", json=_job_body(selector="fixed"), headers=KEY)
        assert r.status_code == 422 and "fixed_rm" in r.json()["error"]["message"]

        r = c.post("/v1/training/jobs", json=_job_body(), headers=KEY)
        assert r.status_code == 201, r.text
        job = r.json()
        assert job["state"] == "running"
        second = c.post("/v1/training/jobs", json=_job_body(), headers=KEY)
        assert second.status_code == 409 and second.json()["error"]["code"] == "job_running"

        done = _wait(c, job["id"], {"succeeded", "failed", "cancelled"})
        assert done["state"] == "succeeded", done["log_tail"]
        assert done["step"] == 2 and done["iteration"] == 1
        assert done["last_loss"] is not None
        assert sum(done["rm_counts"].values()) == 4
        assert done["adapter"] and Path(done["adapter"], "adapter_config.json").exists()
        assert c.get("/v1/training/jobs/job-nope", headers=KEY).status_code == 404

        # Serve the trained adapter without a restart, then go back to the base model.
        r = c.post("/v1/policy", json={"job_id": job["id"]}, headers=KEY)
        assert r.status_code == 200, r.text
        assert r.json()["adapter"]["name"] == job["id"]
        models = c.get("/v1/models").json()["data"]
        assert [m["id"] for m in models] == ["SmolLM2-135M-Instruct", job["id"]]
        assert models[1]["laser"]["live"] and not models[0]["laser"]["live"]
        assert models[1]["laser"]["adapter_path"] is None  # on-disk paths are for key holders
        keyed = c.get("/v1/models", headers=KEY).json()["data"]
        assert Path(keyed[1]["laser"]["adapter_path"], "adapter_config.json").exists()
        gen = c.post("/generate", json={"prompt": "What is 3 + 4?", "n": 2, "max_tokens": 8})
        assert gen.status_code == 200, gen.text
        r = c.post("/v1/policy", json={"path": "/etc"}, headers=KEY)
        assert r.status_code == 403
        # A job id is looked up, never used as a path.
        for bad in ("../../x", f"../{job['id']}", "job-nope"):
            r = c.post("/v1/policy", json={"job_id": bad}, headers=KEY)
            assert r.status_code == 404 and r.json()["error"]["param"] == "job_id", r.text
        r = c.post("/v1/policy", json={"base": True}, headers=KEY)
        assert r.status_code == 200 and r.json()["adapter"] is None
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["SmolLM2-135M-Instruct"]

        # A job seeded from what this server answered (its prompts and its bandit), then
        # cancelled: the job stops after its current step.
        # By default only prompts whose answer got feedback seed it: open generation alone
        # cannot choose what the policy learns.
        body = {**_job_body(iterations=50), "seed_from_server": True}
        del body["items"]
        r = c.post("/v1/training/jobs", json=body, headers=KEY)
        assert r.status_code == 400 and r.json()["error"]["param"] == "seed_prompts", r.text
        assert c.post("/feedback", json={"id": gen.json()["id"], "reward": 1}, headers=KEY)
        c.post("/generate", json={"prompt": "Name a color.", "n": 2, "max_tokens": 4})
        later = {**body, "seed_since": time.time() + 3600}
        r = c.post("/v1/training/jobs", json=later, headers=KEY)
        assert r.status_code == 400, r.text  # a window with nothing in it
        r = c.post("/v1/training/jobs", json=body, headers=KEY)
        assert r.status_code == 201, r.text
        long_id = r.json()["id"]
        job_dir = tmp_path / "data" / "training" / long_id
        seeded = (job_dir / "prompts.jsonl").read_text()
        assert "What is 3 + 4?" in seeded and "Name a color." not in seeded
        assert '"api_key"' not in (job_dir / "config.json").read_text()  # no token field
        assert (job_dir / "initial_bandit.npz").stat().st_size > 0
        _wait(c, long_id, {"running"})
        assert c.delete(f"/v1/training/jobs/{long_id}", headers=KEY).json()["state"] in {
            "cancelling",
            "cancelled",
        }
        assert _wait(c, long_id, {"cancelled", "failed", "succeeded"})["state"] == "cancelled"
        listed = c.get("/v1/training/jobs", headers=KEY).json()["data"]
        assert {j["id"] for j in listed} == {job["id"], long_id}


def test_job_killed_with_its_server_is_resumed_on_restart(
    tiny_model: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from laser.server.data import PromptItem

    jobs = JobManager(tmp_path, MODEL_CACHE)
    cfg = TrainConfig(
        model=str(tiny_model),
        engine="hf",
        iterations=2,
        batch_size=2,
        n=3,
        pairs_per_prompt=1,
        max_tokens=6,
        max_model_len=256,
        learning_rate=1e-3,
    )
    items: list[PromptItem] = arithmetic_items(4, seed=2)
    job = jobs.submit(cfg, items=items)
    assert job.pid is not None
    os.kill(job.pid, signal.SIGKILL)  # the job dies with the server
    jobs._procs[job.id].wait()
    jobs.close()

    restarted = JobManager(tmp_path, MODEL_CACHE)  # what a new server process does
    assert restarted.recover() == [job.id]
    deadline = time.monotonic() + 240
    state = restarted.get(job.id)
    while state.state == "running" and time.monotonic() < deadline:
        time.sleep(1.0)
        state = restarted.get(job.id)
    assert state.state == "succeeded", state.log_tail
    assert state.attempts == 2 and state.iteration == 2
    restarted.close()


def test_unknown_job_and_bad_items(start_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    live = start_server(make_settings(tmp_path / "d2"))
    with httpx.Client(base_url=live.url, timeout=60) as c:
        r = c.post("/v1/training/jobs", json=_job_body(items=[{"prompt": ""}]))
        assert r.status_code == 400 and "items[0]" in r.json()["error"]["message"]
        r = c.post("/v1/training/jobs", json={"engine": "hf"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompts"
        assert c.delete("/v1/training/jobs/job-x").status_code == 404
        r = c.post("/v1/policy", json={"job_id": "job-x"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "job_id"  # looked up first
        r = c.post("/v1/policy", json={"path": str(tmp_path)})
        assert r.status_code == 409  # the default engine has no LoRA support
        assert r.json()["error"]["code"] == "adapters_not_supported"
