"""LLMClient + OpenAITransport against a real local OpenAI-protocol server, with the real openai client."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from kodcode.errors import BudgetExhausted, ConfigError, LLMError
from kodcode.llm.client import LLMClient, LLMRequest, OpenAITransport, TransientLLMError, preflight
from kodcode.store.records import SqliteRecords
from kodcode.llm.budget import Budget
from kodcode.llm.fake import MemoryRecorder
from kodcode.store.sqlite import Store
from scripted_openai import FailFirst, Fault, Reply, ScriptedOpenAIServer, ScriptedRequest

Server = Callable[..., ScriptedOpenAIServer]


def echo(request: ScriptedRequest) -> Reply:
    if request.endpoint == "completions":
        return Reply(f"completed: {request.prompt}", usage={"prompt_tokens": 3, "completion_tokens": 4})
    return Reply(f"answer to: {request.user}", usage={"prompt_tokens": 5, "completion_tokens": 6})


class RetryLog:
    """Stands in for the structlog logger: keeps the retry events."""

    def __init__(self) -> None:
        self.retries: list[dict[str, Any]] = []

    def warning(self, event: str, **fields: Any) -> None:
        assert event == "llm_retry"
        self.retries.append(fields)


def chat(content: str, **options: Any) -> LLMRequest:
    return LLMRequest(role="solver", model="scripted-model", messages=({"role": "user", "content": content},),
                      max_tokens=64, **options)


def client_for(server: ScriptedOpenAIServer, recorder: Any = None, **options: Any) -> LLMClient:
    options.setdefault("concurrency", 4)
    options.setdefault("backoff_base_s", 0.001)
    options.setdefault("backoff_cap_s", 0.01)
    timeout_s = options.pop("timeout_s", 30.0)
    return LLMClient({"default": OpenAITransport(server.base_url, "key", timeout_s=timeout_s)}, recorder, **options)


async def test_chat_and_raw_completion(scripted_server: Server) -> None:
    server = scripted_server(echo)
    client = client_for(server)
    try:
        response = await client.complete(chat("add two numbers", seed=7, stop=("\n\n",)))
        assert response.text == "answer to: add two numbers"
        assert response.finish_reasons == ("stop",)
        assert (response.prompt_tokens, response.completion_tokens, response.cached) == (5, 6, False)
        sent = server.llm_requests[-1].request
        assert sent is not None and sent.endpoint == "chat"
        assert (sent.seed, sent.stop, sent.max_tokens) == (7, ("\n\n",), 64)

        raw = LLMRequest(role="proposer", model="scripted-model", prompt="<|im_start|>user\n", max_tokens=32)
        completed = await client.complete(raw)
        assert completed.text == "completed: <|im_start|>user\n"
        assert server.llm_requests[-1].request.endpoint == "completions"  # type: ignore[union-attr]
        assert client.statistics()["tokens"] == 5 + 6 + 3 + 4
    finally:
        await client.aclose()


async def test_several_choices_come_back_in_order(scripted_server: Server) -> None:
    server = scripted_server(lambda request: Reply(["one", "two", "three"], finish_reason=["stop", "length", "stop"]))
    client = client_for(server)
    try:
        response = await client.complete(chat("three please", n=3))
        assert response.texts == ("one", "two", "three")
        assert response.finish_reasons == ("stop", "length", "stop")
    finally:
        await client.aclose()


def test_request_key_covers_what_is_sent_and_nothing_else() -> None:
    base = chat("q", seed=1)
    assert base.key == chat("q", seed=1, template="solve", template_hash="abc", item_id="i", attempt=3).key
    for different in (chat("q", seed=2), chat("q2", seed=1), chat("q", seed=1, temperature=0.1),
                      chat("q", seed=1, stop=("x",)), chat("q", seed=1, n=2)):
        assert different.key != base.key
    raw = LLMRequest(role="solver", model="scripted-model", prompt="q", max_tokens=64, seed=1)
    assert raw.key != base.key


async def test_a_repeated_request_is_served_from_the_recorder(scripted_server: Server) -> None:
    server = scripted_server(echo)
    recorder = MemoryRecorder()
    client = client_for(server, recorder)
    try:
        first = await client.complete(chat("cache me", seed=1))
        second = await client.complete(chat("cache me", seed=1, item_id="other", attempt=2))
        assert second.cached and not first.cached
        assert second.texts == first.texts
        assert sum(server.completed_hashes.values()) == 1
        assert len(server.llm_requests) == 1
        assert (client.calls, client.cache_hits) == (1, 1)
        await client.complete(chat("cache me", seed=2))  # another seed is another request
        assert len(server.llm_requests) == 2
    finally:
        await client.aclose()


async def test_the_store_answers_a_request_paid_for_in_an_earlier_run(scripted_server: Server, tmp_path: Path) -> None:
    server = scripted_server(echo)
    db = tmp_path / "kodcode.db"
    store = await Store.open(db)
    client = client_for(server, SqliteRecords(store))
    try:
        paid = await client.complete(chat("remember me", seed=3, item_id="i1", attempt=0))
    finally:
        await client.aclose()
        await store.aclose()

    store = await Store.open(db)  # a new run on the same store
    client = client_for(server, SqliteRecords(store))
    try:
        again = await client.complete(chat("remember me", seed=3, item_id="i1", attempt=0))
        assert again.cached
        assert (again.texts, again.prompt_tokens, again.completion_tokens) == (
            paid.texts, paid.prompt_tokens, paid.completion_tokens)
        assert sum(server.completed_hashes.values()) == 1
        assert await store.scalar("SELECT item_id FROM llm_calls") == "i1"
    finally:
        await client.aclose()
        await store.aclose()


@pytest.mark.parametrize("fault", [
    Fault.rate_limited("0"),
    Fault.http_error(500),
    Fault.http_error(503),
    Fault.drop(),
    Fault.truncated_json(),
    Fault.empty_choices(),
], ids=lambda fault: f"{fault.kind}-{fault.status}")
async def test_transient_failures_are_retried_until_success(scripted_server: Server, fault: Fault) -> None:
    server = scripted_server(echo, faults=FailFirst(fault, times=2))
    recorder = MemoryRecorder()
    log = RetryLog()
    client = client_for(server, recorder, logger=log)
    try:
        response = await client.complete(chat("flaky", seed=1, item_id="i", attempt=0))
        assert response.text == "answer to: flaky"
        assert client.retries == 2
        assert [entry["retry"] for entry in log.retries] == [1, 2]
        assert log.retries[0]["item_id"] == "i"
        assert len(server.llm_requests) == 3
        assert sum(server.completed_hashes.values()) == 1
        assert len(recorder.calls) == 1
    finally:
        await client.aclose()


async def test_a_timeout_is_retried(scripted_server: Server) -> None:
    server = scripted_server(echo, faults=FailFirst(Fault.stall(30)))
    client = client_for(server, timeout_s=0.5)
    try:
        assert (await client.complete(chat("slow once"))).text == "answer to: slow once"
        assert client.retries == 1
    finally:
        await client.aclose()


async def test_retry_after_sets_the_least_delay(scripted_server: Server) -> None:
    server = scripted_server(echo, faults=FailFirst(Fault.rate_limited("0.2")))
    log = RetryLog()
    client = client_for(server, logger=log, backoff_base_s=0.0)
    try:
        await client.complete(chat("rate limited"))
        assert [entry["delay_s"] for entry in log.retries] == [0.2]
        assert "429" in log.retries[0]["error"]
    finally:
        await client.aclose()


async def test_a_client_error_is_not_retried(scripted_server: Server) -> None:
    server = scripted_server(echo, faults=FailFirst(Fault.http_error(400, message="bad max_tokens"), times=100))
    recorder = MemoryRecorder()
    client = client_for(server, recorder)
    try:
        with pytest.raises(LLMError, match="400.*bad max_tokens") as caught:
            await client.complete(chat("bad"))
        assert not isinstance(caught.value, TransientLLMError)
        assert len(server.llm_requests) == 1
        assert client.retries == 0
        assert recorder.calls == {}
    finally:
        await client.aclose()


async def test_gives_up_after_max_retries(scripted_server: Server) -> None:
    server = scripted_server(echo, faults=FailFirst(Fault.http_error(500), times=100))
    client = client_for(server, max_retries=2)
    try:
        with pytest.raises(LLMError, match=r"500 .*gave up after 3 tries") as caught:
            await client.complete(chat("never"))
        assert not isinstance(caught.value, TransientLLMError)
        assert "\n" not in str(caught.value)
        assert len(server.llm_requests) == 3
    finally:
        await client.aclose()


async def test_concurrency_limit_holds_at_the_server(scripted_server: Server) -> None:
    lock = threading.Lock()
    active = 0
    peak = 0
    stop = threading.Event()

    def tracking(request: ScriptedRequest) -> Reply:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        stop.wait(0.05)  # hold the request open so that others pile up
        with lock:
            active -= 1
        return echo(request)

    server = scripted_server(tracking)
    client = client_for(server, concurrency=3)
    try:
        async with anyio.create_task_group() as tg:
            for i in range(15):
                tg.start_soon(client.complete, chat(f"question {i}"))
        assert len(server.llm_requests) == 15
        assert 1 < peak <= 3
        assert client.statistics()["in_flight"] == 0
    finally:
        await client.aclose()


async def test_an_exhausted_budget_stops_before_sending(scripted_server: Server) -> None:
    server = scripted_server(echo)
    budget = Budget(calls=2)
    recorder = MemoryRecorder()
    client = client_for(server, recorder, budget=budget)
    try:
        await client.complete(chat("one"))
        await client.complete(chat("one"))   # from the cache: not a call, not charged
        await client.complete(chat("two"))
        assert budget.spent.calls == 2
        assert budget.spent.tokens == 22
        with pytest.raises(BudgetExhausted, match="budget-calls reached"):
            await client.complete(chat("three"))
        assert len(server.llm_requests) == 2
        # Answers already paid for are still served once the budget is spent.
        assert (await client.complete(chat("one"))).cached
    finally:
        await client.aclose()


async def test_costs_are_priced_per_model(scripted_server: Server) -> None:
    server = scripted_server(echo)
    recorder = MemoryRecorder()
    client = client_for(server, recorder, budget=Budget(usd=1.0, prices={"scripted-model": (1_000_000.0, 0.0)}))
    try:
        response = await client.complete(chat("priced"))
        assert response.cost_usd == pytest.approx(5.0)   # 5 prompt tokens at $1 each
        assert next(iter(recorder.calls.values())).cost_usd == pytest.approx(5.0)
        with pytest.raises(BudgetExhausted, match="usd"):
            await client.complete(chat("over budget"))
    finally:
        await client.aclose()


async def test_a_charge_that_fails_does_not_lose_the_paid_answer(scripted_server: Server) -> None:
    server = scripted_server(echo)
    recorder = MemoryRecorder()
    client = client_for(server, recorder, budget=Budget(usd=1.0))   # a dollar cap, but no price for the model
    try:
        with pytest.raises(ConfigError, match="no price for model 'scripted-model'"):
            await client.complete(chat("unpriced"))
        assert [response.text for response in recorder.calls.values()] == ["answer to: unpriced"]
    finally:
        await client.aclose()


async def test_a_role_without_an_endpoint_is_a_config_error() -> None:
    client = LLMClient({"tester": OpenAITransport("http://127.0.0.1:9/v1")}, None, concurrency=1)
    try:
        with pytest.raises(ConfigError, match="'solver'"):
            await client.complete(chat("x"))
    finally:
        await client.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_preflight(scripted_server: Server) -> None:
    server = scripted_server(echo, models=("coder-7b", "coder-32b"))
    assert await preflight(server.base_url, "coder-7b", "key") == ["coder-7b", "coder-32b"]
    assert await preflight(server.base_url + "/", None, None) == ["coder-7b", "coder-32b"]
    with pytest.raises(ConfigError, match="'gpt-9' is not served .*coder-7b, coder-32b") as caught:
        await preflight(server.base_url, "gpt-9", None)
    assert "\n" not in str(caught.value)


async def test_preflight_unreachable_or_malformed_url_is_a_config_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ConfigError, match="cannot reach --base-url") as caught:
        await preflight(url, "m", None, timeout_s=5)
    assert "\n" not in str(caught.value)
    for bad in ("127.0.0.1:8000/v1", "http://[::1/v1"):
        with pytest.raises(ConfigError, match="--base-url"):
            await preflight(bad, "m", None, timeout_s=5)
