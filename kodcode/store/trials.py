"""The records port for prompt trials (kodcode.iterate): the Solver, Tester and Judge run unchanged, and what
they would write to a run's attempt lands in the prompt_trials table instead."""

from __future__ import annotations

from typing import Any

from kodcode.sandbox.base import Verdict
from kodcode.store.records import SqliteRecords
from kodcode.store.sqlite import Store, dumps, now

__all__ = ["TrialRecords"]


class TrialRecords(SqliteRecords):
    """The records port for prompt trials: what the agents would write to an attempt goes to prompt_trials.

    The Solver, Tester and Judge run unchanged; their attempt writes land here, one row per trial, so a
    trial never touches the run's items, attempts or export. LLM calls are still recorded (and cached)
    in the store by the LLM client, as in a run.
    """

    def __init__(self, store: Store, *, batch: str, arm: str, stage: str, template: str, template_hash: str,
                 model: str) -> None:
        super().__init__(store)
        self.batch, self.arm, self.stage = batch, arm, stage
        self.template, self.template_hash, self.model = template, template_hash, model
        self._pending: dict[tuple[str, int], dict[str, Any]] = {}

    def remember(self, task: Any) -> None:
        self._pending.setdefault((task.item_id, task.attempt), {}).update(
            solution=task.solution, tests=task.tests)

    async def save_solution(self, item_id: str, attempt: int, solution: str, entry_point: str,
                            lineage: dict[str, Any]) -> None:
        self._pending.setdefault((item_id, attempt), {}).update(solution=solution, lineage=lineage)

    async def save_tests(self, item_id: str, attempt: int, tests: str, lineage: dict[str, Any],
                         solution: str | None = None, entry_point: str | None = None) -> None:
        pending = self._pending.setdefault((item_id, attempt), {})
        pending.update(tests=tests, lineage=lineage)
        if solution is not None:
            pending["solution"] = solution

    async def fail_attempt(self, item_id: str, attempt: int, reason: str, *, role: str | None = None,
                           lineage: dict[str, Any] | None = None, raw_output: str | None = None) -> None:
        pending = self._pending.pop((item_id, attempt), {})
        column = "tests" if role == "tester" else "solution"
        pending[column] = raw_output
        await self._write(item_id, attempt, {**pending, "lineage": lineage or pending.get("lineage") or {}},
                          passed=False, reason=reason)

    async def save_verdict(self, item_id: str, attempt: int, verdict: Verdict, *,
                           gates: dict[str, Any] | None = None, mutation_score: float | None = None) -> None:
        pending = self._pending.pop((item_id, attempt), {})
        await self._write(item_id, attempt, pending, passed=verdict.passed, reason=verdict.reason,
                          coverage=verdict.coverage, mutation_score=mutation_score, gates=gates)

    async def _write(self, item_id: str, sample: int, pending: dict[str, Any], *, passed: bool, reason: str | None,
                     coverage: float | None = None, mutation_score: float | None = None,
                     gates: dict[str, Any] | None = None) -> None:
        await self.store.write([(
            "INSERT OR REPLACE INTO prompt_trials(batch, arm, stage, item_id, sample, template, template_hash, model,"
            " solution, tests, passed, reason, coverage, mutation_score, gates, lineage, created_at)"
            " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (self.batch, self.arm, self.stage, item_id, sample, self.template, self.template_hash, self.model,
             pending.get("solution"), pending.get("tests"), int(passed), reason, coverage, mutation_score,
             None if gates is None else dumps(gates), dumps(pending.get("lineage") or {}), now()),
        )])
