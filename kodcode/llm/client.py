"""LLM access: one interface over any OpenAI-compatible endpoint, with a response cache, retries,
a global in-flight limit, token accounting and budgets.

Every request is hashed (endpoint + canonical wire body). A completed call is committed to the store
before its text is returned, so after a crash the same request is answered from the store and never
paid for twice. Requests carry a seed derived from (run seed, item, attempt, role): attempts at the
same question differ, and a rerun of the same attempt is the same request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol

import anyio
import httpx
import openai

from kodcode.errors import BudgetExhausted, ConfigError, LLMError
from kodcode.llm.budget import Budget
from kodcode.llm.outage import OutageGate, OutageStatus

__all__ = [
    "CallRecorder",
    "LLMClient",
    "LLMRequest",
    "LLMResponse",
    "LLMTransport",
    "OpenAITransport",
    "TransientKind",
    "TransientLLMError",
    "connection_fault",
    "preflight",
    "transport_failure",
    "transport_label",
    "stable_seed",
]


def stable_seed(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class LLMRequest:
    role: str
    model: str
    messages: tuple[Mapping[str, str], ...] = ()
    prompt: str | None = None                 # raw completion (Magpie-style prefill) instead of chat
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 1024
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int | None = None
    # Lineage only: not sent, not part of the cache key.
    template: str = field(default="", compare=False)
    template_hash: str = field(default="", compare=False)
    item_id: str | None = field(default=None, compare=False)
    attempt: int | None = field(default=None, compare=False)

    @property
    def endpoint(self) -> Literal["chat", "completions"]:
        return "completions" if self.prompt is not None else "chat"

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "n": self.n,
        }
        if self.endpoint == "chat":
            body["messages"] = [dict(message) for message in self.messages]
        else:
            body["prompt"] = self.prompt
        if self.stop:
            body["stop"] = list(self.stop)
        if self.seed is not None:
            body["seed"] = self.seed
        return body

    @cached_property
    def key(self) -> str:
        canonical = json.dumps([self.endpoint, self.body()], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                "stop": list(self.stop), "n": self.n, "seed": self.seed}


@dataclass(frozen=True)
class LLMResponse:
    texts: tuple[str, ...]
    finish_reasons: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    request_hash: str
    cached: bool = False
    cost_usd: float = 0.0

    @property
    def text(self) -> str:
        return self.texts[0]

    def lineage(self, request: LLMRequest) -> dict[str, Any]:
        """What an attempt records about the call that produced it."""
        return {
            "model": request.model,
            "template": request.template,
            "template_hash": request.template_hash,
            "sampling": request.sampling(),
            "call": self.request_hash,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reasons[0] if self.finish_reasons else None,
        }


TransientKind = Literal["rate_limit", "server", "timeout", "connection", "malformed"]


class TransientLLMError(LLMError):
    """Worth retrying: rate limits, 5xx, timeouts, dropped connections, malformed bodies.

    kind and headers let an endpoint pool tell a 429 (slow down) from a dead server (eject it) and
    learn rate limits from the error response; None / empty where the transport does not know.
    outage, when set, says in a few words why the endpoint itself, not this request, failed ("connection
    refused", "503 Service Unavailable"): such faults pause the endpoint's calls (kodcode.llm.outage)
    instead of spending their retries."""

    def __init__(self, message: str, retry_after: float | None = None, *, kind: TransientKind | None = None,
                 headers: Mapping[str, str] | None = None, outage: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.kind = kind
        self.headers: Mapping[str, str] = headers or {}
        self.outage = outage


class LLMTransport(Protocol):
    async def send(self, request: LLMRequest) -> LLMResponse: ...

    async def aclose(self) -> None: ...


class CallRecorder(Protocol):
    """Where completed calls are cached (the store)."""

    async def cached_call(self, request: LLMRequest) -> LLMResponse | None: ...

    async def record_call(self, request: LLMRequest, response: LLMResponse) -> None: ...


def _headers(response: httpx.Response | None) -> dict[str, str]:
    return {} if response is None else {name.lower(): value for name, value in response.headers.items()}


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class OpenAITransport:
    """Talks to one OpenAI-compatible base URL with the official client; retries live in LLMClient."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 300.0) -> None:
        self.base_url = base_url
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout_s)

    async def send(self, request: LLMRequest) -> LLMResponse:
        response, _ = await self.send_with_headers(request)
        return response

    async def send_with_headers(self, request: LLMRequest) -> tuple[LLMResponse, Mapping[str, str]]:
        """The response and the HTTP response headers (lower-case names), for rate-limit learning."""
        started = time.perf_counter()
        body = request.body()
        try:
            if request.endpoint == "chat":
                raw = await self._client.chat.completions.with_raw_response.create(**body)
                reply = raw.parse()
                texts = tuple((choice.message.content or "") for choice in reply.choices)
            else:
                raw = await self._client.completions.with_raw_response.create(**body)
                reply = raw.parse()
                texts = tuple((choice.text or "") for choice in reply.choices)
        except openai.RateLimitError as exc:
            raise TransientLLMError(f"429 rate limited by {self.base_url}", _retry_after(exc.response),
                                    kind="rate_limit", headers=_headers(exc.response)) from exc
        except openai.APIStatusError as exc:
            if exc.status_code >= 500 or exc.status_code in (408, 409):
                # 502/503/504 come from a proxy or a server that is not serving at all; a 500 may be this
                # request's doing, so it stays an ordinary retry.
                outage = (f"{exc.status_code} {_STATUS_WORDS[exc.status_code]}"
                          if exc.status_code in _STATUS_WORDS else None)
                raise TransientLLMError(f"{exc.status_code} from {self.base_url}", _retry_after(exc.response),
                                        kind="server", headers=_headers(exc.response), outage=outage) from exc
            raise LLMError(f"{exc.status_code} from {self.base_url}: {_short(exc.message)}") from exc
        except openai.APITimeoutError as exc:
            # Only a connect timeout says the endpoint is unreachable; a slow answer is about the request.
            outage = "connect timeout" if _caused_by(exc, "ConnectTimeout") else None
            raise TransientLLMError(f"timeout waiting for {self.base_url}", kind="timeout", outage=outage) from exc
        except openai.APIConnectionError as exc:
            raise TransientLLMError(f"connection to {self.base_url} failed: {_short(str(exc.__cause__ or exc))}",
                                    kind="connection", outage=connection_fault(exc)) from exc
        except (openai.APIResponseValidationError, json.JSONDecodeError, ValueError) as exc:
            raise TransientLLMError(f"malformed response from {self.base_url}: {_short(str(exc))}",
                                    kind="malformed") from exc
        if not reply.choices:
            raise TransientLLMError(f"empty choices from {self.base_url}", kind="malformed")
        usage = reply.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else sum(len(text) // 4 for text in texts)
        return LLMResponse(
            texts=texts,
            finish_reasons=tuple((choice.finish_reason or "") for choice in reply.choices),
            prompt_tokens=prompt_tokens or 0,
            completion_tokens=completion_tokens or 0,
            latency_s=time.perf_counter() - started,
            request_hash=request.key,
        ), _headers(raw.http_response)

    async def aclose(self) -> None:
        if not self._client.is_closed():   # idempotent: the run's exit stack and LLMClient.aclose may both close it
            await self._client.close()


# How an item's failure reason reads when a kodcode before the outage gate gave up on a call because the
# endpoint was down (this module's own words, wrapped by the actor as "<agent> error: LLMError: ...").
_TRANSPORT_FAILURE = re.compile(
    r"LLMError: (connection to \S+ failed|every endpoint of the pool is down|50[234] from \S+)"
    r".*\(gave up after \d+ tries\)\s*$", re.DOTALL)


def transport_failure(reason: str | None) -> bool:
    """A failure reason that says the endpoint was unreachable, not that the model failed: such an item is
    retried on resume (the outage gate keeps new ones from happening)."""
    return bool(reason) and _TRANSPORT_FAILURE.search(reason or "") is not None


_STATUS_WORDS = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def _caused_by(error: BaseException, *names: str) -> bool:
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return False
        if type(seen).__name__ in names:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def connection_fault(error: BaseException) -> str:
    """A connection failure in a few words, for the outage line ("connection refused")."""
    if _caused_by(error, "ConnectionRefusedError"):
        return "connection refused"
    if _caused_by(error, "ConnectionResetError", "BrokenPipeError"):
        return "connection reset"
    if _caused_by(error, "ConnectTimeout"):
        return "connect timeout"
    if _caused_by(error, "ConnectError"):
        # httpx words a refused connect as "All connection attempts failed" and drops the errno.
        return "cannot connect"
    return "connection lost"


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Paused(Exception):
    """A call met its endpoint's outage: it waits at the gate (outside the limiter), then goes on."""


def transport_label(transport: object) -> str:
    """Where a transport sends requests, in the words a user knows (its URL or URLs)."""
    for name in ("label", "base_url"):
        value = getattr(transport, name, None)
        if isinstance(value, str) and value:
            return value
    return type(transport).__name__


class LLMClient:
    """The one way agents reach a model. `transports` maps a role to its endpoint.

    Transient faults are retried with jittered backoff up to `max_retries`; transport faults (an endpoint
    that is down: kodcode.llm.outage) pause that endpoint's calls instead, for up to `max_outage_s`."""

    def __init__(
        self,
        transports: Mapping[str, LLMTransport],
        recorder: CallRecorder | None,
        *,
        concurrency: int,
        max_retries: int = 6,
        budget: Budget | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        max_outage_s: float = 1800.0,
        probe_base_s: float = 1.0,
        probe_cap_s: float = 30.0,
        outage_after: int = 3,
        logger: Any = None,
    ) -> None:
        self._transports = dict(transports)
        self._recorder = recorder
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._max_retries = max_retries
        # The budget owns spend (this run's and, seeded from the store, earlier runs'); the client keeps
        # only what is not spend: cache hits and retries.
        self._budget = budget if budget is not None else Budget()
        self._spent_at_start = self._budget.spent
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._log = logger
        self._random = random.Random()
        # One gate per transport, shared by every role it serves: a dead server pauses all of them at once.
        self._gates: dict[int, OutageGate] = {}
        for transport in {id(t): t for t in self._transports.values()}.values():
            roles = tuple(sorted(role for role, t in self._transports.items() if t is transport))
            self._gates[id(transport)] = OutageGate(
                transport_label(transport), roles, max_outage_s=max_outage_s, probe_base_s=probe_base_s,
                probe_cap_s=probe_cap_s, outage_after=outage_after, logger=logger)
        self.cache_hits = 0
        self.retries = 0
        self.concurrency = concurrency

    @property
    def calls(self) -> int:
        """Calls this client paid for (cache hits excluded)."""
        return self._budget.spent.calls - self._spent_at_start.calls

    @property
    def prompt_tokens(self) -> int:
        return self._budget.spent.prompt_tokens - self._spent_at_start.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self._budget.spent.completion_tokens - self._spent_at_start.completion_tokens

    @property
    def cost_usd(self) -> float:
        return self._budget.spent.usd - self._spent_at_start.usd

    def statistics(self) -> dict[str, int]:
        stats = self._limiter.statistics()
        return {
            "in_flight": stats.borrowed_tokens,
            "waiting": stats.tasks_waiting,
            "calls": self.calls,
            "cache_hits": self.cache_hits,
            "retries": self.retries,
            "tokens": self.prompt_tokens + self.completion_tokens,
            "outages": sum(gate.outages for gate in self._gates.values()),
        }

    def outages(self) -> list[OutageStatus]:
        """The endpoints that are down now (their roles are paused), for the progress view."""
        return [status for gate in self._gates.values() if (status := gate.status()) is not None]

    async def complete(self, request: LLMRequest) -> LLMResponse:
        if self._recorder is not None:
            cached = await self._recorder.cached_call(request)
            if cached is not None:
                self.cache_hits += 1
                return cached
        transport = self._transports.get(request.role) or self._transports.get("default")
        if transport is None:
            raise ConfigError(f"no LLM endpoint configured for role {request.role!r}")
        gate = self._gates[id(transport)]
        while True:
            # Waiting for a down endpoint happens outside the limiter: a paused role holds no slot.
            probing = await gate.wait_turn()
            async with self._limiter:
                if reason := self._budget.exhausted():
                    if probing:
                        gate.probe_abandoned()
                    raise BudgetExhausted(reason)
                try:
                    response = await self._send_with_retries(transport, request, gate, probing)
                except _Paused:
                    continue
                cost = self._budget.price(request.model, response.prompt_tokens, response.completion_tokens)
                response = dataclasses.replace(response, cost_usd=cost)
                # Recorded before charging: a charge that raises (no price for a model) must not lose a paid answer.
                # And recorded while holding the slot: a killed run has at most `concurrency` answers that were
                # paid for and not yet stored, however slow the disk is, not every answer awaiting its commit.
                if self._recorder is not None:
                    await self._recorder.record_call(request, response)
            break
        self._budget.charge(request.model, response.prompt_tokens, response.completion_tokens)
        return response

    async def _send_with_retries(self, transport: LLMTransport, request: LLMRequest, gate: OutageGate,
                                 probing: bool) -> LLMResponse:
        retry = 0
        while True:
            try:
                response = await transport.send(request)
            except TransientLLMError as exc:
                if exc.outage is not None:
                    if probing:
                        gate.probe_failed(exc.outage)
                        raise _Paused from exc
                    if gate.note_fault(exc.outage, spent=retry >= self._max_retries):
                        self._log_retry(request, exc, retry, 0.0, paused=True)
                        self.retries += 1
                        raise _Paused from exc
                elif probing:
                    # The endpoint answered, if not with a result: it is up; this fault is the request's own.
                    gate.opened()
                    probing = False
                if retry >= self._max_retries:
                    raise LLMError(f"{exc} (gave up after {retry + 1} tries)") from exc
                # Full jitter keeps a fleet of workers from retrying in lockstep after a shared 429.
                delay = self._random.uniform(0, min(self._backoff_cap_s, self._backoff_base_s * 2**retry))
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, 120.0))
                self.retries += 1
                self._log_retry(request, exc, retry, delay)
                retry += 1
                await anyio.sleep(delay)
                continue
            except LLMError:
                if probing:   # a client error (400): the endpoint is up and answering
                    gate.opened()
                raise
            except BaseException:
                if probing:   # cancelled mid-probe: let another waiter probe
                    gate.probe_abandoned()
                raise
            gate.opened()   # any answer proves the endpoint up, the prober's or a call sent before it closed
            return response

    def _log_retry(self, request: LLMRequest, exc: TransientLLMError, retry: int, delay: float, *,
                   paused: bool = False) -> None:
        if self._log is not None:
            fields: dict[str, Any] = {"paused": True} if paused else {}
            self._log.warning("llm_retry", role=request.role, item_id=request.item_id, attempt=request.attempt,
                              error=str(exc), retry=retry + 1, delay_s=round(delay, 3), **fields)

    async def aclose(self) -> None:
        for transport in {id(t): t for t in self._transports.values()}.values():
            await transport.aclose()


async def preflight(base_url: str, model: str | None, api_key: str | None, *, timeout_s: float = 10.0) -> list[str]:
    """Check the endpoint answers and serves `model` before any work starts; return the served models.

    An unreachable URL or an unknown model is a configuration error, worth one clear line at start-up
    instead of a thousand failed attempts."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/models"
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            reply = await client.get(url, headers=headers)
    except httpx.InvalidURL as exc:  # not an httpx.HTTPError
        raise ConfigError(f"invalid --base-url {base_url}: {_short(str(exc))}") from None
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot reach --base-url {base_url}: {_short(str(exc) or type(exc).__name__)}; is the server running?") from None
    if reply.status_code in (401, 403):
        raise ConfigError(f"--base-url {base_url} refused the API key ({reply.status_code}); set the key's environment variable")
    if reply.status_code != 200:
        # Some OpenAI-compatible servers have no /models; that is not a reason to refuse to run.
        return []
    try:
        served = [entry["id"] for entry in reply.json().get("data", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []
    if model is not None and served and model not in served:
        raise ConfigError(f"model {model!r} is not served by {base_url} (it serves: {', '.join(served[:5])}); fix --model")
    return served
