"""Proposer: turns a proposal slot into a question, then gates it (duplicates, contamination) before any
solver token is spent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kodcode.agents.context import AgentContext
from kodcode.messages import ProposeTask
from kodcode.parsing import ParseFailure, clean_question

__all__ = ["GateVerdict", "Proposer", "QuestionGate", "chatml_prefill"]


@dataclass(frozen=True)
class GateVerdict:
    state: str                           # open | duplicate | contaminated
    reason: str | None = None
    dedup_row: tuple[str, bytes | None] | None = None   # persisted so the index survives resume


class QuestionGate(Protocol):
    def admit(self, item_id: str, question: str) -> GateVerdict: ...


def chatml_prefill(system: str, prefix: str) -> str:
    """The raw prompt for Magpie-style prefill on ChatML models (Qwen): the chat template up to the
    user's turn, which the model then completes."""
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{prefix}"


class Proposer:
    def __init__(self, ctx: AgentContext, gate: QuestionGate | None = None) -> None:
        self.ctx = ctx
        self.gate = gate

    async def handle(self, task: ProposeTask) -> str | None:
        """Returns the admitted question, or None when the item was rejected (recorded with its reason)."""
        ctx = self.ctx
        if task.source == "prefill":
            prompt = ctx.prompts.render("propose_prefill", prefix=task.prefix)
            request = ctx.request("proposer", prompt, item_id=task.item_id,
                                  raw_prompt=chatml_prefill(prompt.system, prompt.user),
                                  stop=("\n", "<|im_end|>"))
        else:
            prompt = ctx.prompts.render("propose_from_seeds", seeds=list(task.seeds))
            request = ctx.request("proposer", prompt, item_id=task.item_id)
        response = await ctx.llm.complete(request)
        lineage = {"proposer": response.lineage(request), "prefix": task.prefix or None}
        # Not every server honours stop strings: the prefill question ends at the first newline regardless.
        raw = f"{task.prefix} {response.text.strip().splitlines()[0] if response.text.strip() else ''}" \
            if task.source == "prefill" else response.text
        try:
            question = clean_question(raw)
        except ParseFailure as exc:
            await ctx.records.set_question(task.item_id, None, lineage, "rejected", str(exc))
            ctx.log.info("question_rejected", item_id=task.item_id, reason=str(exc))
            return None
        verdict = self.gate.admit(task.item_id, question) if self.gate else GateVerdict("open")
        await ctx.records.set_question(task.item_id, question, lineage, verdict.state, verdict.reason, verdict.dedup_row)
        ctx.log.info("question_proposed", item_id=task.item_id, subset=task.subset, state=verdict.state,
                     reason=verdict.reason, chars=len(question))
        return question if verdict.state == "open" else None
