"""Fakes for the LLM port, shipped beside it (as httpx ships MockTransport): a scripted transport and an
in-memory call recorder. Tests and benchmarks hand them to the real LLMClient and EndpointPool, so what is
faked is only the far side of the wire.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

import anyio

from kodcode.llm.client import LLMRequest, LLMResponse

__all__ = ["MemoryRecorder", "ScriptedTransport", "Script"]

# What the scripted model answers: a text, a whole response, or an exception to raise (e.g. a
# TransientLLMError to exercise retries); async functions may wait first.
Answer = str | LLMResponse | BaseException
Script = Callable[[LLMRequest], Answer | Awaitable[Answer]]


@dataclass
class ScriptedTransport:
    """An LLMTransport (and pool EndpointTransport) that answers from `script` in process.

    `delay_s` is slept before each answer (a model's service time); `usage` is the (prompt, completion)
    token count reported; `headers` are returned by send_with_headers (rate-limit headers for the pool).
    Every request is kept in `requests`, in order.
    """

    script: Script
    delay_s: float = 0.0
    usage: tuple[int, int] = (50, 50)
    headers: Mapping[str, str] = field(default_factory=dict)
    requests: list[LLMRequest] = field(default_factory=list)
    closed: bool = False

    @property
    def calls(self) -> int:
        return len(self.requests)

    async def send(self, request: LLMRequest) -> LLMResponse:
        self.requests.append(request)
        if self.delay_s:
            await anyio.sleep(self.delay_s)
        answer = self.script(request)
        if isinstance(answer, Awaitable):
            answer = await answer
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, LLMResponse):
            return answer
        texts = (answer,) * request.n
        return LLMResponse(texts=texts, finish_reasons=("stop",) * request.n, prompt_tokens=self.usage[0],
                           completion_tokens=self.usage[1], latency_s=self.delay_s, request_hash=request.key)

    async def send_with_headers(self, request: LLMRequest) -> tuple[LLMResponse, Mapping[str, str]]:
        return await self.send(request), dict(self.headers)

    async def aclose(self) -> None:
        self.closed = True


class MemoryRecorder:
    """A CallRecorder in a dict: the response cache without a store."""

    def __init__(self) -> None:
        self.calls: dict[str, LLMResponse] = {}

    async def cached_call(self, request: LLMRequest) -> LLMResponse | None:
        found = self.calls.get(request.key)
        return None if found is None else replace(found, cached=True)

    async def record_call(self, request: LLMRequest, response: LLMResponse) -> None:
        self.calls[request.key] = response
