"""What the runtime hands every agent: its ports (LLM, store records, sandbox) and settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from kodcode.config import Config
from kodcode.prompts import PromptLibrary, RenderedPrompt
from kodcode.llm.client import LLMRequest, LLMResponse, stable_seed
from kodcode.store.port import Records
from kodcode.sandbox.base import Sandbox

__all__ = ["AgentContext", "LLMPort"]


class LLMPort(Protocol):
    async def complete(self, request: LLMRequest) -> LLMResponse: ...


@dataclass
class AgentContext:
    config: Config
    llm: LLMPort
    records: Records
    sandbox: Sandbox
    prompts: PromptLibrary
    models: dict[str, str]      # role -> model name actually used
    log: Any
    seed_salt: str = ""         # set apart every seed (prompt iteration samples beside the run's own)

    def request(self, role: str, prompt: RenderedPrompt, *, item_id: str, attempt: int | None = None,
                salt: str = "", raw_prompt: str | None = None, stop: tuple[str, ...] = ()) -> LLMRequest:
        """An LLM request for `role` with its configured sampling and a seed unique to this call site."""
        settings = self.config.role(role)
        return LLMRequest(
            role=role,
            model=self.models[role],
            messages=() if raw_prompt is not None else prompt.messages(),
            prompt=raw_prompt,
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_tokens=settings.max_tokens,
            stop=tuple(settings.stop) + stop,
            seed=stable_seed(self.config.seed, role, item_id, attempt, self.seed_salt + salt),
            template=prompt.template,
            template_hash=prompt.template_hash,
            item_id=item_id,
            attempt=attempt,
        )
