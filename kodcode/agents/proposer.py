"""Proposer: turns a proposal slot into a question, then gates it (duplicates, contamination) before any
solver token is spent. Each source prompts and parses for itself (kodcode.agents.sources); the Proposer records
the outcome, whatever the source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from kodcode.agents.context import AgentContext
from kodcode.messages import ProposeTask
from kodcode.parsing import ParseFailure
from kodcode.agents.sources import chatml_prefill, source_type

__all__ = ["GateVerdict", "Proposal", "Proposer", "QuestionGate", "chatml_prefill"]


@dataclass(frozen=True)
class GateVerdict:
    state: str                           # open | duplicate | contaminated
    reason: str | None = None
    dedup_row: tuple[str, bytes | None] | None = None   # persisted so the index survives resume


@dataclass(frozen=True)
class Proposal:
    """What became of a proposal slot, as recorded: the item's new state and its question (if any)."""

    state: str                           # open | duplicate | contaminated | rejected
    question: str | None

    @property
    def admitted(self) -> str | None:
        """The question, when it goes on to the Solver."""
        return self.question if self.state == "open" else None


class QuestionGate(Protocol):
    def admit(self, item_id: str, question: str) -> GateVerdict: ...


class Proposer:
    def __init__(self, ctx: AgentContext, gate: QuestionGate | None = None) -> None:
        self.ctx = ctx
        self.gate = gate

    async def handle(self, task: ProposeTask) -> Proposal:
        """The item's question and the state recorded for it (a rejection is recorded with its reason)."""
        ctx = self.ctx
        lineage: dict[str, Any] = {"source": task.source, "subset": task.subset}
        try:
            question = await source_type(task.source).propose(ctx, task, lineage)
        except ParseFailure as exc:
            await ctx.records.set_question(task.item_id, None, lineage, "rejected", str(exc))
            ctx.log.info("question_rejected", item_id=task.item_id, subset=task.subset, reason=str(exc))
            return Proposal("rejected", None)
        verdict = self.gate.admit(task.item_id, question) if self.gate else GateVerdict("open")
        await ctx.records.set_question(task.item_id, question, lineage, verdict.state, verdict.reason, verdict.dedup_row)
        ctx.log.info("question_proposed", item_id=task.item_id, subset=task.subset, state=verdict.state,
                     reason=verdict.reason, chars=len(question))
        return Proposal(verdict.state, question)
