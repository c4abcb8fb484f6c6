"""The reranking pipeline, framework-free: featurize, select an RM, generate n, score, log.

`Reranker` owns the serving bandit, and every method that reads or changes it (the request
path, feedback, admin changes of the RM set, following other replicas on a shared store,
snapshots, the summary) is here, so all bandit access stays on the event loop without locks;
that is why this module runs past 400 lines.

reranker = Reranker(settings, engine, featurizer, reward_models, store)
result = await reranker.generate(GenerateRequest(prompt="What is 2+2?", n=4), "req-1")
await reranker.feedback("req-1", 1.0)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, cast

import numpy as np

from laser.bandit import LinUCB, Selection, from_bytes, to_bytes
from laser.server import answers, logs
from laser.server.config import RewardModelSpec, Settings, redact
from laser.server.engines.base import Adapter, Engine, EngineError, Generation, Sampling
from laser.server.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    ServiceUnavailableError,
)
from laser.server.featurize import Featurizer, query_kind
from laser.server.limits import sampling_limits
from laser.server.metrics import Metrics
from laser.server.observe import ANSWER_KINDS, Observed, credits, observe, top_pick
from laser.server.priors import apply_priors, load_priors
from laser.server.prompts import Prepared, prepare
from laser.server.protocol import (
    ArmStatus,
    BanditConfigInfo,
    BanditSummary,
    Candidate,
    FeedbackResponse,
    GenerateRequest,
    GenerateResponse,
    PredictResponse,
    Usage,
)
from laser.server.rms.base import Query, RewardModel
from laser.server.rms.pool import AllRMsFailedError, RMPool
from laser.server.store.base import (
    NO_SELECTION,
    Decision,
    DuplicateFeedbackError,
    LogStore,
    SharedLogStore,
    UnknownDecisionError,
)
from laser.server.store.restore import restore_bandit

log = logging.getLogger("laser.server")

T = TypeVar("T")


def _is_correct(text: str, reference: str, task: str | None) -> bool:
    return answers.matches(text, reference, answers.answer_kind(task, reference))


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


class Reranker:
    """Owns the bandit; everything that touches it runs on the event loop (no locks)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        featurizer: Featurizer,
        reward_models: Mapping[str, RewardModel],
        store: LogStore,
        metrics: Metrics | None = None,
        build_rm: Callable[..., RewardModel] | None = None,
        unavailable: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.featurizer = featurizer
        models = dict(reward_models)
        self.build_rm = build_rm
        self.store = store
        # RMs that could not be built (from the config or a stored row): kept out, disabled,
        # shown in /health; the server starts without them.
        self.unavailable: dict[str, str] = dict(unavailable or {})
        # RMs added or switched off through the admin API survive restarts.
        disabled: set[str] = set()
        for name, spec_json, enabled in store.reward_model_rows():
            if name not in models and name not in self.unavailable and build_rm is not None:
                try:
                    models[name] = build_rm(RewardModelSpec.model_validate_json(spec_json), models)
                except Exception as exc:  # a stored row must never stop the server
                    self.unavailable[name] = f"stored entry cannot be built: {_reason(exc)}"
                    log.error("reward model %s disabled: %s", name, self.unavailable[name])
            if not enabled:
                disabled.add(name)
        self.metrics = metrics or Metrics()
        self.rms = RMPool(models, settings.breaker, self.metrics, settings.rm_timeout_s)
        # Faults of the engine and the store, for /health: the last error while the fault
        # lasts (cleared by the next success).
        self.engine_fault: str | None = None
        self.store_fault: str | None = None
        # The LoRA adapter serving uses (POST /v1/policy); None = the base model.
        self._adapter: Adapter | None = None
        self.policy_fault: str | None = None  # a saved policy that could not be restored
        self.bandit_config = settings.bandit.linucb(featurizer.dim, featurizer.regions)
        # Priors (a file of each RM's expected reward per kind of query) are folded in before
        # any feedback is replayed, once: the bandit's state remembers which it holds.
        self.priors = load_priors(settings.bandit.priors) if settings.bandit.priors else None
        self.bandit, self._feedback_seq = restore_bandit(
            store,
            self.bandit_config,
            self.rms.models,
            abstain_reward=settings.bandit.abstain_reward,
            prepare=self._with_priors,
        )
        self._since_snapshot = 0
        self._follow_lock = asyncio.Lock()
        self._rm_rev = 0  # shared store: the newest RM change taken in
        self._templating = ThreadPoolExecutor(1, thread_name_prefix="laser-templating")
        for name in disabled:
            if name in self.bandit.arms:
                self.bandit.disable_arm(name)

    def _with_priors(self, bandit: LinUCB) -> None:
        if self.priors is not None:
            apply_priors(bandit, self.priors, self.settings.bandit.prior_strength)

    # -- faults -----------------------------------------------------------------------------
    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.settings.retry_after_s)}

    async def _stored(self, op: str, call: Awaitable[T]) -> T:
        """Await a store call; SQLite locked / disk full / I/O error becomes a 503 (nothing
        was committed, so nothing is acknowledged) and is shown in /health until a write
        succeeds again."""
        try:
            result = await call
        except sqlite3.OperationalError as exc:
            why = redact(str(exc))  # a database URL in a driver's message loses its password
            self.store_fault = f"{op}: {why}"
            self.metrics.store_errors.labels(op).inc()
            log.warning("store %s failed: %s", op, why)
            raise ServiceUnavailableError(
                f"the store could not save the {op} ({why}); nothing was recorded, retry later",
                code="store_unavailable",
                headers=self._retry_after(),
            ) from exc
        if op != "read":
            self.store_fault = None
        return result

    async def read(self, call: Awaitable[T]) -> T:
        """A store read for a route (the decision log): a store fault is a 503 as always."""
        return await self._stored("read", call)

    def _select(self, x: np.ndarray) -> Selection:
        """The bandit's choice among enabled arms whose circuit is not open (all of them if
        every one is open). Propensities are over the arms actually eligible."""
        enabled = self.bandit.enabled_arms
        return self.bandit.select(x, among=self.rms.healthy(enabled) or enabled)

    def faults(self) -> list[str]:
        """Current faults, one line each; empty when healthy (`/health` status `ok`)."""
        out = self.rms.faults()
        out += [f"reward model {n}: unavailable: {why}" for n, why in self.unavailable.items()]
        if self.policy_fault is not None:
            out.append(f"policy: {self.policy_fault}")
        if self.engine_fault is not None:
            out.append(f"engine: {self.engine_fault}")
        if self.store_fault is not None:
            out.append(f"store: {self.store_fault}")
        return out

    def public_faults(self) -> list[str]:
        """`faults()` without their details (error texts name hosts, ports, paths): what the
        open `/health` of a server with an API key shows."""
        out = [
            f"reward model {name}: circuit {b.state}"
            if b.state != "closed"
            else f"reward model {name}: failing"
            for name, b in self.rms.breakers.items()
            if b.state != "closed" or b.consecutive
        ]
        out += [f"reward model {n}: unavailable" for n in self.unavailable]
        if self.policy_fault is not None:
            out.append("policy: not restored")
        if self.engine_fault is not None:
            out.append("engine: failing")
        if self.store_fault is not None:
            out.append("store: unavailable")
        return out

    def prepare(self, req: GenerateRequest, max_tokens: int) -> Prepared:
        return prepare(req, self.engine, max_tokens, self.settings.document_policy)

    # -- generate ---------------------------------------------------------------------------
    def _ranked_arms(self, sel: Selection) -> list[str]:
        alpha = self.bandit.config.alpha
        ucb = {a: sel.expectations[a] + alpha * sel.widths[a] for a in sel.expectations}
        rest = sorted((a for a in ucb if a != sel.arm), key=lambda a: -ucb[a])
        return [sel.arm, *rest]

    def _limits(self, req: GenerateRequest) -> tuple[int, int]:
        """(n, max_tokens) of a request, or a 400 over a limit (`limits.py`); a 409 or 400
        for a forced RM that is disabled, could not be built or does not exist."""
        n, max_tokens = sampling_limits(req, self.settings)
        forced = req.reward_model
        if forced is not None and (
            forced in self.unavailable
            or (forced in self.bandit.arms and not self.bandit.is_enabled(forced))
        ):
            why = "could not be built" if forced in self.unavailable else "is disabled"
            raise ConflictError(
                f"reward_model {forced!r} {why}; enabled: {', '.join(self.bandit.enabled_arms)}",
                param="reward_model",
                code="reward_model_disabled",
            )
        if forced is not None and forced not in self.rms:
            raise BadRequestError(
                f"unknown reward_model {req.reward_model!r}; available: "
                f"{', '.join(self.rms.models)}",
                param="reward_model",
            )
        return n, max_tokens

    def _policy(self, model: str | None) -> Adapter | None:
        """The adapter a request's `model` names (None: the base model); no `model`: the live
        policy. An unknown name is a 404, as with OpenAI."""
        if model is None:
            return self._adapter
        if model == self.engine.model_name:
            return None
        if self._adapter is not None and model == self._adapter.name:
            return self._adapter
        served = [self.engine.model_name, *([self._adapter.name] if self._adapter else [])]
        raise NotFoundError(
            f"the model {model!r} does not exist here; served: {', '.join(served)}",
            param="model",
            code="model_not_found",
        )

    async def _sample(self, prompt: str, sampling: Sampling, adapter: Adapter | None) -> Generation:
        # Greedy decoding gives n copies of one text (vLLM refuses n > 1 with temperature 0):
        # sample once, hand back n copies; the decision is logged as `selection: "none"`.
        copies = sampling.n if sampling.temperature == 0 else 1
        if copies > 1:
            sampling = dataclasses.replace(sampling, n=1)
        try:
            g = await self.engine.generate(prompt, sampling, adapter)
        except EngineError as exc:
            self.metrics.engine_errors.inc()
            self.engine_fault = f"{exc}"[:300]
            raise ServiceUnavailableError(
                f"generation failed: {exc}", code="engine_error", headers=self._retry_after()
            ) from exc
        self.engine_fault = None
        if copies > 1:
            g = dataclasses.replace(g, completions=g.completions * copies)
        return g

    def _choose(self, x: np.ndarray, forced: str | None) -> tuple[Selection, list[str]]:
        """The bandit's selection and the order in which RMs are tried: the chosen one (or
        the one the request forces) first, then the others by UCB (fallbacks). The bandit is
        asked even for a forced request: the log records how likely its policy was to pick
        the forced RM."""
        sel = self._select(x)
        if forced is not None:
            return sel, [forced, *[a for a in self._ranked_arms(sel) if a != forced]]
        return sel, self._ranked_arms(sel)

    async def _timed(self, timings: dict[str, float], stage: str, call: Awaitable[T]) -> T:
        t = time.perf_counter()
        result = await call
        timings[stage] = time.perf_counter() - t
        return result

    async def generate(
        self, req: GenerateRequest, request_id: str, check_id: bool = True
    ) -> GenerateResponse:
        """Fit the prompt, sample n candidates while the context is computed, let the bandit
        pick an RM, score with it (falling back on faults), log the decision durably, answer."""
        n, max_tokens = self._limits(req)
        adapter = self._policy(req.model)
        # Ids the caller chose are checked before any work; our own uuid4 ids need no
        # round trip (the primary key still guards both).
        if check_id and await self._stored("read", self.store.get_decision(request_id)) is not None:
            raise ConflictError(f"request id {request_id!r} was used already", param="id")
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        # Templating and tokenizing are CPU work proportional to the input: off the loop, on
        # one thread, so requests never use the tokenizer at the same time.
        loop = asyncio.get_running_loop()
        prep = await loop.run_in_executor(self._templating, self.prepare, req, max_tokens)
        timings["prepare"] = time.perf_counter() - t0
        sampling = Sampling(n, max_tokens, req.temperature, req.top_p, req.stop)  # type: ignore[arg-type]
        featurize = asyncio.to_thread(
            self.featurizer.features, prep.question, bool(prep.documents), req.task
        )
        # The featurizer and the engine work at the same time: the context is ready long
        # before the candidates are.
        x, gen = await asyncio.gather(
            self._timed(timings, "featurize", featurize),
            self._timed(timings, "generate", self._sample(prep.prompt, sampling, adapter)),
        )
        t = time.perf_counter()
        sel, order = self._choose(x, req.reward_model)
        timings["select"] = time.perf_counter() - t

        texts = [c.text for c in gen.completions]
        query = Query(prep.question, prep.prompt, prep.documents, req.task, req.reference)
        distinct = len(set(texts)) > 1
        known: dict[str, list[float]] = {}  # every RM's scores made for this request
        try:
            used, scores = await self._timed(
                timings, "score", self._score(order, query, texts, known, req.reward_model)
            )
        except AllRMsFailedError as exc:
            raise ServiceUnavailableError(
                "every reward model failed",
                code="reward_models_failed",
                headers=self._retry_after(),
            ) from exc
        how = "forced" if req.reward_model is not None else "bandit"
        if used != order[0]:
            drawn = known.get(order[0])
            how = "abstain" if drawn is not None and top_pick(drawn) is None else "fallback"
        if not distinct or (how in ("bandit", "abstain") and top_pick(scores) is None):
            # One candidate, all alike, or no RM of the bandit's order with a preference: no
            # RM could matter. (A forced or fallback row keeps its label.)
            how = NO_SELECTION
        # The logged policy's probability of the RM that scored: the draw's own propensity
        # for a bandit decision; for forced and fallback rows (marked by `how`, excluded by
        # estimators) what the bandit would have given it (0 when it was not eligible).
        propensity = sel.probabilities.get(used, 0.0)
        logs.note(rm=used)
        best = int(np.argmax(scores))
        qkind = query_kind(prep.question, bool(prep.documents), req.task)
        self.metrics.rm_by_kind.labels(used, qkind).inc()
        observed = dataclasses.replace(
            observe(used, known, texts, best, ANSWER_KINDS.get(qkind)),
            timings_ms={k: round(v * 1000, 3) for k, v in timings.items()},
        )
        self.rms.stats[used].selected += 1
        self.metrics.rm_selected.labels(used, how).inc()
        decision = Decision(
            id=request_id,
            created=time.time(),
            prompt=prep.question,
            task=req.task,
            has_document=bool(prep.documents),
            arm=used,
            propensity=propensity,
            selection=how,
            context=x,
            scores=list(scores),
            chosen=best,
            model=self.engine.model_name if adapter is None else adapter.name,
            drawn_arm=None if req.reward_model is not None else sel.arm,
            probabilities=sel.probabilities,
            observed=observed,
            candidates=texts,
        )
        # A decision that cannot be written is not answered: 503, the caller retries.
        await self._timed(
            timings, "store", self._stored("decision", self.store.add_decision(decision))
        )
        correct = None
        if req.reference is not None:  # text comparison: CPU work, off the loop
            correct = await asyncio.to_thread(_is_correct, texts[best], req.reference, req.task)
        timings["total"] = time.perf_counter() - t0
        return self._respond(req, decision, prep, gen, timings, correct)

    async def _score(
        self,
        order: list[str],
        query: Query,
        texts: list[str],
        known: dict[str, list[float]],
        forced: str | None,
    ) -> tuple[str, list[float]]:
        """The cheap RMs first (side observations, `bandit.observe_ms_per_candidate`), then
        the first RM of `order` that scores and, unless the request forces one, prefers some
        candidate (an RM that scores all alike abstains: the next one chooses)."""
        distinct = len(set(texts)) > 1
        if distinct:
            enabled = set(self.bandit.enabled_arms)
            cheap = self.rms.cheap(
                [a for a in order if a in enabled], self.settings.bandit.observe_ms_per_candidate
            )
            await self.rms.score_each(cheap, query, texts, known)
        return await self.rms.score(
            order, query, texts, known, skip_abstaining=forced is None and distinct
        )

    def _respond(
        self,
        req: GenerateRequest,
        d: Decision,
        prep: Prepared,
        gen: Generation,
        timings: dict[str, float],
        correct: bool | None,
    ) -> GenerateResponse:
        for stage, secs in timings.items():
            self.metrics.stage_seconds.labels(stage).observe(secs)
        # Greedy candidates are copies of one sample (`_sample`): its tokens were made once.
        made = gen.completions[:1] if req.temperature == 0 else gen.completions
        completion_tokens = sum(c.tokens for c in made)
        self.metrics.candidates.inc(len(gen.completions))
        self.metrics.tokens.labels("prompt").inc(gen.prompt_tokens)
        self.metrics.tokens.labels("completion").inc(completion_tokens)
        text = gen.completions[d.chosen].text
        return GenerateResponse(
            id=d.id,
            text=text,
            reward_model=d.arm,
            score=d.scores[d.chosen],
            index=d.chosen,
            propensity=d.propensity,
            selection=d.selection,
            model=d.model,
            candidates=[
                Candidate(text=c.text, score=sc, finish_reason=c.finish_reason, tokens=c.tokens)
                for c, sc in zip(gen.completions, d.scores, strict=True)
            ]
            if req.return_candidates
            else None,
            usage=Usage(
                prompt_tokens=gen.prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=gen.prompt_tokens + completion_tokens,
            ),
            timings_ms={k: round(v * 1000, 3) for k, v in timings.items()},
            document_truncated=prep.truncated,
            correct=correct,
        )

    # -- feedback ---------------------------------------------------------------------------
    def _apply(
        self, arm: str, context: np.ndarray, reward: float, observed: Observed | None
    ) -> bool:
        """Fold one committed feedback into the bandit (the deciding RM, and every RM whose
        pick agreed or that abstained: `observe.credits`) and the RM statistics; False when
        its RM or context no longer fits the bandit (it stays in the log)."""
        applied = arm in self.bandit.arms and context.shape == (self.featurizer.dim,)
        if applied:
            for name, r in credits(arm, reward, observed, self.settings.bandit.abstain_reward):
                if name in self.bandit.arms:
                    self.bandit.update(name, context, r)
        if arm in self.rms.stats:
            st = self.rms.stats[arm]
            st.feedback += 1
            st.reward_sum += reward
        self._since_snapshot += 1
        return applied

    async def feedback(self, decision_id: str, reward: float) -> FeedbackResponse:
        try:
            seq, decision = await self._stored(
                "feedback", self.store.add_feedback(decision_id, reward)
            )
        except UnknownDecisionError:
            raise NotFoundError(f"no decision with id {decision_id!r}", param="id") from None
        except DuplicateFeedbackError:
            raise ConflictError(
                f"feedback for {decision_id!r} was given already; the first one stands",
                param="id",
            ) from None
        # Durable now; the bandit update follows (a crash here is repaired by replay). A
        # decision where no RM could matter is kept with its feedback but teaches no RM.
        teaches = decision.selection != NO_SELECTION
        if self.store.shared:
            # Replicas apply every feedback in commit order, this one's included, so they
            # all hold the same bandit. A failed read only delays it: the follower retries.
            try:
                await self._catch_up()
            except ServiceUnavailableError as exc:
                log.warning("feedback %d committed; applying it waits for the store: %s", seq, exc)
            applied = self._feedback_seq >= seq and decision.arm in self.bandit.arms
        else:
            applied = teaches and self._apply(
                decision.arm, decision.context, reward, decision.observed
            )
            self._feedback_seq = seq
        applied = applied and teaches
        self.metrics.feedback.labels(decision.arm).inc()
        self.metrics.feedback_reward.labels(decision.arm).observe(reward)
        await self._maybe_snapshot()
        return FeedbackResponse(
            id=decision_id, reward=reward, reward_model=decision.arm, applied=applied, seq=seq
        )

    async def _maybe_snapshot(self) -> None:
        if self._since_snapshot >= self.settings.bandit.snapshot_every:
            try:  # the feedback is committed: a failed snapshot must not turn it into an error
                await self.snapshot()
            except ServiceUnavailableError as exc:
                log.warning("bandit snapshot failed, will retry: %s", exc)

    # -- replicas sharing one store (PostgreSQL) --------------------------------------------
    async def _catch_up(self) -> None:
        """Apply every feedback committed (by any replica) after the last one applied, in
        commit order."""
        async with self._follow_lock:
            shared = cast(SharedLogStore, self.store)
            rows = await self._stored("read", shared.feedback_since(self._feedback_seq))
            if any(r.arm not in self.bandit.arms for r in rows):
                await self._sync_reward_models()  # an RM added on another replica
            for row in rows:
                if row.teaches:
                    self._apply(row.arm, row.context, row.reward, row.observed)
                self._feedback_seq = row.seq

    async def _sync_reward_models(self) -> None:
        """Take in RM changes (added, enabled, disabled) made on any replica."""
        shared = cast(SharedLogStore, self.store)
        changes = await self._stored("read", shared.reward_model_changes(self._rm_rev))
        for name, spec_json, enabled, rev in changes:
            self._rm_rev = max(self._rm_rev, rev)
            if name not in self.rms and name not in self.unavailable and self.build_rm:
                try:
                    spec = RewardModelSpec.model_validate_json(spec_json)
                    rm = await asyncio.to_thread(self.build_rm, spec, self.rms.models)
                except Exception as exc:
                    self.unavailable[name] = "added on another replica, cannot be built: " + (
                        _reason(exc)
                    )
                    log.error("reward model %s: %s", name, self.unavailable[name])
                else:
                    self.rms.add(name, rm)
                    log.info("reward model %s added (on another replica)", name)
            if name in self.rms and name not in self.bandit.arms:
                self.bandit.add_arm(name)
                self._with_priors(self.bandit)
            if name not in self.bandit.arms or name in self.unavailable:
                continue
            if enabled and not self.bandit.is_enabled(name):
                self.bandit.enable_arm(name)
            elif not enabled and self.bandit.is_enabled(name) and len(self.bandit.enabled_arms) > 1:
                self.bandit.disable_arm(name)

    async def follow(self, interval_s: float) -> None:
        """Run while serving on a shared store: other replicas' feedback and RM changes are
        applied within about `interval_s` of their commit."""
        failing: str | None = None
        while True:
            try:
                await self._catch_up()
                await self._sync_reward_models()
                await self._maybe_snapshot()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # shown in /health by _stored; retried next round
                if f"{exc}" != failing:  # once per distinct fault, not every round
                    failing = f"{exc}"
                    log.warning("following the shared store: %s", exc)
            else:
                if failing is not None:
                    log.info("following the shared store again")
                    failing = None
            await asyncio.sleep(interval_s)

    # -- admin ------------------------------------------------------------------------------
    async def add_reward_model(self, spec: RewardModelSpec) -> None:
        """A new RM while serving: a new bandit arm, starting from the prior."""
        if spec.name in self.bandit.arms or spec.name in self.rms:
            raise ConflictError(f"reward model {spec.name!r} exists already", param="name")
        if self.build_rm is None:
            raise BadRequestError("this server cannot build reward models at run time")
        try:
            rm = self.build_rm(spec, self.rms.models)
        except Exception as exc:  # bad options, a missing or broken model folder
            raise BadRequestError(
                f"cannot build {spec.name!r}: {type(exc).__name__}: {exc}"[:500], param="options"
            ) from exc
        await self._stored(
            "reward_model", self.store.put_reward_model(spec.name, spec.storable_json(), True)
        )
        self.rms.add(spec.name, rm)
        self.bandit.add_arm(spec.name)
        self._with_priors(self.bandit)

    async def set_enabled(self, name: str, enabled: bool) -> None:
        if name in self.unavailable and enabled:
            raise ConflictError(
                f"reward model {name!r} cannot be enabled: {self.unavailable[name]}",
                param="name",
                code="reward_model_unavailable",
            )
        if name not in self.rms and name not in self.unavailable:
            raise NotFoundError(f"no reward model {name!r}", param="name")
        if not enabled and self.bandit.enabled_arms == [name]:
            raise ConflictError("cannot disable the last enabled reward model", param="name")
        # The full spec is stored (options included), so the RM can be rebuilt from the row
        # after it leaves the config file.
        rows = {n: sj for n, sj, _ in await self._stored("read", self.store.reward_models())}
        configured = {s.name: s.storable_json() for s in self.settings.reward_models}
        spec_json = rows.get(name) or configured.get(name)
        if spec_json is None:  # built by the embedder without a spec (tests, tools)
            spec = {"name": name, "kind": self.rms.models[name].kind}
            spec_json = RewardModelSpec.model_validate(spec).storable_json()
        await self._stored("reward_model", self.store.put_reward_model(name, spec_json, enabled))
        if name not in self.bandit.arms:
            return
        if enabled:
            self.bandit.enable_arm(name)
        else:
            self.bandit.disable_arm(name)

    async def warmup(self) -> None:
        """One tiny generation and likelihood pass, so the first user request is not slow."""
        t = time.perf_counter()
        try:
            await self.engine.generate(
                self.engine.render_chat([{"role": "user", "content": "Hi"}]),
                Sampling(n=1, max_tokens=2, temperature=0.0),
            )
            await self.engine.loglikelihoods("Hi", ["there"])
            await asyncio.to_thread(self.featurizer.features, "warm up", False)
        except Exception as exc:  # the server still starts; requests will show the fault
            log.warning("warm-up failed: %s", exc)
        log.info("warm-up done in %.1f s", time.perf_counter() - t)

    # -- the served policy ------------------------------------------------------------------
    @property
    def adapter(self) -> Adapter | None:
        """The LoRA adapter generation uses; None: the base model."""
        return self._adapter

    async def try_adapter(self, adapter: Adapter) -> None:
        """Load `adapter` into the engine with a one-token generation; `EngineError` if it
        does not load (nothing changes then)."""
        await self.engine.generate(
            self.engine.render_chat([{"role": "user", "content": "Hi"}]),
            Sampling(n=1, max_tokens=1, temperature=0.0),
            adapter,
        )

    def use_adapter(self, adapter: Adapter | None) -> None:
        """Serve with `adapter` from the next request on (None: the base model)."""
        self._adapter = adapter

    def bandit_copy(self) -> LinUCB:
        """An independent copy of the serving bandit (e.g. to seed a training job)."""
        copy = LinUCB(self.bandit.config)
        copy.load_state_dict(from_bytes(to_bytes(self.bandit)))
        return copy

    async def predict(
        self, question: str, has_document: bool, task: str | None = None
    ) -> PredictResponse:
        x = await asyncio.to_thread(self.featurizer.features, question, has_document, task)
        return PredictResponse.model_validate({"arms": self.bandit.predict(x)})

    async def snapshot(self) -> None:
        # Bytes are taken on the loop, so they match _feedback_seq exactly.
        blob, seq = to_bytes(self.bandit), self._feedback_seq
        await self._stored("snapshot", self.store.add_snapshot(seq, blob))
        self._since_snapshot = 0

    def close(self) -> None:
        """Stop the templating thread (at shutdown, after the last request)."""
        self._templating.shutdown(wait=False, cancel_futures=True)

    def snapshot_sync(self) -> None:
        self.store.add_snapshot_sync(self._feedback_seq, to_bytes(self.bandit))
        self._since_snapshot = 0

    def arm_status(self, name: str) -> ArmStatus:
        status = self.rms.status(name)
        if name in self.unavailable:
            status["last_error"] = self.unavailable[name]
        known = name in self.bandit.arms
        return ArmStatus(
            enabled=known and self.bandit.is_enabled(name),
            available=name not in self.unavailable,
            updates=self.bandit.pulls[self.bandit.index(name)] if known else 0,
            **status,
        )

    def summary(self) -> BanditSummary:
        c = self.bandit.config
        names = [*self.bandit.arms, *(n for n in self.unavailable if n not in self.bandit.arms)]
        return BanditSummary(
            arms={name: self.arm_status(name) for name in names},
            config=BanditConfigInfo(
                dim=c.dim,
                alpha=c.alpha,
                ridge=c.ridge,
                epsilon=c.epsilon,
                warmup=c.warmup,
                regions=c.regions,
                context=self.featurizer.context,
            ),
            feedback_seq=self._feedback_seq,
        )
