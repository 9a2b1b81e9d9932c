"""Prefill (the paper's Magpie-Prefill): the model completes a user turn that starts with a coding prefix;
the question ends at the first newline, so one request yields one question."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, ClassVar

from kodcode.messages import ProposeTask
from kodcode.parsing import ParseFailure, clean_question
from kodcode.agents.sources.base import ask, chatml_prefill, first_line

if TYPE_CHECKING:
    from kodcode.agents.context import AgentContext

__all__ = ["PrefillSource"]


class PrefillSource:
    name: ClassVar[str] = "prefill"

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.prefixes = prefixes or ("Write a python function to",)

    def task(self, seq: int, rng: random.Random) -> ProposeTask:
        return ProposeTask(item_id=f"Prefill_{seq}", seq=seq, source=self.name, subset="Prefill",
                           prefix=rng.choice(self.prefixes))

    @classmethod
    async def propose(cls, ctx: AgentContext, task: ProposeTask, lineage: dict[str, Any]) -> str:
        prompt = ctx.prompts.render("propose_prefill", prefix=task.prefix)
        request, response = await ask(ctx, prompt, task, raw_prompt=chatml_prefill(prompt.system, prompt.user),
                                      stop=("\n", "<|im_end|>"))
        lineage["proposer"] = response.lineage(request)
        lineage["prefix"] = task.prefix
        completion = first_line(response.text)
        if not completion:
            raise ParseFailure("empty prefill completion")
        return clean_question(f"{task.prefix} {completion}")
