"""EndpointPool against real local OpenAI-protocol servers (and, where a clock must be frozen, an
in-process transport): ejection and recovery, 429 back-off, vLLM queue shedding, rate limits, costs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any

import pytest

import scripted_openai
from kodcode.config import load_config
from kodcode.llm.pool import (EndpointPool, EndpointSpec, SlidingWindow, build_transport, endpoint_specs,
                                   estimate_tokens, parse_duration, parse_endpoint_urls, preflight_pool)
from kodcode.llm.client import LLMClient, LLMRequest, LLMResponse, OpenAITransport
from kodcode.llm.prices import DEFAULT_PRICES, merged_prices, price_for
from kodcode.llm.budget import Budget
from kodcode.llm.fake import ScriptedTransport
from kodcode.errors import ConfigError, EndpointUnavailable
from scripted_openai import FailFirst, Fault, Reply, ScriptedOpenAIServer, ScriptedRequest

Server = Callable[..., ScriptedOpenAIServer]


def answer(request: ScriptedRequest) -> Reply:
    return Reply(f"answer to: {request.user}", usage={"prompt_tokens": 10, "completion_tokens": 20})


def chat(content: str, *, model: str = "scripted-model", max_tokens: int = 64) -> LLMRequest:
    return LLMRequest(role="solver", model=model, messages=({"role": "user", "content": content},), max_tokens=max_tokens)


def client_for(pool: EndpointPool, **options: Any) -> LLMClient:
    options.setdefault("concurrency", 8)
    options.setdefault("backoff_base_s", 0.001)
    options.setdefault("backoff_cap_s", 0.01)
    return LLMClient({"default": pool}, None, **options)


async def run_batch(client: LLMClient, prefix: str, count: int) -> list[LLMResponse]:
    return list(await asyncio.gather(*(client.complete(chat(f"{prefix} {i}")) for i in range(count))))


async def wait_until(condition: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Wait for a state change made by a background task (not a timing assertion: the bound is generous)."""
    for _ in range(int(limit_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never became true")


class SamePortServer(ScriptedOpenAIServer):
    """A scripted server that restarts on the port it first had, like a vLLM server coming back."""

    fixed_port = 0

    def start(self) -> ScriptedOpenAIServer:
        port = self.fixed_port

        class Bound(scripted_openai._HTTPServer):
            def server_bind(self) -> None:
                self.server_address = ("127.0.0.1", port)
                super().server_bind()

        self._stopping.clear()
        self._httpd = Bound(self)
        self.fixed_port = self._httpd.server_port
        self._serve_thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._serve_thread.start()
        return self


def served(server: ScriptedOpenAIServer) -> int:
    return sum(1 for record in server.llm_requests if record.status == 200)


async def test_dead_endpoint_is_ejected_and_rejoins_after_restart(scripted_server: Server) -> None:
    steady = scripted_server(answer)
    flaky = SamePortServer(answer).start()
    flaky_url = flaky.base_url
    try:
        async with EndpointPool([EndpointSpec(steady.base_url, kind="openai"), EndpointSpec(flaky_url, kind="openai")],
                                probe_base_s=0.05, probe_cap_s=0.1) as pool:
            client = client_for(pool, max_retries=2)
            await run_batch(client, "before", 16)
            assert served(flaky) > 0 and served(steady) > 0

            flaky.stop()
            before = served(steady)
            replies = await run_batch(client, "during", 16)
            assert all(reply.text.startswith("answer to: during") for reply in replies)
            status = pool.status(flaky_url)
            assert not status.healthy and status.ejections == 1
            assert served(steady) - before == 16          # every request went to the live endpoint

            flaky.start()                                  # same port: the probe finds it again
            await wait_until(lambda: pool.status(flaky_url).healthy)
            flaky.reset_counts()
            await run_batch(client, "after", 32)
            assert served(flaky) > 0                       # back in rotation
            await client.aclose()
    finally:
        flaky.stop()


async def test_every_endpoint_down_pauses_the_client_until_max_outage(scripted_server: Server) -> None:
    server = SamePortServer(answer).start()
    url = server.base_url
    server.stop()
    async with EndpointPool([EndpointSpec(url, kind="openai")], probe_base_s=0.05) as pool:
        client = client_for(pool, max_retries=1, max_outage_s=0.3, probe_base_s=0.02, probe_cap_s=0.05)
        # Not "gave up after 2 tries": a pool with every endpoint down is an outage, waited out, then a stop.
        with pytest.raises(EndpointUnavailable, match="longer than --max-outage"):
            await client.complete(chat("nobody home"))
        assert pool.status(url).ejections == 1
        await client.aclose()


class Switch:
    """A fault plan that can be turned on and off: 429 with a short Retry-After on each body's first try."""

    def __init__(self) -> None:
        self.on = False
        self._plan = FailFirst(Fault.rate_limited("0.05"))

    def __call__(self, request: ScriptedRequest) -> Fault | None:
        return self._plan(request) if self.on else None


async def test_429_cuts_the_limit_and_success_grows_it_back(scripted_server: Server) -> None:
    switch = Switch()
    server = scripted_server(answer, faults=switch, latency=0.01)
    async with EndpointPool([EndpointSpec(server.base_url, kind="openai")], initial_concurrency=8) as pool:
        client = client_for(pool, concurrency=8, max_retries=4)
        await run_batch(client, "warm", 40)
        grown = pool.status(server.base_url).limit
        assert grown > 8                                   # slow start while nothing pushes back

        switch.on = True
        await run_batch(client, "limited", 8)
        cut = pool.status(server.base_url)
        assert cut.rate_limited >= 1
        assert cut.limit < grown                           # multiplicative decrease

        switch.on = False
        await run_batch(client, "recover", 80)
        assert pool.status(server.base_url).limit > cut.limit   # additive increase
        await client.aclose()


async def test_queueing_server_is_shed_by_its_queue_depth(scripted_server: Server) -> None:
    # capacity=2 queues the rest like vLLM and never answers 429: only /metrics says it is saturated.
    server = scripted_server(answer, capacity=2, latency=0.05)
    async with EndpointPool([EndpointSpec(server.base_url, kind="auto")], initial_concurrency=16, metrics_interval_s=0.02) as pool:
        client = client_for(pool, concurrency=16)
        await run_batch(client, "load", 120)
        status = pool.status(server.base_url)
        assert status.kind == "vllm"                        # detected from the vllm: gauges
        assert status.rate_limited == 0
        assert status.limit < 16                            # fewer requests than it was first given
        assert any(r.endpoint == "metrics" for r in server.requests)
        await client.aclose()


def test_sliding_window_holds_tokens_per_minute_within_five_percent() -> None:
    now = [0.0]
    tpm = 10_000
    window = SlidingWindow(tpm, lambda: now[0])
    estimate, actual = 601, 500                         # prompt/4 + max_tokens before, usage after
    admitted: list[tuple[float, int]] = []
    pending: list[tuple[float, Any]] = []
    for step in range(6000):                            # 10 minutes of a client that always wants more, 0.1 s steps
        now[0] = step * 0.1
        for done in [p for p in pending if p[0] <= now[0]]:
            window.correct(done[1], actual)
            pending.remove(done)
        while window.wait_s(estimate, now[0]) == 0:
            pending.append((now[0] + 0.3, window.add(estimate, now[0])))
            admitted.append((now[0], actual))
    worst = 0
    for start in range(0, 5400, 5):                     # every 60-s window, 0.5-s apart
        begin = start * 0.1
        worst = max(worst, sum(tokens for at, tokens in admitted if begin <= at < begin + 60))
    assert worst <= tpm * 1.05
    total = sum(tokens for _, tokens in admitted)
    assert total >= tpm * 10 * 0.9                      # and it does use the limit it has


def fake_transport(headers: Mapping[str, str] | None = None, usage: tuple[int, int] = (100, 400)) -> ScriptedTransport:
    """In-process endpoint: answers at once with fixed usage and the given headers."""
    return ScriptedTransport(lambda request: "ok", usage=usage, headers=dict(headers or {}))


def fake_pool(fakes: dict[str, ScriptedTransport], specs: list[EndpointSpec], now: list[float]) -> EndpointPool:
    return EndpointPool(specs, clock=lambda: now[0], transport_factory=lambda spec, key: fakes[spec.base_url])


async def test_a_full_token_window_sends_requests_to_the_other_endpoint() -> None:
    now = [100.0]                                      # frozen: the window never refills during the test
    fakes = {"http://a/v1": fake_transport(), "http://b/v1": fake_transport()}
    async with fake_pool(fakes, [EndpointSpec("http://a/v1", tpm=2000, kind="openai"),
                                 EndpointSpec("http://b/v1", kind="openai")], now) as pool:
        for i in range(20):
            await pool.send(chat(f"q{i}", max_tokens=400))
        # Estimates of ~402 tokens are corrected to the 500 used: a takes 4 (2000 tokens), b the rest.
        assert fakes["http://a/v1"].calls == 4
        assert fakes["http://b/v1"].calls == 16
        await pool.aclose()


async def test_rate_limit_headers_are_learned() -> None:
    now = [0.0]
    headers = {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
               "x-ratelimit-reset-requests": "30s", "x-ratelimit-limit-tokens": "150000",
               "x-ratelimit-remaining-tokens": "149000", "x-ratelimit-reset-tokens": "400ms"}
    fakes = {"http://a/v1": fake_transport(headers), "http://b/v1": fake_transport()}
    async with fake_pool(fakes, [EndpointSpec("http://a/v1", kind="openai"), EndpointSpec("http://b/v1", kind="openai")], now) as pool:
        await pool.send(chat("first"))                     # both idle: the first endpoint wins the tie
        learned = pool.status("http://a/v1")
        assert (learned.rpm_limit, learned.tpm_limit) == (60, 150000)
        for i in range(5):                                 # a said "0 requests left for 30 s": b takes them
            await pool.send(chat(f"next {i}"))
        assert fakes["http://a/v1"].calls == 1 and fakes["http://b/v1"].calls == 5
        now[0] = 31.0                                      # after the reset a is usable again
        await asyncio.gather(*(pool.send(chat(f"later {i}")) for i in range(4)))
        assert fakes["http://a/v1"].calls > 1
        await pool.aclose()


async def test_configured_limit_wins_over_a_larger_learned_one() -> None:
    now = [0.0]
    fakes = {"http://a/v1": fake_transport({"x-ratelimit-limit-requests": "10000"})}
    async with fake_pool(fakes, [EndpointSpec("http://a/v1", rpm=100, kind="openai")], now) as pool:
        await pool.send(chat("one"))
        assert pool.status("http://a/v1").rpm_limit == 100
        await pool.aclose()


async def test_costs_are_summed_from_the_price_table(scripted_server: Server) -> None:
    server = scripted_server(lambda r: Reply("x", usage={"prompt_tokens": 1000, "completion_tokens": 2000}),
                             models=("gpt-4o-mini-2024-07-18",))
    model = "gpt-4o-mini-2024-07-18"
    budget = Budget(prices=merged_prices({}, [model]))
    async with EndpointPool([EndpointSpec(server.base_url, kind="openai")]) as pool:
        client = client_for(pool, budget=budget)
        responses = await asyncio.gather(*(client.complete(chat(f"c{i}", model=model)) for i in range(5)))
        per_call = (1000 * 0.15 + 2000 * 0.60) / 1_000_000
        assert all(r.cost_usd == pytest.approx(per_call) for r in responses)
        assert client.cost_usd == pytest.approx(5 * per_call)
        assert budget.spent.usd == pytest.approx(5 * per_call)
        await client.aclose()


def test_price_lookup_overrides_and_families() -> None:
    assert price_for("gpt-4o") == DEFAULT_PRICES["gpt-4o"]
    assert price_for("gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini"]   # not gpt-4o's price
    assert price_for("openai/gpt-4.1-nano") == DEFAULT_PRICES["gpt-4.1-nano"]
    assert price_for("claude-3.5-haiku-20241022") == DEFAULT_PRICES["claude-3-5-haiku"]
    assert price_for("Qwen/Qwen2.5-Coder-7B-Instruct") is None
    merged = merged_prices({"gpt-4o": (1.0, 2.0), "local": (0.0, 0.0)}, ["gpt-4o", "deepseek-chat", "my-vllm-model"])
    assert merged == {"gpt-4o": (1.0, 2.0), "local": (0.0, 0.0), "deepseek-chat": DEFAULT_PRICES["deepseek-chat"]}


def test_parsers() -> None:
    assert parse_duration("6m0s") == 360.0
    assert parse_duration("1h2m3.5s") == 3723.5
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("2") == 2.0
    assert parse_duration("soon") is None
    assert parse_endpoint_urls(" http://a/v1 ,http://b/v1") == ["http://a/v1", "http://b/v1"]
    with pytest.raises(ConfigError):
        parse_endpoint_urls("http://a/v1,http://a/v1")
    assert estimate_tokens(chat("x" * 400, max_tokens=100)) == (400 + 8) // 4 + 1 + 100


def test_endpoints_from_config_and_comma_separated_base_url(tmp_path: Any) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[[endpoints]]\nbase_url = "http://a:8000/v1"\ntpm = 90000\nkind = "vllm"\n'
                    '[[endpoints]]\nbase_url = "http://b:8000/v1"\napi_key_env = "B_KEY"\nmax_concurrency = 64\n')
    config = load_config(path, {"base_url": "http://a:8000/v1,http://c:8000/v1", "api_key_env": "RUN_KEY"})
    specs = endpoint_specs(config.base_url, config.api_key_env, config.endpoints)
    assert specs == [EndpointSpec("http://a:8000/v1", "RUN_KEY", tpm=90000, kind="vllm"),
                     EndpointSpec("http://b:8000/v1", "B_KEY", max_concurrency=64),
                     EndpointSpec("http://c:8000/v1", "RUN_KEY")]
    assert isinstance(build_transport(specs, timeout_s=5), EndpointPool)
    assert isinstance(build_transport(endpoint_specs("http://a/v1", None), timeout_s=5), OpenAITransport)


async def test_preflight_checks_every_server(scripted_server: Server) -> None:
    good = scripted_server(answer)
    down = SamePortServer(answer).start()
    down_url = down.base_url
    down.stop()
    assert await preflight_pool([EndpointSpec(good.base_url)], "scripted-model") == ["scripted-model"]
    with pytest.raises(ConfigError, match="cannot reach"):
        await preflight_pool([EndpointSpec(good.base_url), EndpointSpec(down_url)], "scripted-model")


async def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    release = asyncio.Event()

    async def held(request: LLMRequest) -> str:
        await release.wait()
        return "ok"

    fake = ScriptedTransport(held)
    async with EndpointPool([EndpointSpec("http://a/v1", kind="openai", max_concurrency=1)],
                            transport_factory=lambda spec, key: fake) as pool:
        first = asyncio.create_task(pool.send(chat("first")))
        queued = asyncio.create_task(pool.send(chat("queued")))
        await wait_until(lambda: pool.waiting == 1)
        queued.cancel()
        release.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert pool.status("http://a/v1").in_flight == 0 and pool.waiting == 0
        await pool.send(chat("after"))                     # the slot is free again
        assert fake.calls == 2
        await pool.aclose()
