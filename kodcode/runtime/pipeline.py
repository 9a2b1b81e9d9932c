"""The pipeline: five agents on actors, wired with backpressure, driven by the scheduler, resumable.

    supply ─► Proposer ─(gate)─► attempt queue ─► Solver ─► Tester ─► Judge ─► matrix ─► scheduler ─┬─► Rewriter ─► Reasoner
                                     ▲                                                             │
                                     └────────────────── another attempt ◄─────────────────────────┘

The matrix step (on by default, config `matrix`) runs every solution of the item against every test
file of it after each attempt and accepts a triplet by consensus; the scheduler then sees each
attempt's pass/fail against the accepted tests.

Every message is preceded by a committed store write that records where its item stands, so on resume
each item re-enters at its last committed state. The attempt queue is unbounded on purpose: the Judge
feeds it, and a bounded queue there would close a cycle through the Solver (deadlock); its size is
bounded anyway by the number of open items, which the supply loop caps.

Shutdown is by closing, in the order messages flow. A stop (target reached, questions exhausted, a
budget, a signal) ends the supply and closes the attempt queue, which cuts the only cycle; from then on
each actor is closed once every actor upstream of it has finished, so its backlog drains and nothing
sent to it is refused. Attempts left in the queue stay 'queued' in the store for the next run.

Facts kept once: the store owns question text and each attempt's durable stage; the pipeline keeps no
copy of either (a question travels in the messages of its attempt, and is read back from the store only
where no message carries it). The pipeline owns the run's item counts by state (seeded from the store on
resume, updated after each committed transition); the LLM budget owns spend.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from kodcode.agents.context import AgentContext
from kodcode.agents.judge import Judge
from kodcode.agents.matrix import Matrix, MatrixOutcome
from kodcode.agents.proposer import Proposer, QuestionGate
from kodcode.agents.reasoner import Reasoner
from kodcode.agents.rewriter import Rewriter
from kodcode.agents.solver import Solver
from kodcode.agents.sources import SourceMix
from kodcode.agents.tester import Tester
from kodcode.errors import BudgetExhausted, EndpointUnavailable
from kodcode.messages import AttemptResult, AttemptTask, ProposeTask, ReasonTask, RewriteTask
from kodcode.runtime.actor import Actor, StopHandling
from kodcode.runtime.mailbox import FifoMailbox, PriorityMailbox
from kodcode.runtime.scheduler import AttemptPolicy, paper_label
from kodcode.store.port import ITEM_STATES, TERMINAL_STATES

__all__ = ["Pipeline", "RunSummary"]

M = TypeVar("M")


@dataclass
class RunSummary:
    stop_reason: str = ""
    verified_before: int = 0
    verified: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    llm: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    outage: str | None = None        # set when an endpoint stayed down past --max-outage and stopped the run

    def as_dict(self) -> dict[str, Any]:
        return {
            "stop_reason": self.stop_reason,
            "verified_total": self.verified,
            "verified_this_run": self.verified - self.verified_before,
            "items": self.counts,
            "llm": self.llm,
            "elapsed_s": round(self.elapsed_s, 2),
            **({"outage": self.outage} if self.outage else {}),
        }


class Pipeline:
    def __init__(self, ctx: AgentContext, *, policy: AttemptPolicy, sources: SourceMix,
                 gate: QuestionGate | None = None, max_open: int | None = None) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.policy = policy
        self.sources = sources
        self.log = ctx.log
        concurrency = self.config.concurrency
        # Enough open questions to keep every LLM slot busy while some wait on the sandbox; with
        # concurrency 1 exactly one, which makes a run fully deterministic.
        self.max_open = max_open or concurrency + concurrency // 2
        self._proposer = Proposer(ctx, gate)
        self._solver = Solver(ctx)
        self._tester = Tester(ctx)
        judges = max(2, concurrency // 2)
        # One bound on sandbox runs for the Judge's trials and the matrix's cells, wherever they are called
        # from (the matrix runs at the scheduler's turn, which a Solver or Tester worker may take).
        sandbox_slots = anyio.CapacityLimiter(judges)
        self._judge = Judge(ctx, sandbox_slots)
        self._matrix = Matrix(ctx, sandbox_slots) if self.config.matrix.enabled else None
        self._rewriter = Rewriter(ctx)
        self._reasoner = Reasoner(ctx)
        retries = self.config.item_retries
        self.proposer: Actor[ProposeTask] = self._actor("proposer", self._propose, concurrency, FifoMailbox(concurrency), retries)
        self.solver: Actor[AttemptTask] = self._actor("solver", self._solve, concurrency, PriorityMailbox(), retries)
        self.tester: Actor[AttemptTask] = self._actor("tester", self._test, concurrency, FifoMailbox(concurrency), retries)
        self.judge: Actor[AttemptTask] = self._actor("judge", self._judge_attempt, judges,
                                                     FifoMailbox(concurrency), retries)
        self.rewriter: Actor[RewriteTask] = self._actor("rewriter", self._rewrite, max(1, concurrency // 2),
                                                        FifoMailbox(concurrency), retries)
        self.reasoner: Actor[ReasonTask] = self._actor("reasoner", self._reason, concurrency,
                                                       FifoMailbox(concurrency), retries)
        # In the order messages flow: closing them in this order drains each before the next (see above).
        self.actors = (self.proposer, self.solver, self.tester, self.judge, self.rewriter, self.reasoner)
        self._counts: Counter[str] = Counter()     # items by state; seeded from the store in _resume
        self._settled_at_start = 0
        self.attempts_judged = 0
        self.attempts_passed = 0
        self.rewrites_done = 0
        self._stop_reason: str | None = None
        self._target_reached = False
        self._stop_requested = anyio.Event()
        self._supply_wakeup = anyio.Event()
        self.summary = RunSummary()
        self._started = time.monotonic()

    def _actor(self, name: str, handler: Callable[[M], Awaitable[None]], workers: int, mailbox: Any,
               retries: int) -> Actor[M]:
        return Actor(name, handler, workers=workers, mailbox=mailbox, retries=retries,
                     on_failure=self._on_failure, describe=_describe, logger=self.log)

    # -- counts --------------------------------------------------------------------------------------

    def _move(self, from_state: str | None, to_state: str) -> None:
        """An item's committed state changed: keep the run's counts (the progress view's and the supply's)."""
        if from_state is not None:
            self._counts[from_state] -= 1
        self._counts[to_state] += 1
        if to_state in TERMINAL_STATES:
            self._supply_wakeup.set()

    def counts(self) -> dict[str, int]:
        return {state: self._counts[state] for state in ITEM_STATES}

    @property
    def verified(self) -> int:
        return self._counts["verified"]

    @property
    def _settled(self) -> int:
        return sum(self._counts[state] for state in TERMINAL_STATES)

    @property
    def _open_items(self) -> int:
        return self._counts["proposing"] + self._counts["open"]

    # -- sending -------------------------------------------------------------------------------------

    async def _send(self, actor: Actor[M], message: M, priority: float = 0.0) -> None:
        try:
            await actor.send(message, priority)
        except anyio.ClosedResourceError:
            pass   # that actor is closed (a stop): the store holds the item's state for the next run

    def _stop_at_target(self) -> None:
        self._target_reached = True
        self.request_stop(f"target reached: {self.verified} verified")

    @property
    def stopping(self) -> bool:
        return self._stop_reason is not None

    def request_stop(self, reason: str) -> None:
        """Stop intake: no new questions, no new attempts. Work already in flight finishes."""
        if self._stop_reason is not None:
            return
        self._stop_reason = reason
        self.log.info("stopping", reason=reason)
        queued = self.solver.mailbox
        assert isinstance(queued, PriorityMailbox)
        queued.close()
        queued.drain()               # queued attempts stay 'queued' in the store
        self._supply_wakeup.set()
        self._stop_requested.set()

    # -- handlers ----------------------------------------------------------------------------------------

    async def _propose(self, task: ProposeTask) -> None:
        proposal = await self._guard(self._proposer.handle(task))
        self._move("proposing", proposal.state)
        if proposal.admitted is not None:
            await self._schedule(task.item_id, 1, priority=self.policy.decide(()).priority, decided=False,
                                 question=proposal.admitted)

    async def _solve(self, task: AttemptTask) -> None:
        outcome = await self._guard(self._solver.handle(task))
        if self._matrix is not None and isinstance(outcome, AttemptTask) and outcome.stage == "test":
            accepted = await self.ctx.records.accepted_tests(outcome.item_id)
            if accepted is not None:
                # Verified already: this attempt only refines the label, and the accepted tests judge it.
                # A test file of its own would cost a Tester call and add nothing the matrix needs.
                await self.on_result(await self._guard(self._judge.judge_against(outcome, accepted)))
                return
            if self.config.matrix.reuse_tests:
                earlier = await self._guard(self._matrix.earlier_tests_passed(outcome))
                if earlier is not None:
                    await self.on_result(await self._guard(self._judge.judge_against(
                        outcome, earlier.tests, judged_by=f"tests of attempt {earlier.attempt}",
                        verdict=earlier.verdict)))
                    return
        await self._route(outcome)

    async def _test(self, task: AttemptTask) -> None:
        await self._route(await self._guard(self._tester.handle(task)))

    async def _judge_attempt(self, task: AttemptTask) -> None:
        await self._route(await self._guard(self._judge.handle(task)))

    async def _rewrite(self, task: RewriteTask) -> None:
        question = await self._guard(self._rewriter.handle(task))
        self.rewrites_done += 1
        if question is not None:
            await self._sample_responses(task.item_id, task.style, question, task.solution, task.tests, task.entry_point)

    async def _reason(self, task: ReasonTask) -> None:
        await self._guard(self._reasoner.handle(task))

    async def _sample_responses(self, item_id: str, style: str, question: str, solution: str, tests: str,
                                entry_point: str) -> None:
        for sample in range(self.config.reasoning_samples):
            await self._send(self.reasoner, ReasonTask(item_id, style, sample, question, solution, tests, entry_point))

    async def _guard(self, work: Awaitable[M]) -> M:
        """Conditions of the run, not of the item: stop the run and leave the item where the store has it
        (never on_failure: an item is not failed for a spent budget or an endpoint that stayed down)."""
        try:
            return await work
        except BudgetExhausted as exc:
            self.request_stop(str(exc))
            raise StopHandling from exc
        except EndpointUnavailable as exc:
            if self.summary.outage is None:
                self.summary.outage = str(exc)
            self.request_stop(str(exc))
            raise StopHandling from exc

    async def _route(self, outcome: AttemptTask | AttemptResult) -> None:
        if isinstance(outcome, AttemptResult):
            await self.on_result(outcome)
        elif outcome.stage == "test":
            await self._send(self.tester, outcome)
        else:
            await self._send(self.judge, outcome)

    async def _on_failure(self, message: object, reason: str) -> None:
        """Supervision gave up on a message: record why, and let the item go on where that makes sense."""
        records = self.ctx.records
        if isinstance(message, ProposeTask):
            await records.set_question(message.item_id, None, {}, "failed", reason)
            self._move("proposing", "failed")
        elif isinstance(message, AttemptTask):
            await records.fail_attempt(message.item_id, message.attempt, reason)
            await self.on_result(AttemptResult(message.item_id, message.attempt, False, reason,
                                               question=message.question))
        elif isinstance(message, RewriteTask):
            await records.save_rewrite(message.item_id, message.style, "rejected", None, False, reason, {})
        elif isinstance(message, ReasonTask):
            await records.save_response(message, self.ctx.models.get("reasoning", ""), None, None, None, None,
                                        False, reason, None, {})

    # -- scheduling ----------------------------------------------------------------------------------------

    async def _schedule(self, item_id: str, attempt: int, *, priority: float, decided: bool,
                        question: str | None = None) -> None:
        if not decided:
            await self.ctx.records.open_attempt(item_id, attempt, self.config.effective_mode)
        if self.stopping:
            return   # the attempt stays 'queued' in the store; the next run starts it
        if question is None:
            question = await self.ctx.records.question(item_id) or ""
        await self._send(self.solver, AttemptTask(item_id, attempt, question), priority)

    async def on_result(self, result: AttemptResult) -> None:
        """The scheduler's turn after every attempt: another attempt, or settle the item."""
        records = self.ctx.records
        self.attempts_judged += 1
        self.attempts_passed += int(result.passed)
        matrix: MatrixOutcome | None = None
        if self._matrix is not None:
            # Every solution against every test file; pass/fail of each attempt is then judged against
            # the consensus's accepted tests, not the attempt's own (kodcode.quality.consensus).
            matrix = await self._guard(self._matrix.update(result.item_id))
            history = list(matrix.pass_sequence)
        else:
            history = await records.pass_history(result.item_id)
        decision = self.policy.decide(history)
        attempts = len(history)
        log = self.log.bind(agent="scheduler", item_id=result.item_id, attempt=attempts)
        if decision.action == "retry" and attempts < self.config.max_attempts:
            await records.decide(result.item_id, attempts, "retry", decision.reason, label=decision.label,
                                 priority=decision.priority, confidence=decision.confidence,
                                 next_attempt=(attempts + 1, self.config.effective_mode))
            log.info("decision", action="retry", priority=round(decision.priority, 4), reason=decision.reason)
            await self._schedule(result.item_id, attempts + 1, priority=decision.priority, decided=True,
                                 question=result.question or None)
            return
        verified = matrix.verified if matrix is not None else any(history)
        best: dict[str, Any] | None = None
        if matrix is not None and matrix.verified:
            assert matrix.accepted is not None
            best = {"attempt": matrix.accepted["solution_attempt"], "solution": matrix.solution,
                    "tests": matrix.tests, "entry_point": matrix.entry_point}
        elif verified:
            best = await records.best_attempt(result.item_id)
        label = decision.label or paper_label(history)
        await records.decide(
            result.item_id, attempts, decision.action if decision.action != "retry" else "give_up",
            decision.reason, label=label, confidence=decision.confidence,
            final_state="verified" if verified else "failed",
            chosen_attempt=best["attempt"] if best else None, entry_point=best["entry_point"] if best else None,
            pass_sequence=history)
        log.info("item_settled", state="verified" if verified else "failed", difficulty=label,
                 pass_sequence="".join("1" if p else "0" for p in history), reason=decision.reason)
        self._move("open", "verified" if verified else "failed")
        if verified:
            assert best is not None
            question = result.question or await records.question(result.item_id) or ""
            self.sources.note_verified(result.item_id, question)
            for style in self.config.styles:
                await self._send(self.rewriter, RewriteTask(result.item_id, style, question, best["solution"],
                                                            best["tests"], best["entry_point"]))
            await self._sample_responses(result.item_id, "instruct", question, best["solution"], best["tests"],
                                         best["entry_point"])
            if self.verified >= self.config.target:
                self._stop_at_target()

    # -- supply --------------------------------------------------------------------------------------------

    def _allowed_open(self) -> int:
        """Only as many open questions as the target still needs, at the yield seen so far."""
        needed = self.config.target - self.verified
        if needed <= 0:
            return 0
        yield_rate = (self.verified + 1) / (self._settled + 2)   # Laplace: no data → 50%
        return min(self.max_open, max(1, math.ceil(needed / max(yield_rate, 0.05))))

    async def _supply(self) -> None:
        seq = await self.ctx.records.next_seq()
        while not self.stopping:
            if self._open_items >= self._allowed_open():
                if self.verified >= self.config.target:
                    self._stop_at_target()
                    return
                self._supply_wakeup = anyio.Event()
                await self._supply_wakeup.wait()
                continue
            task = self.sources.task_for(seq)
            if task is None:   # every given question is proposed: settle them, then stop
                if self._open_items > 0:
                    self._supply_wakeup = anyio.Event()
                    await self._supply_wakeup.wait()
                    continue
                self.request_stop(f"questions exhausted: all {seq} given questions settled, {self.verified} verified")
                return
            await self.ctx.records.add_proposal(task)
            self._move(None, "proposing")
            seq += 1
            await self._send(self.proposer, task)

    # -- resume ---------------------------------------------------------------------------------------------

    async def _resume(self) -> None:
        records = self.ctx.records
        # Before the counts are read: what an older kodcode failed for a down endpoint is work again.
        reopened = await records.reopen_transport_failures()
        if reopened:
            self.log.warning("reopened_transport_failures", items=len(reopened),
                             item_ids=[entry["item_id"] for entry in reopened[:20]])
        await self.sources.load_verified(records)
        self._counts = Counter(await records.counts())
        self._settled_at_start = self._settled
        self.summary.verified_before = self.verified
        state = await records.resume_state(tuple(self.config.styles))
        mode = self.config.effective_mode
        for row in state.unrewritten:
            await self._send(self.rewriter, RewriteTask(row["item_id"], row["style"], row["question"], row["solution"],
                                                        row["tests"], row["entry_point"]))
        for row in await records.missing_responses(self.config.reasoning_samples):
            await self._send(self.reasoner, ReasonTask(row["item_id"], row["style"], row["sample"], row["question"],
                                                       row["solution"], row["tests"], row["entry_point"]))
        for task in state.proposing:
            await self._send(self.proposer, self.sources.restore(task))
        for item in state.open_items:
            last = item.attempts[-1] if item.attempts else None
            if last is None:
                await self._schedule(item.item_id, 1, priority=self.policy.decide(()).priority, decided=False,
                                     question=item.question)
            elif last["state"] == "queued":
                history = [bool(a["passed"]) for a in item.attempts if a["state"] == "judged"]
                await self._schedule(item.item_id, last["attempt"], priority=self.policy.decide(history).priority,
                                     decided=True, question=item.question)
            elif last["state"] == "solved" and mode == "split":
                await self._send(self.tester, AttemptTask(item.item_id, last["attempt"], item.question,
                                                          last["solution"], last["entry_point"]))
            elif last["state"] in ("solved", "tested"):
                await self._send(self.judge, AttemptTask(item.item_id, last["attempt"], item.question,
                                                         last["solution"], last["entry_point"], last["tests"]))
            else:
                await self.on_result(AttemptResult(item.item_id, last["attempt"], bool(last["passed"]), last["reason"],
                                                   question=item.question))
        if state.proposing or state.open_items or state.unrewritten:
            self.log.info("resumed", proposing=len(state.proposing), open=len(state.open_items),
                          rewrites=len(state.unrewritten), verified=self.verified)

    # -- run --------------------------------------------------------------------------------------------

    async def run(self, *, on_tick: Callable[[], Awaitable[None]] | None = None, tick_s: float = 5.0) -> None:
        """Run until the target is reached (and its rewrites are done) or a stop is requested and the
        work in flight has drained. Cancelling it loses nothing committed."""
        self._started = time.monotonic()
        async with anyio.create_task_group() as actors:
            for actor in self.actors:
                actors.start_soon(actor.run)      # each returns once it is closed and has drained
            async with anyio.create_task_group() as ticks:
                if on_tick is not None:
                    ticks.start_soon(_every, tick_s, on_tick)
                await self._resume()
                if self.verified >= self.config.target:
                    self._stop_at_target()
                async with anyio.create_task_group() as supply:
                    supply.start_soon(self._supply)
                    await self._stop_requested.wait()
                    supply.cancel_scope.cancel()
                await self._drain()
                ticks.cancel_scope.cancel()

    async def _drain(self) -> None:
        """Close the actors in the order messages flow, each once everything upstream has finished.

        Once the target is reached, attempts still in flight cannot change that: they get --grace seconds
        to finish (a verdict that lands is kept), then are abandoned where the store has them, for the next
        run; on a slow model one attempt's calls take minutes. The target's rewrites and reasoning samples
        always finish: they are part of what was asked for."""
        attempts = {self.proposer, self.solver, self.tester, self.judge}
        deadline = None
        if self._target_reached:
            deadline = anyio.current_time() + self.config.grace_s
        for actor in self.actors:
            actor.close()
            if deadline is not None and actor in attempts:
                with anyio.move_on_at(deadline):
                    await actor.finished.wait()
                # An idle actor past the deadline only has to notice its closed mailbox: let it.
                if not actor.finished.is_set() and (actor.stats.busy or actor.mailbox.qsize()):
                    self.log.info("abandoned_in_flight", agent=actor.name, busy=actor.stats.busy,
                                  queued=actor.mailbox.qsize(), reason="target reached; the next run takes them up")
                    actor.abandon()
            await actor.finished.wait()

    async def collect_summary(self) -> RunSummary:
        self.summary.stop_reason = self._stop_reason or "interrupted"
        self.summary.verified = self.verified
        self.summary.counts = self.counts()
        self.summary.elapsed_s = time.monotonic() - self._started
        return self.summary

    def statistics(self) -> dict[str, Any]:
        return {
            "stopping": self._stop_reason,
            "settled_this_run": self._settled - self._settled_at_start,
            "attempts_judged": self.attempts_judged,
            "attempts_passed": self.attempts_passed,
            "rewrites_done": self.rewrites_done,
            "open_items": self._open_items,
            "verified": self.verified,
            "actors": {a.name: a.statistics().__dict__.copy() for a in self.actors},
        }


async def _every(seconds: float, callback: Callable[[], Awaitable[None]]) -> None:
    while True:
        await anyio.sleep(seconds)
        await callback()


def _describe(message: object) -> dict[str, Any]:
    return {"item_id": getattr(message, "item_id", None), "attempt": getattr(message, "attempt", None)}
