"""The scripted OpenAI server, driven by the real openai client (and httpx where the wire matters)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import httpx
import openai
import pytest
from openai import AsyncOpenAI

import scripted_openai
from scripted_openai import (
    FailFirst,
    Fault,
    RandomFaults,
    Reply,
    ScriptedOpenAIServer,
    ScriptedRequest,
    canonical_body_hash,
    estimate_tokens,
)

StartServer = Callable[..., ScriptedOpenAIServer]
USER_ONLY = [{"role": "user", "content": "Write a python function to add two numbers."}]


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll until condition holds; fail (not hang) if it never does."""
    deadline = time.monotonic() + 10.0
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


async def wait_until_async(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10.0
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


def client_for(server: ScriptedOpenAIServer, **options: object) -> AsyncOpenAI:
    settings: dict[str, object] = {"max_retries": 0, "timeout": 10.0}
    settings.update(options)
    return AsyncOpenAI(base_url=server.base_url, api_key="test-key", **settings)  # type: ignore[arg-type]


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} missing from metrics:\n{text}")


# ---- round trips ---------------------------------------------------------------------------------


async def test_chat_round_trip_parses_the_request_and_answers_each_choice(scripted_server: StartServer) -> None:
    seen: list[ScriptedRequest] = []

    def responder(request: ScriptedRequest) -> list[str]:
        seen.append(request)
        return ["def add(a, b):", "return a + b", "lambda a, b: a + b"]

    server = scripted_server(responder)
    messages = [
        {"role": "system", "content": "You are a coding assistant."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "second question"}]},
    ]
    async with client_for(server) as client:
        completion = await client.chat.completions.create(
            model="coder-7b", messages=messages, n=3, seed=7, temperature=0.7, top_p=0.9, max_tokens=64,
            stop=["\n\n"],  # fmt: skip
        )

    assert [choice.message.content for choice in completion.choices] == [
        "def add(a, b):", "return a + b", "lambda a, b: a + b",  # fmt: skip
    ]
    assert [choice.finish_reason for choice in completion.choices] == ["stop"] * 3
    assert completion.model == "coder-7b"

    [request] = seen
    assert (request.endpoint, request.model, request.n) == ("chat", "coder-7b", 3)
    assert (request.seed, request.temperature, request.top_p, request.max_tokens) == (7, 0.7, 0.9, 64)
    assert request.stop == ("\n\n",)
    assert request.system == "You are a coding assistant."
    assert request.user == "second question"
    assert request.text == "You are a coding assistant.\nfirst question\nan answer\nsecond question"
    sent_body = {
        "model": "coder-7b", "messages": messages, "n": 3, "seed": 7, "temperature": 0.7, "top_p": 0.9,
        "max_tokens": 64, "stop": ["\n\n"],  # fmt: skip
    }
    assert request.body_hash == canonical_body_hash(sent_body)
    assert request.attempt == 0

    completion_tokens = sum(estimate_tokens(choice.message.content or "") for choice in completion.choices)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == estimate_tokens(request.text)
    assert completion.usage.completion_tokens == completion_tokens
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion_tokens


async def test_one_text_fills_every_choice_and_usage_can_be_overridden(scripted_server: StartServer) -> None:
    server = scripted_server(lambda request: Reply("x y", finish_reason="length", usage={"completion_tokens": 99}))
    async with client_for(server) as client:
        completion = await client.chat.completions.create(model="m", messages=USER_ONLY, n=2)

    assert [choice.message.content for choice in completion.choices] == ["x y", "x y"]
    assert [choice.finish_reason for choice in completion.choices] == ["length", "length"]
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 99
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 99


async def test_completions_round_trip_for_prefill_prompts(scripted_server: StartServer) -> None:
    seen: list[ScriptedRequest] = []

    def responder(request: ScriptedRequest) -> Reply:
        seen.append(request)
        return Reply([" reverse a string.", " sort a list."], finish_reason=["stop", "length"])

    server = scripted_server(responder)
    prompt = "<|im_start|>user\nWrite a python function to"
    async with client_for(server) as client:
        completion = await client.completions.create(
            model="m", prompt=prompt, n=2, temperature=1.0, top_p=1.0, max_tokens=2048, stop="\n"
        )

    assert [choice.text for choice in completion.choices] == [" reverse a string.", " sort a list."]
    assert [choice.finish_reason for choice in completion.choices] == ["stop", "length"]
    [request] = seen
    assert (request.endpoint, request.prompt, request.text) == ("completions", prompt, prompt)
    assert (request.temperature, request.top_p, request.max_tokens, request.stop) == (1.0, 1.0, 2048, ("\n",))
    assert request.messages == () and request.user == ""
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == estimate_tokens(prompt)


async def test_max_completion_tokens_is_read_as_the_cap(scripted_server: StartServer) -> None:
    seen: list[ScriptedRequest] = []
    server = scripted_server(lambda request: seen.append(request) or "ok")
    async with client_for(server) as client:
        await client.chat.completions.create(model="m", messages=USER_ONLY, max_completion_tokens=33)
    assert seen[0].max_tokens == 33


async def test_streaming_answers_are_valid_server_sent_events(scripted_server: StartServer) -> None:
    server = scripted_server(lambda request: "def add(a, b):\n    return a + b")
    async with client_for(server) as client:
        chat_stream = await client.chat.completions.create(
            model="m", messages=USER_ONLY, stream=True, stream_options={"include_usage": True}
        )
        pieces: list[str] = []
        finish_reasons: list[str] = []
        usage_chunks = []
        async for chunk in chat_stream:
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                if choice.finish_reason is not None:
                    finish_reasons.append(choice.finish_reason)
            if chunk.usage is not None:
                usage_chunks.append(chunk.usage)
        text_stream = await client.completions.create(model="m", prompt="Write a", stream=True)
        text_pieces = [choice.text async for chunk in text_stream for choice in chunk.choices]

    assert "".join(pieces) == "def add(a, b):\n    return a + b"
    assert len(pieces) > 2  # really streamed in pieces
    assert finish_reasons == ["stop"]
    assert [usage.completion_tokens for usage in usage_chunks] == [estimate_tokens("def add(a, b):\n    return a + b")]
    assert "".join(text_pieces) == "def add(a, b):\n    return a + b"
    assert sum(server.completed_hashes.values()) == 2


# ---- faults --------------------------------------------------------------------------------------


async def test_rate_limit_fault_reaches_the_client_with_retry_after(scripted_server: StartServer) -> None:
    server = scripted_server(lambda request: "never sent", faults=lambda request: Fault.rate_limited("7"))
    async with client_for(server) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="m", messages=USER_ONLY)

    assert caught.value.response.headers["retry-after"] == "7"
    [record] = server.requests
    assert record.fault == Fault.rate_limited("7") and record.status == 429
    assert server.completed_hashes == {}


@pytest.mark.parametrize("status", [500, 503])
async def test_server_error_faults_raise_internal_server_error(scripted_server: StartServer, status: int) -> None:
    server = scripted_server(lambda request: "never sent", faults=lambda request: Fault.http_error(status))
    async with client_for(server) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.completions.create(model="m", prompt="p")
    assert caught.value.status_code == status
    assert [record.status for record in server.requests] == [status]


async def test_drop_fault_is_a_connection_error(scripted_server: StartServer) -> None:
    server = scripted_server(lambda request: "never sent", faults=lambda request: Fault.drop())
    async with client_for(server) as client:
        with pytest.raises(openai.APIConnectionError) as caught:
            await client.chat.completions.create(model="m", messages=USER_ONLY)
    assert not isinstance(caught.value, openai.APITimeoutError)
    [record] = server.requests
    assert (record.fault, record.status, record.delivered) == (Fault.drop(), None, False)


async def test_stall_fault_times_the_client_out_and_stop_cuts_it_short(scripted_server: StartServer) -> None:
    server = scripted_server(lambda request: "never sent", faults=lambda request: Fault.stall())
    async with client_for(server, timeout=0.3) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="m", messages=USER_ONLY)
    await wait_until_async(lambda: server.in_flight == 1, "the server still stalls after the client gave up")

    server.stop()  # must not sit out the hour-long stall

    [record] = server.requests
    assert (record.fault, record.status) == (Fault.stall(), None)
    assert server.in_flight == 0


async def test_truncated_json_fault_sends_a_cut_body(scripted_server: StartServer) -> None:
    server = scripted_server(lambda request: "a full answer", faults=lambda request: Fault.truncated_json())
    async with client_for(server) as client:
        with pytest.raises(json.JSONDecodeError):
            await client.chat.completions.create(model="m", messages=USER_ONLY)

    async with httpx.AsyncClient() as raw:
        response = await raw.post(f"{server.base_url}/chat/completions", json={"model": "m", "messages": USER_ONLY})
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.content.startswith(b'{"id": "chatcmpl-')
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)
    assert server.completed_hashes == {}


async def test_empty_choices_fault_answers_without_choices(scripted_server: StartServer) -> None:
    server = scripted_server(lambda request: "never sent", faults=lambda request: Fault.empty_choices())
    async with client_for(server) as client:
        completion = await client.chat.completions.create(model="m", messages=USER_ONLY)
    assert completion.choices == []
    assert server.requests[0].fault == Fault.empty_choices()
    assert server.completed_hashes == {}


async def test_a_failing_responder_is_a_500_with_its_message(scripted_server: StartServer) -> None:
    def responder(request: ScriptedRequest) -> str:
        raise KeyError("no script for this prompt")

    server = scripted_server(responder)
    async with client_for(server) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="m", messages=USER_ONLY)
    assert "no script for this prompt" in caught.value.message
    assert [type(error) for error in server.responder_errors] == [KeyError]


async def test_the_responder_can_return_a_fault(scripted_server: StartServer) -> None:
    def responder(request: ScriptedRequest) -> str | Fault:
        return Fault.http_error(503) if request.attempt == 0 else "second time lucky"

    server = scripted_server(responder)
    async with client_for(server) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=USER_ONLY)
        completion = await client.chat.completions.create(model="m", messages=USER_ONLY)
    assert completion.choices[0].message.content == "second time lucky"
    assert [record.fault for record in server.requests] == [Fault.http_error(503), None]


async def test_fail_first_plan_is_survived_by_client_retries(scripted_server: StartServer) -> None:
    fault = Fault.http_error(503, retry_after="0.01")
    server = scripted_server(lambda request: "finally", faults=FailFirst(fault, times=2))
    async with client_for(server, max_retries=2) as client:
        completion = await client.chat.completions.create(model="m", messages=USER_ONLY)

    assert completion.choices[0].message.content == "finally"
    records = server.llm_requests
    assert [record.fault for record in records] == [fault, fault, None]
    assert [record.request.attempt for record in records if record.request] == [0, 1, 2]
    assert len({record.body_hash for record in records}) == 1
    assert server.completed_hashes == {records[0].body_hash: 1}


async def test_fail_first_only_hits_requests_it_is_told_to(scripted_server: StartServer) -> None:
    plan = FailFirst(Fault.drop(), times=1, when=lambda request: "flaky" in request.user)
    server = scripted_server(lambda request: "ok", faults=plan)
    async with client_for(server) as client:
        steady = await client.chat.completions.create(model="m", messages=USER_ONLY)
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "flaky one"}])
        flaky = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "flaky one"}])
    assert steady.choices[0].message.content == flaky.choices[0].message.content == "ok"
    assert [record.fault for record in server.requests] == [None, Fault.drop(), None]


def _requests(count: int) -> list[ScriptedRequest]:
    return [
        ScriptedRequest(endpoint="chat", model="m", body={}, body_hash=canonical_body_hash({"i": i}))
        for i in range(count)
    ]


def test_random_faults_follow_their_rates_and_seed() -> None:
    requests = _requests(400)
    rates = {Fault.drop(): 0.25, Fault.rate_limited(): 0.25}
    decided = [RandomFaults(rates, seed=1)(request) for request in requests]
    again = [RandomFaults(rates, seed=1)(request) for request in reversed(requests)][::-1]
    other_seed = [RandomFaults(rates, seed=2)(request) for request in requests]

    assert decided == again  # order of arrival does not matter, only the seed
    assert decided != other_seed
    assert 60 <= decided.count(Fault.drop()) <= 140
    assert 60 <= decided.count(Fault.rate_limited()) <= 140
    assert 120 <= decided.count(None) <= 280
    assert all(RandomFaults({Fault.drop(): 1.0})(request) == Fault.drop() for request in requests[:50])
    assert all(RandomFaults({Fault.drop(): 0.0})(request) is None for request in requests[:50])
    with pytest.raises(ValueError):
        RandomFaults({Fault.drop(): 0.7, Fault.stall(): 0.7})


def test_fault_kinds_are_checked() -> None:
    with pytest.raises(ValueError):
        Fault("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Fault.http_error(200)


# ---- accounting ----------------------------------------------------------------------------------


async def test_counters_classify_and_reset(scripted_server: StartServer) -> None:
    server = scripted_server(lambda request: "ok")

    def role(request: ScriptedRequest) -> str:
        return request.system or request.endpoint

    async with client_for(server) as client:
        for _ in range(2):
            await client.chat.completions.create(
                model="m", messages=[{"role": "system", "content": "solver"}, *USER_ONLY]
            )
        await client.chat.completions.create(model="m", messages=[{"role": "system", "content": "tester"}, *USER_ONLY])
        await client.completions.create(model="m", prompt="Write a")
        await client.models.list()

    assert server.requests_by_kind(role) == {"solver": 2, "tester": 1, "completions": 1}
    assert [record.endpoint for record in server.requests] == ["chat", "chat", "chat", "completions", "models"]
    assert [record.index for record in server.requests] == [0, 1, 2, 3, 4]
    assert sorted(server.completed_hashes.values()) == [1, 1, 2]
    solver_hash = server.requests[0].body_hash
    assert server.completed_hashes[solver_hash] == 2

    server.reset_counts()
    assert server.requests == [] and server.completed_hashes == {}
    async with client_for(server) as client:
        await client.chat.completions.create(model="m", messages=[{"role": "system", "content": "solver"}, *USER_ONLY])
    assert server.completed_hashes == {solver_hash: 1}
    [record] = server.llm_requests
    assert record.request is not None and record.request.attempt == 2  # attempts survive a reset


def test_plain_routes_and_bad_requests() -> None:
    with ScriptedOpenAIServer(lambda request: "ok", models=("coder", "other")) as server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        with httpx.Client(base_url=server.url) as raw:
            assert raw.get("/health").status_code == 200
            assert [model["id"] for model in raw.get("/v1/models").json()["data"]] == ["coder", "other"]
            assert raw.get("/v1/nothing").status_code == 404
            bad_json = raw.post("/v1/chat/completions", content=b"{not json")
            assert bad_json.status_code == 400
            assert "invalid JSON" in bad_json.json()["error"]["message"]
            zero_choices = {"model": "m", "messages": USER_ONLY, "n": 0}
            assert raw.post("/v1/chat/completions", json=zero_choices).status_code == 400
            assert raw.post("/v1/completions", json={"model": "m"}).status_code == 400
            assert raw.post("/v1/completions", json={"model": "m", "prompt": "p"}).status_code == 200
        assert [record.status for record in server.requests] == [200, 200, 404, 400, 400, 400, 200]
        assert server.in_flight == 0 and server.internal_errors == []


def test_responder_is_not_started_before_start() -> None:
    server = ScriptedOpenAIServer(lambda request: "ok")
    with pytest.raises(RuntimeError):
        server.base_url
    server.stop()  # stopping a server that never started is harmless


# ---- connections and lifecycle -------------------------------------------------------------------


async def test_keep_alive_connections_are_reused(scripted_server: StartServer) -> None:
    server = scripted_server(lambda request: "ok")
    async with client_for(server) as client:
        for _ in range(4):
            await client.chat.completions.create(model="m", messages=USER_ONLY)
    with httpx.Client() as raw:
        for _ in range(3):
            assert raw.post(f"{server.base_url}/completions", json={"model": "m", "prompt": "p"}).status_code == 200

    connections = [record.connection_id for record in server.requests]
    assert len(set(connections[:4])) == 1
    assert len(set(connections[4:])) == 1
    assert connections[0] != connections[4]


def test_stop_returns_while_a_client_holds_an_idle_connection() -> None:
    server = ScriptedOpenAIServer(lambda request: "ok").start()
    url = f"{server.base_url}/completions"
    with httpx.Client() as raw:
        assert raw.post(url, json={"model": "m", "prompt": "p"}).status_code == 200
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        stopper.join(timeout=20)
        assert not stopper.is_alive(), "stop() hung on an idle keep-alive connection"
        with pytest.raises(httpx.TransportError):
            raw.post(url, json={"model": "m", "prompt": "p"})


async def test_metrics_report_running_and_waiting_requests(scripted_server: StartServer) -> None:
    gate = threading.Event()

    def responder(request: ScriptedRequest) -> str:
        gate.wait(10)
        return "done"

    server = scripted_server(responder, capacity=1)
    async with client_for(server) as client, httpx.AsyncClient(base_url=server.url) as raw:
        calls = [
            asyncio.create_task(client.chat.completions.create(model="m", messages=USER_ONLY, seed=seed))
            for seed in range(3)
        ]
        try:
            await wait_until_async(
                lambda: (server.in_flight, server.running) == (3, 1), "one request running and two waiting"
            )
            busy = (await raw.get("/metrics")).text
        finally:
            gate.set()
        answers = await asyncio.gather(*calls)
        idle = (await raw.get("/metrics")).text

    assert metric(busy, "vllm:num_requests_running") == 1.0
    assert metric(busy, "vllm:num_requests_waiting") == 2.0
    assert metric(idle, "vllm:num_requests_running") == 0.0
    assert metric(idle, "vllm:num_requests_waiting") == 0.0
    assert [answer.choices[0].message.content for answer in answers] == ["done"] * 3


def test_a_killed_subprocess_client_leaves_the_server_serving(scripted_server: StartServer) -> None:
    plan = FailFirst(Fault.stall(), when=lambda request: request.user == "stall")
    server = scripted_server(lambda request: f"echo {request.user}", faults=plan)
    script = textwrap.dedent(
        """
        import sys
        from openai import OpenAI
        client = OpenAI(base_url=sys.argv[1], api_key="k", max_retries=0)
        for text in ("hello", "stall"):
            reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
            print(reply.choices[0].message.content, flush=True)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, server.base_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "echo hello\n"
        wait_until(lambda: server.in_flight == 1, "the child's second request is stalling")
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=20) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()

    with httpx.Client() as raw:
        after = {"model": "m", "messages": [{"role": "user", "content": "after"}]}
        answer = raw.post(f"{server.base_url}/chat/completions", json=after)
    assert answer.json()["choices"][0]["message"]["content"] == "echo after"
    assert server.internal_errors == []


def test_public_names_exist() -> None:
    assert sorted(scripted_openai.__all__) == scripted_openai.__all__
    for name in scripted_openai.__all__:
        assert hasattr(scripted_openai, name), name

