"""Matrix: every solution of an item runs against every test file of it; a triplet is accepted by consensus.

Called by the runtime after each attempt ends (its verdict, or a failure before one). It fills the
cells that are missing — a new solution against all earlier test files, new tests against all earlier
solutions — stores them (per test function), and recomputes the consensus
(kodcode.quality.consensus). The best candidate triplets then face the gates: vacuous tests and
mutation as the Judge applies them to a trial, plus detection: the accepted tests must reject the
model's real wrong solutions. The first candidate that passes is the item's accepted triplet, stored
with its evidence (items.consensus, items.accepted_tests). Incremental and keyed by the stored cells,
so a resumed run recomputes nothing it already has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio

from kodcode.agents.context import AgentContext
from kodcode.llm.client import stable_seed
from kodcode.messages import AttemptTask
from kodcode.quality.consensus import (Candidate, Cell, candidates, code_key, drop_test_functions, function_outcomes,
                                       pass_sequence)
from kodcode.quality.mutation import generate_mutants, mutant_limits, run_mutation_gate
from kodcode.quality.vacuous import find_vacuous_tests
from kodcode.sandbox.base import Verdict

__all__ = ["EarlierTests", "Matrix", "MatrixOutcome"]

RULE = "codet-dual-agreement"


@dataclass(frozen=True)
class MatrixOutcome:
    item_id: str
    attempts: tuple[int, ...]              # judged attempts, in order
    pass_sequence: tuple[bool, ...]        # per attempt: its solution passes the accepted tests
    accepted: dict[str, Any] | None        # the accepted triplet's evidence (None: nothing accepted yet)
    solution: str | None = None
    tests: str | None = None
    entry_point: str | None = None

    @property
    def verified(self) -> bool:
        return self.accepted is not None


@dataclass(frozen=True)
class EarlierTests:
    """An earlier attempt's test file that a new solution passes whole, and its verdict on it."""

    attempt: int
    tests: str
    verdict: Verdict


class Matrix:
    def __init__(self, ctx: AgentContext, slots: anyio.CapacityLimiter | None = None) -> None:
        """`slots`: sandbox runs in flight at most, shared with the Judge (the pipeline's judge width)."""
        self.ctx = ctx
        self._limiter = slots or anyio.CapacityLimiter(4)

    async def update(self, item_id: str) -> MatrixOutcome:
        records = self.ctx.records
        members = await records.matrix_members(item_id)
        attempts = tuple(int(m["attempt"]) for m in members)
        solutions = {m["attempt"]: m for m in members if m["entry_point"] and m["solution"]}
        test_files = {m["attempt"]: m for m in members if m["tests_ran"] and m["tests"]}
        stored = await records.matrix_cells(item_id)
        have = {(c["solution_attempt"], c["tests_attempt"]) for c in stored}
        missing = [(s, t) for s in sorted(solutions) for t in sorted(test_files) if (s, t) not in have]
        new_cells: list[dict[str, Any]] = []
        if missing:
            async with anyio.create_task_group() as tg:
                for s, t in missing:
                    tg.start_soon(self._fill, solutions[s], test_files[t], new_cells)
            new_cells.sort(key=lambda c: (c["solution_attempt"], c["tests_attempt"]))
            await records.save_matrix_cells(item_id, new_cells)
        cells = [Cell(c["solution_attempt"], c["tests_attempt"], bool(c["passed"]), c["outcomes"])
                 for c in stored + new_cells]
        previous = await records.consensus(item_id)
        accepted, tests_text, evidence = await self._accept(item_id, cells, solutions, test_files, previous)
        sequence = tuple(pass_sequence(cells, attempts, accepted))
        record: dict[str, Any] = {
            "rule": RULE, "attempts": list(attempts), "solutions": sorted(solutions), "test_files": sorted(test_files),
            "cells": len(cells), "pass_sequence": [int(p) for p in sequence], **evidence,
        }
        await records.save_consensus(item_id, record, tests_text)
        self.ctx.log.info("matrix", item_id=item_id, cells=len(cells), new_cells=len(new_cells),
                          accepted=accepted is not None,
                          solution_attempt=accepted.solution if accepted else None,
                          tests_attempt=accepted.tests if accepted else None,
                          score=accepted.score if accepted else None,
                          dropped=len(accepted.dropped) if accepted else None,
                          wrong=len(accepted.wrong) if accepted else None,
                          detection_rate=accepted.detection_rate if accepted else None,
                          reason=evidence.get("reason"))
        if accepted is None:
            return MatrixOutcome(item_id, attempts, sequence, None)
        return MatrixOutcome(item_id, attempts, sequence, record["accepted"], solutions[accepted.solution]["solution"],
                             tests_text, solutions[accepted.solution]["entry_point"])

    async def earlier_tests_passed(self, task: AttemptTask) -> EarlierTests | None:
        """A new solution against the item's earlier test files, before a test file of its own is paid for.

        The cells are stored (the next update does not run them again). When a file passes the solution
        whole, it is returned (the one with the most tests, then the earliest) to judge the attempt: a
        Tester call would only add a column to a matrix that has evidence for this solution already."""
        assert task.solution is not None
        if task.entry_point is None:
            return None
        files = [m for m in await self.ctx.records.matrix_members(task.item_id)
                 if m["tests_ran"] and m["tests"] and m["attempt"] != task.attempt]
        if not files:
            return None
        solution_row = {"attempt": task.attempt, "solution": task.solution, "entry_point": task.entry_point}
        runs: list[tuple[dict[str, Any], dict[str, Any], Verdict]] = []

        async def run(tests_row: dict[str, Any]) -> None:
            runs.append((tests_row, *await self._cell(solution_row, tests_row)))

        async with anyio.create_task_group() as tg:
            for row in files:
                tg.start_soon(run, row)
        runs.sort(key=lambda run: run[0]["attempt"])
        await self.ctx.records.save_matrix_cells(task.item_id, [cell for _, cell, _ in runs])
        passing = [(row, verdict) for row, _, verdict in runs if verdict.passed]
        if not passing:
            return None
        row, verdict = max(passing, key=lambda run: (len(run[1].tests), -run[0]["attempt"]))
        return EarlierTests(row["attempt"], row["tests"], verdict)

    # -- cells -------------------------------------------------------------------------------------------

    async def _fill(self, solution_row: dict[str, Any], tests_row: dict[str, Any], out: list[dict[str, Any]]) -> None:
        out.append((await self._cell(solution_row, tests_row))[0])

    async def _cell(self, solution_row: dict[str, Any], tests_row: dict[str, Any]) -> tuple[dict[str, Any], Verdict]:
        """One solution against one test file: the cell as stored, and the sandbox's verdict."""
        code = _aliased(solution_row["solution"], solution_row["entry_point"], tests_row["entry_point"])
        async with self._limiter:
            verdict = await self.ctx.sandbox.run(code, tests_row["tests"])
        return ({"solution_attempt": solution_row["attempt"], "tests_attempt": tests_row["attempt"],
                 "passed": verdict.passed, "outcomes": function_outcomes((t.name, t.outcome) for t in verdict.tests),
                 "reason": verdict.reason, "duration_s": round(verdict.duration_s, 4)}, verdict)

    # -- acceptance --------------------------------------------------------------------------------------

    async def _accept(self, item_id: str, cells: list[Cell], solutions: dict[int, dict[str, Any]],
                      test_files: dict[int, dict[str, Any]], previous: dict[str, Any] | None,
                      ) -> tuple[Candidate | None, str | None, dict[str, Any]]:
        settings = self.ctx.config.matrix
        ranked = candidates(cells, min_agree_to_drop=settings.min_agree_to_drop,
                            code_keys={s: code_key(row["solution"]) for s, row in solutions.items()})
        if not ranked:
            if not any(cell.passed_functions() for cell in cells):
                return None, None, {"accepted": None, "reason": "no solution passes any test"}
            return None, None, {"accepted": None, "reason": (
                "the agreeing solutions pass no test file whole, and dropping the functions they fail needs "
                f"{settings.min_agree_to_drop} distinct agreeing programs and a minority of the file")}
        # Gate results already paid for (a mutation run) stay valid while the candidate is the same triplet.
        known = {tuple(g["key"][:2]) + (tuple(g["key"][2]),): g for g in (previous or {}).get("gated", [])}
        gated: list[dict[str, Any]] = []
        rejected_reasons: list[str] = []
        for candidate in ranked[:settings.max_gated]:
            tests_text = drop_test_functions(test_files[candidate.tests]["tests"], candidate.dropped)
            gates = known.get(candidate.key)
            if gates is None:
                gates = await self._gates(item_id, candidate, solutions[candidate.solution], tests_text,
                                          test_files[candidate.tests]["entry_point"])
            gated.append(gates)
            reason = gates["reason"] or _detection_reason(candidate, settings.detection_threshold)
            if reason is None:
                accepted = {**candidate.as_dict(), "gated_detection": candidate.gated_detection,
                            "mutation_score": gates.get("mutation_score"), "vacuous": gates.get("vacuous")}
                return candidate, tests_text, {"accepted": accepted, "gated": gated, "reason": None}
            rejected_reasons.append(f"{candidate.solution}x{candidate.tests}: {reason}")
        best = ranked[0]
        return None, None, {"accepted": None, "gated": gated, "best": best.as_dict(),
                            "reason": "; ".join(rejected_reasons)}

    async def _gates(self, item_id: str, candidate: Candidate, solution_row: dict[str, Any], tests: str,
                     tests_entry: str) -> dict[str, Any]:
        """The Judge's gates on a candidate triplet: the (trimmed) file must pass whole, must not be
        vacuous, and must kill mutants of the solution. Stored with the consensus, keyed by candidate."""
        ctx = self.ctx
        config = ctx.config
        settings = config.gates
        result: dict[str, Any] = {"key": [candidate.solution, candidate.tests, list(candidate.dropped)],
                                  "reason": None}
        solution = _aliased(solution_row["solution"], solution_row["entry_point"], tests_entry)
        async with self._limiter:
            verdict = await ctx.sandbox.run(solution, tests)
        if not verdict.passed:
            # Only reachable when functions were dropped (the cells say the rest passes) or on a flaky run.
            result["reason"] = f"accepted file fails: {verdict.reason}"
            return result
        vacuity = find_vacuous_tests(tests, tests_entry)
        result["vacuous"] = len(vacuity.findings)
        rejects = vacuity.all_vacuous if settings.vacuous == "flag" else vacuity.flagged
        if rejects and vacuity.parse_error is None:
            result["reason"] = vacuity.reason()
            return result
        if settings.mutation:
            seed = stable_seed(settings.seed if settings.seed is not None else config.seed, "mutation",
                               item_id, candidate.solution, candidate.tests)
            mutants = generate_mutants(solution, seed=seed, limit=settings.max_mutants, entry_point=tests_entry)
            report = await run_mutation_gate(
                ctx.sandbox, tests, mutants, threshold=settings.mutation_threshold,
                concurrency=settings.mutation_concurrency, limits=mutant_limits(verdict, config.sandbox.timeout_s),
                seed=seed)
            result["mutation_score"] = report.score
            result["mutants"] = {"killed": report.killed, "run": report.run}
            result["reason"] = report.reason
        return result


def _detection_reason(candidate: Candidate, threshold: float) -> str | None:
    share = candidate.gated_detection
    if share is None or share >= threshold:
        return None
    missed = sorted(set(candidate.detectable) - set(candidate.rejected))
    return (f"detection: the accepted tests pass {len(missed)} of {len(candidate.detectable)} real wrong "
            f"solutions (attempts {', '.join(map(str, missed))})")


def _aliased(solution: str, own_name: str, wanted: str | None) -> str:
    """Tests import the name their attempt's solution defined; a solution under another name answers to it."""
    if wanted and own_name != wanted:
        return f"{solution.rstrip()}\n\n{wanted} = {own_name}\n"
    return solution
