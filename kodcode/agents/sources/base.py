"""What every question source shares: the source protocol and the helpers its proposals are built with.

A source has two halves. `task(seq, rng)` picks the material for one proposal slot (a seed question, a
code snippet, a document) and is a pure function of its arguments; `propose(ctx, task, lineage)` sends
the source's own prompt and parses the source's own output. The second half needs only the task, so
the Proposer can run it without the source's catalogue.
"""

from __future__ import annotations

import dataclasses
import random
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from kodcode.messages import ProposeTask

if TYPE_CHECKING:  # the agents import the sources; only the types flow back
    from kodcode.agents.context import AgentContext
    from kodcode.prompts import RenderedPrompt
    from kodcode.llm.client import LLMRequest, LLMResponse

__all__ = ["QuestionSource", "ask", "chatml_prefill", "first_line"]


class QuestionSource(Protocol):
    name: ClassVar[str]            # the key in sources.weights and items.source

    def task(self, seq: int, rng: random.Random) -> ProposeTask | None:
        """The proposal for slot `seq`; None when the source cannot make one now (evol without verified
        questions). `rng` is seeded by (run seed, seq, source name)."""
        ...

    @classmethod
    async def propose(cls, ctx: AgentContext, task: ProposeTask, lineage: dict[str, Any]) -> str:
        """The question for `task`; raises ParseFailure (its message is the recorded reason) when the
        output is unusable or the item is filtered out. Adds what it did to `lineage`."""
        ...


def chatml_prefill(system: str, prefix: str) -> str:
    """The raw prompt for Magpie-style prefill on ChatML models (Qwen): the chat template up to the
    user's turn, which the model then completes."""
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{prefix}"


async def ask(ctx: AgentContext, prompt: RenderedPrompt, task: ProposeTask, *, salt: str = "",
              raw_prompt: str | None = None, stop: tuple[str, ...] = (), min_tokens: int | None = None,
              temperature: float | None = None) -> tuple[LLMRequest, LLMResponse]:
    """One proposer-role call. `min_tokens` raises the role's max_tokens for prompts that reason before
    answering (the default 256 fits a one-line prefill question, not an analysis); `temperature`
    overrides sampling for judging calls, which should not be creative."""
    request = ctx.request("proposer", prompt, item_id=task.item_id, salt=salt, raw_prompt=raw_prompt, stop=stop)
    changes: dict[str, Any] = {}
    if min_tokens is not None and request.max_tokens < min_tokens:
        changes["max_tokens"] = min_tokens
    if temperature is not None:
        changes["temperature"] = temperature
    if changes:
        request = dataclasses.replace(request, **changes)
    return request, await ctx.llm.complete(request)


def first_line(text: str) -> str:
    """Not every server honours stop strings: a Magpie question ends at its first newline regardless."""
    stripped = text.strip()
    return stripped.splitlines()[0] if stripped else ""
