"""A pool of OpenAI-compatible endpoints behind one LLMTransport: routing, health, rate limits and
adaptive concurrency per endpoint.

LLMClient keeps the global ceiling (--concurrency), the cache, retries with backoff and the budget;
the pool decides *where* each request goes and *when* an endpoint may take one more:

- Routing: the healthy, unpaused endpoint with the lowest outstanding/limit ratio among those with
  free adaptive capacity and room in their rate windows. Waiters queue in FIFO order and are handed
  an endpoint when a slot frees, a limit grows, a pause ends or an endpoint recovers: no polling.
- Health: a refused connection ejects an endpoint at once; `eject_after` 5xx/timeouts in a row do too.
  An ejected endpoint is probed (GET /v1/models, then /health) with exponential backoff and
  rejoins with a fresh, small limit. A failed request is retried on another endpoint up to
  `max_failover` times, then TransientLLMError goes to LLMClient, whose backoff applies.
- Rate limits: requests and tokens per minute in 60-second sliding windows (a token estimate from
  prompt length + max_tokens before the call, corrected with the usage after), configured or learned
  from x-ratelimit-* headers; Retry-After pauses only that endpoint.
- Adaptive concurrency (AIMD): slow start, then +1 per round trip on success; x0.75 on 429, 5xx or
  timeout. vLLM saturates by queueing, not by 429 (Data Designer #634), so for vLLM servers a
  background task reads vllm:num_requests_waiting/running from /metrics and cuts the limit while the
  queue stays deeper than a small headroom (to what the server runs at once plus that headroom),
  holds it while a little queue remains, and lets it grow only when the queue is empty and the limit
  is within twice what the server reports holding; a p50 latency beyond `latency_factor` x the
  unloaded baseline cuts it too. `--concurrency` stays the global ceiling (LLMClient's limiter).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
import httpx
from anyio.abc import TaskGroup

from kodcode.config import EndpointSettings
from kodcode.errors import ConfigError, LLMError
from kodcode.llm.client import LLMRequest, LLMResponse, LLMTransport, OpenAITransport, TransientLLMError, preflight

__all__ = [
    "EndpointPool",
    "EndpointSpec",
    "EndpointStatus",
    "EndpointTransport",
    "SlidingWindow",
    "build_transport",
    "open_transport",
    "endpoint_specs",
    "estimate_tokens",
    "parse_duration",
    "parse_endpoint_urls",
    "preflight_pool",
]

EndpointKind = Literal["vllm", "openai", "auto"]
Clock = Callable[[], float]


@dataclass(frozen=True)
class EndpointSpec:
    """One server. Keys are read from the environment variable named by api_key_env, never stored."""

    base_url: str
    api_key_env: str | None = None
    rpm: int | None = None              # requests per minute; None: unlimited until headers say otherwise
    tpm: int | None = None              # tokens (prompt + completion) per minute
    max_concurrency: int | None = None  # hard cap on this endpoint's adaptive limit
    kind: EndpointKind = "auto"         # auto: vllm if /metrics has vllm gauges


class EndpointTransport(Protocol):
    async def send_with_headers(self, request: LLMRequest) -> tuple[LLMResponse, Mapping[str, str]]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class EndpointStatus:
    """What an endpoint is doing, for progress views, logs and tests."""

    base_url: str
    kind: str
    healthy: bool
    limit: float
    in_flight: int
    paused_s: float
    requests: int
    successes: int
    rate_limited: int
    failures: int
    ejections: int
    prompt_tokens: int
    completion_tokens: int
    rpm_limit: float | None
    tpm_limit: float | None
    queue_waiting: float | None
    queue_running: float | None
    latencies_s: tuple[float, ...]


def parse_endpoint_urls(value: str) -> list[str]:
    """'http://a:8000/v1, http://b:8000/v1' -> the URLs; one URL is a list of one."""
    urls = [part.strip() for part in value.split(",") if part.strip()]
    if not urls:
        raise ConfigError("--base-url is empty")
    if len(set(urls)) != len(urls):
        raise ConfigError(f"--base-url lists an endpoint twice: {value}")
    return urls


def endpoint_specs(base_url: str | None, api_key_env: str | None,
                   endpoints: Sequence[EndpointSettings] = ()) -> list[EndpointSpec]:
    """The servers of one endpoint: the config's [[endpoints]], then each URL of a comma-separated
    base_url not already listed. Keys default to the run's api_key_env, then OPENAI_API_KEY."""
    default_env = api_key_env or "OPENAI_API_KEY"
    specs = [EndpointSpec(e.base_url, e.api_key_env or default_env, e.rpm, e.tpm, e.max_concurrency, e.kind)
             for e in endpoints]
    listed = {spec.base_url.rstrip("/") for spec in specs}
    for url in parse_endpoint_urls(base_url) if base_url else []:
        if url.rstrip("/") not in listed:
            specs.append(EndpointSpec(url, default_env))
    if not specs:
        raise ConfigError("no endpoint: give --base-url or [[endpoints]]")
    return specs


def build_transport(specs: Sequence[EndpointSpec], *, timeout_s: float, logger: object = None,
                    **pool_options: object) -> LLMTransport:
    """A plain OpenAITransport for one server without limits (the single-endpoint behaviour as before),
    an EndpointPool otherwise."""
    only = specs[0]
    if len(specs) == 1 and only.rpm is None and only.tpm is None and only.max_concurrency is None and only.kind == "auto":
        return OpenAITransport(only.base_url, _api_key(only), timeout_s=timeout_s)
    return EndpointPool(specs, timeout_s=timeout_s, logger=logger, **pool_options)  # type: ignore[arg-type]


@asynccontextmanager
async def open_transport(specs: Sequence[EndpointSpec], *, timeout_s: float, logger: object = None,
                         **pool_options: object) -> AsyncIterator[LLMTransport]:
    """build_transport() for the length of a block: a pool's background tasks (probes, /metrics watchers,
    the rate-window timer) live in its task group and end with the block; the transport is closed."""
    transport = build_transport(specs, timeout_s=timeout_s, logger=logger, **pool_options)
    if isinstance(transport, EndpointPool):
        async with transport:
            yield transport
    else:
        try:
            yield transport
        finally:
            await transport.aclose()


async def preflight_pool(specs: Sequence[EndpointSpec], model: str | None) -> list[str]:
    """preflight() for every server: each must answer and serve `model` (a mistyped URL is a
    configuration error, not a server to eject and probe forever). Returns the first one's models."""
    served: list[str] | None = None
    for spec in specs:
        models = await preflight(spec.base_url, model, _api_key(spec))
        served = models if served is None else served
    return served or []


def estimate_tokens(request: LLMRequest) -> int:
    """Tokens a request may use, before it is sent: ~4 characters per prompt token, plus every
    completion token it may generate (n choices). An overestimate on purpose: usage corrects it."""
    if request.prompt is not None:
        chars = len(request.prompt)
    else:
        chars = sum(len(str(message.get("content", ""))) + 8 for message in request.messages)
    return chars // 4 + 1 + request.max_tokens * request.n


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str) -> float | None:
    """Seconds in an x-ratelimit-reset-* value: '1s', '6m0s', '20ms', '1h2m3.5s' or a bare number."""
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(number) * scale[unit] for number, unit in parts)


class _Entry:
    __slots__ = ("at", "amount", "live")

    def __init__(self, at: float, amount: float) -> None:
        self.at, self.amount, self.live = at, amount, True


class SlidingWindow:
    """Units admitted in any `window_s` seconds stay within `limit` (None: no limit).

    A log of (time, amount) entries rather than a token bucket: a bucket that allows a burst lets a
    minute hold burst + rate, while the log holds every minute to the limit. Amounts can be corrected
    after the fact (estimated tokens -> actual usage). Each operation touches only the entries that
    expire or that must expire to make room, so its cost is O(1) amortised."""

    def __init__(self, limit: float | None, clock: Clock, window_s: float = 60.0) -> None:
        self.limit = limit
        self._clock = clock
        self._window_s = window_s
        self._entries: deque[_Entry] = deque()
        self.total = 0.0

    def _expire(self, now: float) -> None:
        horizon = now - self._window_s
        entries = self._entries
        while entries and entries[0].at <= horizon:
            entry = entries.popleft()
            entry.live = False
            self.total -= entry.amount

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds until `amount` fits (0: now). A request larger than the whole limit fits an empty window."""
        self._expire(now)
        if self.limit is None:
            return 0.0
        excess = self.total + min(amount, self.limit) - self.limit
        if excess <= 1e-9:
            return 0.0
        freed = 0.0
        for entry in self._entries:
            freed += entry.amount
            if freed >= excess - 1e-9:
                return max(1e-3, entry.at + self._window_s - now)
        return self._window_s

    def add(self, amount: float, now: float, *, at: float | None = None) -> _Entry:
        entry = _Entry(now if at is None else at, amount)
        if at is None or not self._entries or at >= self._entries[-1].at:
            self._entries.append(entry)
        else:  # a back-dated entry (learned usage) keeps the log in time order
            index = next(i for i, old in enumerate(self._entries) if old.at > at)
            self._entries.insert(index, entry)
        self.total += amount
        return entry

    def correct(self, entry: _Entry, amount: float) -> None:
        """Replace an entry's estimate with the real amount (no effect once it has left the window)."""
        if entry.live:
            self.total += amount - entry.amount
            entry.amount = amount

    def sync_remaining(self, remaining: float, reset_s: float, now: float) -> None:
        """The server says only `remaining` is left until it resets in `reset_s`: account for the
        usage we did not see (other clients on the same key) as an entry that expires at the reset."""
        self._expire(now)
        if self.limit is None:
            return
        unseen = (self.limit - self.total) - remaining
        if unseen > 0.5:
            self.add(unseen, now, at=now - self._window_s + min(reset_s, self._window_s))


class _Endpoint:
    """One endpoint's state. Touched only from the event loop thread."""

    def __init__(self, spec: EndpointSpec, transport: EndpointTransport, clock: Clock, *,
                 initial_limit: float, ceiling: int) -> None:
        self.spec = spec
        self.url = spec.base_url.rstrip("/")
        self.root = self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url
        self.transport = transport
        self.kind: str = spec.kind
        self.max_limit = float(min(spec.max_concurrency or ceiling, ceiling))
        self.initial_limit = min(initial_limit, self.max_limit)
        self.limit = self.initial_limit
        self.slow_start = True
        self.last_decrease = -math.inf
        self.in_flight = 0
        self.paused_until = 0.0
        self.healthy = True
        self.consecutive_failures = 0
        self.rpm = SlidingWindow(spec.rpm, clock)
        self.tpm = SlidingWindow(spec.tpm, clock)
        self.requests = self.successes = self.rate_limited = self.failures = self.ejections = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.latencies: deque[float] = deque(maxlen=2048)
        self.latency_ewma: float | None = None
        self.baseline_p50: float | None = None
        self.queue_waiting: float | None = None
        self.queue_running: float | None = None
        self.deep_queue_polls = 0
        self.plateau = math.inf          # outstanding requests when the last 429 came: probe past it slowly

    @property
    def capacity(self) -> int:
        return max(1, int(self.limit))

    def round_trip_s(self) -> float:
        return self.latency_ewma if self.latency_ewma is not None else 1.0


@dataclass
class _Waiter:
    """A request waiting for an endpoint: handed one (`granted`) or an error, then woken."""

    tokens: int
    exclude: frozenset[int]
    woken: anyio.Event = field(default_factory=anyio.Event)
    granted: tuple[_Endpoint, _Ticket] | None = None
    error: BaseException | None = None
    abandoned: bool = False      # its caller was cancelled while waiting

    @property
    def done(self) -> bool:
        return self.woken.is_set() or self.abandoned

    def grant(self, endpoint: _Endpoint, ticket: _Ticket) -> None:
        self.granted = (endpoint, ticket)
        self.woken.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.woken.set()


@dataclass
class _Ticket:
    tokens: _Entry | None


class EndpointPool:
    """Several OpenAI-compatible endpoints as one LLMTransport (see the module docstring)."""

    def __init__(
        self,
        endpoints: Sequence[EndpointSpec],
        *,
        timeout_s: float = 300.0,
        max_failover: int | None = None,
        initial_concurrency: int = 8,
        ceiling: int = 1024,
        eject_after: int = 3,
        decrease_factor: float = 0.75,
        latency_factor: float = 2.0,
        metrics_interval_s: float = 0.5,
        probe_base_s: float = 0.5,
        probe_cap_s: float = 30.0,
        clock: Clock = time.monotonic,
        transport_factory: Callable[[EndpointSpec, str | None], EndpointTransport] | None = None,
        logger: object = None,
    ) -> None:
        if not endpoints:
            raise ConfigError("an endpoint pool needs at least one endpoint")
        if len({spec.base_url.rstrip("/") for spec in endpoints}) != len(endpoints):
            raise ConfigError("an endpoint pool lists the same base_url twice")
        factory = transport_factory or (lambda spec, key: OpenAITransport(spec.base_url, key, timeout_s=timeout_s))
        self._clock = clock
        self._endpoints = [
            _Endpoint(spec, factory(spec, _api_key(spec)), clock, initial_limit=initial_concurrency, ceiling=ceiling)
            for spec in endpoints
        ]
        self._max_failover = len(endpoints) - 1 if max_failover is None else max_failover
        self._eject_after = eject_after
        self._decrease_factor = decrease_factor
        self._latency_factor = latency_factor
        self._metrics_interval_s = metrics_interval_s
        self._probe_base_s = probe_base_s
        self._probe_cap_s = probe_cap_s
        self._log = logger
        self._waiters: deque[_Waiter] = deque()
        self._timer_at = math.inf                  # when the next time-based unblock is due (pool clock)
        self._timer_moved: anyio.Event | None = None   # set to wake the timer task when _timer_at moves
        self._task_group: TaskGroup | None = None  # background work: probes, /metrics watchers, the timer
        self._probing: set[int] = set()
        self._http: httpx.AsyncClient | None = None
        self._started = False
        self._closed = False

    # ---- LLMTransport ----------------------------------------------------------------------------

    async def send(self, request: LLMRequest) -> LLMResponse:
        self._start()
        tokens = estimate_tokens(request)
        tried: set[int] = set()
        last_error: TransientLLMError | None = None
        for _ in range(self._max_failover + 1):
            endpoint, ticket = await self._acquire(tokens, frozenset(tried))
            started = time.perf_counter()
            try:
                response, headers = await endpoint.transport.send_with_headers(request)
            except TransientLLMError as exc:
                self._on_failure(endpoint, ticket, exc)
                tried.add(id(endpoint))
                last_error = exc
                continue
            except BaseException:
                # A client error (400: the request is wrong, not the endpoint) or a cancellation.
                self._release(endpoint)
                raise
            self._on_success(endpoint, ticket, response, headers, time.perf_counter() - started)
            return response
        assert last_error is not None
        raise TransientLLMError(f"{last_error} (tried {len(tried)} endpoint(s))", self._fleet_retry_after(last_error),
                                kind=last_error.kind, headers=last_error.headers, outage=last_error.outage)

    async def __aenter__(self) -> "EndpointPool":
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        task_group.start_soon(self._run_timer)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        await self.aclose()
        task_group, self._task_group = self._task_group, None
        if task_group is None:
            return None
        task_group.cancel_scope.cancel()
        return await task_group.__aexit__(*exc_info)

    async def aclose(self) -> None:
        """Refuse new requests, fail the waiting ones, stop background work, close the endpoints' clients.
        Idempotent: LLMClient.aclose() and the pool's own block both call it."""
        if self._closed:
            return
        self._closed = True
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
        self._fail_waiters("the endpoint pool is closed")
        with anyio.CancelScope(shield=True):
            if self._http is not None:
                await self._http.aclose()
            for endpoint in self._endpoints:
                await endpoint.transport.aclose()

    # ---- inspection ------------------------------------------------------------------------------

    def statuses(self) -> list[EndpointStatus]:
        now = self._clock()
        return [
            EndpointStatus(
                base_url=e.url, kind=e.kind, healthy=e.healthy, limit=e.limit, in_flight=e.in_flight,
                paused_s=max(0.0, e.paused_until - now), requests=e.requests, successes=e.successes,
                rate_limited=e.rate_limited, failures=e.failures, ejections=e.ejections,
                prompt_tokens=e.prompt_tokens, completion_tokens=e.completion_tokens, rpm_limit=e.rpm.limit,
                tpm_limit=e.tpm.limit, queue_waiting=e.queue_waiting, queue_running=e.queue_running,
                latencies_s=tuple(e.latencies))
            for e in self._endpoints
        ]

    def status(self, base_url: str) -> EndpointStatus:
        url = base_url.rstrip("/")
        return next(s for s in self.statuses() if s.base_url == url)

    @property
    def label(self) -> str:
        """The pool's endpoints, as the outage line names them."""
        return ",".join(endpoint.url for endpoint in self._endpoints)

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done)

    # ---- admission -------------------------------------------------------------------------------

    async def _acquire(self, tokens: int, exclude: frozenset[int]) -> tuple[_Endpoint, _Ticket]:
        if self._closed:
            raise LLMError("the endpoint pool is closed")
        if not any(e.healthy for e in self._endpoints):
            raise TransientLLMError(f"every endpoint of the pool is down ({', '.join(e.url for e in self._endpoints)})",
                                    self._probe_base_s, kind="connection", outage="every endpoint is down")
        now = self._clock()
        if not self._waiters:  # fast path: nobody queued ahead
            endpoint = self._choose(tokens, exclude, now)
            if endpoint is not None:
                return endpoint, self._reserve(endpoint, tokens, now)
        waiter = _Waiter(tokens, exclude)
        self._waiters.append(waiter)
        self._dispatch()
        try:
            await waiter.woken.wait()
        except BaseException:
            waiter.abandoned = True
            if waiter.granted is not None:
                self._release(waiter.granted[0])  # handed a slot in the same tick the caller was cancelled
            raise
        if waiter.error is not None:
            raise waiter.error
        assert waiter.granted is not None
        return waiter.granted

    def _reserve(self, endpoint: _Endpoint, tokens: int, now: float) -> _Ticket:
        endpoint.in_flight += 1
        endpoint.requests += 1
        if endpoint.rpm.limit is not None:
            endpoint.rpm.add(1, now)
        entry = endpoint.tpm.add(tokens, now) if endpoint.tpm.limit is not None else None
        return _Ticket(entry)

    def _choose(self, tokens: int, exclude: frozenset[int], now: float) -> _Endpoint | None:
        best: _Endpoint | None = None
        best_load = math.inf
        preferred_alive = False
        fallback: _Endpoint | None = None
        fallback_load = math.inf
        for endpoint in self._endpoints:
            if not endpoint.healthy:
                continue
            excluded = id(endpoint) in exclude
            preferred_alive = preferred_alive or (not excluded and now >= endpoint.paused_until)
            if (endpoint.in_flight >= endpoint.capacity or now < endpoint.paused_until
                    or endpoint.rpm.wait_s(1, now) > 0 or endpoint.tpm.wait_s(tokens, now) > 0):
                continue
            load = (endpoint.in_flight + 1) / endpoint.capacity
            if excluded:
                if load < fallback_load:
                    fallback, fallback_load = endpoint, load
            elif load < best_load:
                best, best_load = endpoint, load
        # Another endpoint is preferred after a failure, but not at the price of waiting for none.
        return best if best is not None or preferred_alive else fallback

    def _dispatch(self) -> None:
        """Hand free slots to waiters, oldest first; arm one timer for the next time-based unblock."""
        now = self._clock()
        waiters = self._waiters
        while waiters:
            waiter = waiters[0]
            if waiter.done:
                waiters.popleft()
                continue
            endpoint = self._choose(waiter.tokens, waiter.exclude, now)
            if endpoint is None:
                break
            waiters.popleft()
            waiter.grant(endpoint, self._reserve(endpoint, waiter.tokens, now))
        if waiters:
            self._arm_timer(now, waiters[0].tokens)

    def _arm_timer(self, now: float, tokens: int) -> None:
        wake = math.inf
        for endpoint in self._endpoints:
            if not endpoint.healthy or endpoint.in_flight >= endpoint.capacity:
                continue  # a release or a recovery will dispatch
            ready = max(endpoint.paused_until, now + endpoint.rpm.wait_s(1, now), now + endpoint.tpm.wait_s(tokens, now))
            wake = min(wake, ready)
        if wake is math.inf or (wake >= self._timer_at - 1e-3 and self._timer_at > now):
            return
        self._timer_at = wake
        if self._timer_moved is not None:
            self._timer_moved.set()

    async def _run_timer(self) -> None:
        """One task instead of a timer per waiter: sleeps until the earliest time-based unblock (a pause
        ending, a rate window refilling), re-arms when _arm_timer moves that time, then dispatches."""
        while True:
            moved = self._timer_moved = anyio.Event()
            delay = self._timer_at - self._clock()
            if delay == math.inf:
                await moved.wait()
                continue
            with anyio.move_on_after(max(0.0, delay) + 1e-3):
                await moved.wait()
                continue
            self._timer_at = math.inf
            self._dispatch()

    def _fail_waiters(self, message: str, outage: str | None = None) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done:
                waiter.fail(TransientLLMError(message, self._probe_base_s, kind="connection", outage=outage))

    # ---- outcomes --------------------------------------------------------------------------------

    def _release(self, endpoint: _Endpoint) -> None:
        endpoint.in_flight -= 1
        self._dispatch()

    def _on_success(self, endpoint: _Endpoint, ticket: _Ticket, response: LLMResponse,
                    headers: Mapping[str, str], latency_s: float) -> None:
        now = self._clock()
        endpoint.successes += 1
        endpoint.consecutive_failures = 0
        endpoint.prompt_tokens += response.prompt_tokens
        endpoint.completion_tokens += response.completion_tokens
        if ticket.tokens is not None:
            endpoint.tpm.correct(ticket.tokens, response.prompt_tokens + response.completion_tokens)
        endpoint.latencies.append(latency_s)
        endpoint.latency_ewma = latency_s if endpoint.latency_ewma is None else 0.9 * endpoint.latency_ewma + 0.1 * latency_s
        self._learn_limits(endpoint, headers, now)
        self._increase(endpoint)
        self._release(endpoint)

    def _on_failure(self, endpoint: _Endpoint, ticket: _Ticket, error: TransientLLMError) -> None:
        now = self._clock()
        if ticket.tokens is not None:  # nothing was generated; keep a small charge for the prompt
            endpoint.tpm.correct(ticket.tokens, min(ticket.tokens.amount, 1.0))
        self._learn_limits(endpoint, error.headers, now)
        if error.kind == "rate_limit":
            endpoint.rate_limited += 1
            endpoint.plateau = float(endpoint.in_flight)
            endpoint.paused_until = max(endpoint.paused_until, now + (error.retry_after if error.retry_after is not None else 1.0))
            self._decrease(endpoint, now)
        else:
            endpoint.failures += 1
            endpoint.consecutive_failures += 1
            if error.retry_after is not None:
                endpoint.paused_until = max(endpoint.paused_until, now + error.retry_after)
            self._decrease(endpoint, now)
            if _refused(error) or endpoint.consecutive_failures >= self._eject_after:
                self._eject(endpoint, str(error))
        self._release(endpoint)

    def _increase(self, endpoint: _Endpoint) -> None:
        # Grow only when the limit was what held this endpoint back, and never over a queue.
        if endpoint.in_flight < endpoint.limit * 0.5 or endpoint.limit >= endpoint.max_limit:
            return
        if endpoint.queue_waiting is not None and endpoint.queue_running is not None:
            if endpoint.queue_waiting > 0:
                return
            # Requests the server does not report yet are still in transit (a busy client, slow
            # connects): a limit far above what the server holds only piles them up on our side.
            if endpoint.limit >= 2 * max(4.0, endpoint.queue_running):
                return
        if endpoint.slow_start:
            step = 1.0                       # doubles per round trip
        elif endpoint.limit + 1 <= endpoint.plateau:
            step = 1.0 / endpoint.limit      # +1 per round trip
        else:
            step = 0.1 / endpoint.limit      # near where the server said 429 last time: +1 per 10 round trips
        endpoint.limit = min(endpoint.max_limit, endpoint.limit + step)

    def _decrease(self, endpoint: _Endpoint, now: float) -> None:
        # One cut per round trip: the requests already in flight when the first 429 came were sent
        # under the old limit, and their failures say nothing new.
        if now - endpoint.last_decrease < endpoint.round_trip_s():
            return
        endpoint.limit = max(1.0, endpoint.limit * self._decrease_factor)
        endpoint.slow_start = False
        endpoint.last_decrease = now

    def _learn_limits(self, endpoint: _Endpoint, headers: Mapping[str, str], now: float) -> None:
        if not headers:
            return
        for window, kind, configured in ((endpoint.rpm, "requests", endpoint.spec.rpm),
                                         (endpoint.tpm, "tokens", endpoint.spec.tpm)):
            limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
            if limit is not None and limit > 0:
                window.limit = min(limit, configured) if configured is not None else limit
            remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}", "") or "")
            if remaining is not None and reset is not None:
                window.sync_remaining(remaining, reset, now)

    def _fleet_retry_after(self, error: TransientLLMError) -> float | None:
        now = self._clock()
        pauses = [e.paused_until - now for e in self._endpoints if e.healthy]
        if pauses and min(pauses) > 0:
            return min(pauses)
        return error.retry_after

    # ---- health ----------------------------------------------------------------------------------

    def _eject(self, endpoint: _Endpoint, reason: str) -> None:
        if not endpoint.healthy:
            return
        endpoint.healthy = False
        endpoint.ejections += 1
        if self._log is not None:
            self._log.warning("endpoint_ejected", base_url=endpoint.url, reason=reason)
        if not any(e.healthy for e in self._endpoints):
            self._fail_waiters(f"every endpoint of the pool is down; last: {reason}", "every endpoint is down")
        if id(endpoint) not in self._probing and not self._closed:
            self._spawn(self._probe, endpoint)

    async def _probe(self, endpoint: _Endpoint) -> None:
        self._probing.add(id(endpoint))
        try:
            delay = self._probe_base_s
            while not self._closed:
                await anyio.sleep(delay)
                if await self._alive(endpoint):
                    break
                delay = min(self._probe_cap_s, delay * 2)
            else:
                return
        finally:
            self._probing.discard(id(endpoint))
        endpoint.healthy = True
        endpoint.consecutive_failures = 0
        endpoint.limit = endpoint.initial_limit
        endpoint.slow_start = True
        endpoint.plateau = math.inf
        endpoint.paused_until = 0.0
        if self._log is not None:
            self._log.info("endpoint_recovered", base_url=endpoint.url)
        self._dispatch()

    async def _alive(self, endpoint: _Endpoint) -> bool:
        client = self._client()
        for url in (endpoint.url + "/models", endpoint.root + "/health"):
            try:
                reply = await client.get(url, headers=_auth(endpoint.spec))
            except httpx.HTTPError:
                return False  # nothing listens: no point trying the second path
            if reply.status_code == 200:
                return True
        return False

    # ---- vLLM queue signal -----------------------------------------------------------------------

    async def _watch_metrics(self, endpoint: _Endpoint) -> None:
        client = self._client()
        while not self._closed:
            try:
                reply = await client.get(endpoint.root + "/metrics")
            except httpx.HTTPError:
                reply = None  # down for now: health handling ejects it; keep watching
            gauges = _vllm_gauges(reply.text) if reply is not None and reply.status_code == 200 else None
            if reply is not None and gauges is None and endpoint.kind == "auto":
                endpoint.kind = "openai"  # it answers without vLLM gauges: a hosted API or another server
                return
            if gauges is not None:
                endpoint.kind = "vllm"
                endpoint.queue_waiting, endpoint.queue_running = gauges
                self._react_to_queue(endpoint)
            self._react_to_latency(endpoint)
            await anyio.sleep(self._metrics_interval_s)

    def _react_to_queue(self, endpoint: _Endpoint) -> None:
        waiting = endpoint.queue_waiting or 0.0
        running = endpoint.queue_running or 0.0
        # A little queue keeps the server's batch full as requests finish; more only adds latency.
        headroom = max(1.0, 0.1 * running)
        if waiting <= headroom:
            endpoint.deep_queue_polls = 0
            if waiting == 0:
                self._dispatch()  # growth allowed again
            return
        endpoint.deep_queue_polls += 1
        endpoint.slow_start = False          # a standing queue: the server's capacity is found
        if endpoint.deep_queue_polls < 2 or not endpoint.healthy:
            return
        endpoint.deep_queue_polls = 0
        now = self._clock()
        target = running + headroom
        if endpoint.limit > target:
            # What the server runs at once plus a little queue. Idempotent, so no cool-down is needed
            # while the requests sent under the old limit drain.
            endpoint.limit = max(1.0, target)
            endpoint.last_decrease = now
        elif endpoint.in_flight <= endpoint.limit:
            # At that level and not draining, yet the queue stands: other clients share the server.
            self._decrease(endpoint, now)

    def _react_to_latency(self, endpoint: _Endpoint) -> None:
        recent = list(endpoint.latencies)[-32:]
        if len(recent) < 16 or endpoint.kind != "vllm":
            return
        p50 = sorted(recent)[len(recent) // 2]
        if endpoint.baseline_p50 is None or p50 < endpoint.baseline_p50:
            endpoint.baseline_p50 = p50
        elif p50 > self._latency_factor * endpoint.baseline_p50:
            self._decrease(endpoint, self._clock())

    # ---- plumbing --------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        for endpoint in self._endpoints:
            if endpoint.kind in ("vllm", "auto"):
                self._spawn(self._watch_metrics, endpoint)

    def _spawn(self, work: Callable[..., Coroutine[Any, Any, None]], *args: object) -> None:
        if self._task_group is None:
            raise LLMError("an EndpointPool must be used inside `async with` (or open_transport()): "
                           "its probes and watchers run in its task group")
        self._task_group.start_soon(work, *args)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=5.0)
        return self._http


def _refused(error: BaseException) -> bool:
    """Nothing listens there (connection refused, connect timeout): eject at once. A connection that
    drops mid-answer is only a failure: a keep-alive race on a healthy server looks the same."""
    seen: BaseException | None = error
    for _ in range(6):
        if seen is None:
            return False
        if type(seen).__name__ in ("ConnectError", "ConnectTimeout", "ConnectionRefusedError"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _api_key(spec: EndpointSpec) -> str | None:
    return (os.environ.get(spec.api_key_env) or None) if spec.api_key_env else None


def _auth(spec: EndpointSpec) -> dict[str, str]:
    key = _api_key(spec)
    return {"Authorization": f"Bearer {key}"} if key else {}


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


_GAUGE = re.compile(r"^(vllm:num_requests_(?:waiting|running))(?:\{[^}]*\})?\s+([0-9.eE+-]+)", re.MULTILINE)


def _vllm_gauges(text: str) -> tuple[float, float] | None:
    """(waiting, running) summed over every model label, or None when the text has no vLLM gauges."""
    totals = {"vllm:num_requests_waiting": 0.0, "vllm:num_requests_running": 0.0}
    seen = False
    for name, value in _GAUGE.findall(text):
        try:
            totals[name] += float(value)
            seen = True
        except ValueError:
            continue
    return (totals["vllm:num_requests_waiting"], totals["vllm:num_requests_running"]) if seen else None
