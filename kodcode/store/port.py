"""The records port: what agents and the runtime record and read back, in the words of the pipeline.

Agents and the runtime hold a `Records`; the SQLite implementation is `kodcode.store.records.SqliteRecords`,
and `kodcode.store.trials.TrialRecords` is the one `kodcode.iterate` uses to keep prompt trials apart from
a run's items. No SQL crosses this line: every query lives in the store package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from kodcode.llm.client import LLMRequest, LLMResponse
from kodcode.messages import ProposeTask, ReasonTask
from kodcode.sandbox.base import Verdict

__all__ = ["ITEM_STATES", "TERMINAL_STATES", "OpenItem", "Records", "ResumeState"]

# proposing → open → verified | failed; or → duplicate | contaminated | rejected (never solved)
ITEM_STATES = ("proposing", "open", "verified", "failed", "duplicate", "contaminated", "rejected")
TERMINAL_STATES = ("verified", "failed", "duplicate", "contaminated", "rejected")


@dataclass(frozen=True)
class OpenItem:
    item_id: str
    question: str
    attempts: tuple[dict[str, Any], ...]   # attempt rows in order


@dataclass(frozen=True)
class ResumeState:
    proposing: tuple[ProposeTask, ...]
    open_items: tuple[OpenItem, ...]
    unrewritten: tuple[dict[str, Any], ...]  # verified items still owed a rewrite (item row + style)


class Records(Protocol):
    """Each write is one grouped, committed transaction: it is durable when the call returns."""

    run_id: str | None

    # runs
    async def start_run(self, config: dict[str, Any]) -> str: ...
    async def finish_run(self, status: str, summary: dict[str, Any]) -> None: ...

    # items
    async def next_seq(self) -> int: ...
    async def add_proposal(self, task: ProposeTask) -> None: ...
    async def set_question(self, item_id: str, question: str | None, lineage: dict[str, Any], state: str,
                           reason: str | None = None, dedup: tuple[str, bytes | None] | None = None) -> None: ...
    async def question(self, item_id: str) -> str | None: ...
    async def dedup_rows(self) -> list[tuple[str, str, bytes | None]]: ...
    async def verified_questions(self) -> list[tuple[str, str]]: ...

    # attempts
    async def open_attempt(self, item_id: str, attempt: int, mode: str) -> None: ...
    async def save_solution(self, item_id: str, attempt: int, solution: str, entry_point: str,
                            lineage: dict[str, Any]) -> None: ...
    async def save_tests(self, item_id: str, attempt: int, tests: str, lineage: dict[str, Any],
                         solution: str | None = None, entry_point: str | None = None) -> None: ...
    async def save_verdict(self, item_id: str, attempt: int, verdict: Verdict, *,
                           gates: dict[str, Any] | None = None, mutation_score: float | None = None) -> None: ...
    async def fail_attempt(self, item_id: str, attempt: int, reason: str, *, role: str | None = None,
                           lineage: dict[str, Any] | None = None, raw_output: str | None = None) -> None: ...
    async def pass_history(self, item_id: str) -> list[bool]: ...
    async def best_attempt(self, item_id: str) -> dict[str, Any] | None: ...
    async def decide(self, item_id: str, attempts: int, action: str, reason: str, *, label: str | None = None,
                     priority: float | None = None, confidence: float | None = None,
                     final_state: str | None = None, chosen_attempt: int | None = None,
                     entry_point: str | None = None, pass_sequence: list[bool] | None = None,
                     next_attempt: tuple[int, str] | None = None) -> None: ...

    # rewrites and reasoning responses
    async def save_rewrite(self, item_id: str, style: str, state: str, question: str | None,
                           passed: bool | None, reason: str | None, lineage: dict[str, Any]) -> None: ...
    async def save_response(self, task: ReasonTask, model: str, response: str | None, reasoning: str | None,
                            code: str | None, renamed_from: str | None, passed: bool, reason: str | None,
                            coverage: float | None, lineage: dict[str, Any]) -> None: ...
    async def missing_responses(self, samples: int) -> list[dict[str, Any]]: ...

    # the LLM call cache (kodcode.llm.client.CallRecorder)
    async def cached_call(self, request: LLMRequest) -> LLMResponse | None: ...
    async def record_call(self, request: LLMRequest, response: LLMResponse) -> None: ...
    async def spent(self) -> dict[str, float]: ...

    # resume and counts
    async def reopen_transport_failures(self) -> list[dict[str, Any]]: ...
    async def resume_state(self, styles: tuple[str, ...]) -> ResumeState: ...
    async def counts(self) -> dict[str, int]: ...
