"""A real local HTTP server that speaks the OpenAI protocol with scripted replies.

End-to-end tests point the real `openai` client (in the pytest process or in a subprocess that may be
SIGKILLed) at `ScriptedOpenAIServer.base_url`. The server runs in daemon threads of the pytest process
on a real 127.0.0.1 socket and uses only the standard library, so any HTTP/1.1 client works.

    def responder(req: ScriptedRequest) -> Reply | str | list[str] | Fault: ...

    with ScriptedOpenAIServer(responder, faults=FailFirst(Fault.rate_limited("0.01"))) as srv:
        client = AsyncOpenAI(base_url=srv.base_url, api_key="x")
        ...
        assert srv.completed_hashes[h] == 1

The responder (and a fault plan) is called from several handler threads at once, so it must be
thread-safe. Nothing here knows about kodcode's prompts: responders are written by the tests.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import socketserver
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Protocol, get_args

__all__ = [
    "FailFirst",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "RandomFaults",
    "Reply",
    "RequestRecord",
    "Responder",
    "ScriptedOpenAIServer",
    "ScriptedRequest",
    "canonical_body_hash",
    "estimate_tokens",
]

Endpoint = Literal["chat", "completions"]
FaultKind = Literal["status", "drop", "stall", "truncated_json", "empty_choices"]
_FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))

# Idle keep-alive connections die after this long, so a forgotten client never pins a thread forever.
_SOCKET_TIMEOUT_S = 30.0
# stop() waits at most this long for handler threads (a responder stuck in user code cannot be interrupted).
_STOP_JOIN_S = 5.0


def canonical_body_hash(body: Mapping[str, Any]) -> str:
    """sha256 hex of the JSON body with sorted keys and no whitespace: the key faults and counters use."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def estimate_tokens(text: str) -> int:
    """The server's token count for default usage: characters / 4, rounded up."""
    return (len(text) + 3) // 4


def _content_text(content: Any) -> str:
    # Chat content is either a string or a list of typed parts; only text parts carry prompt text.
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


@dataclass(frozen=True)
class ScriptedRequest:
    """One parsed /v1/chat/completions or /v1/completions request."""

    endpoint: Endpoint
    model: str
    body: Mapping[str, Any]
    body_hash: str
    messages: tuple[Mapping[str, Any], ...] = ()
    prompt: str | None = None
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    stream: bool = False
    # How many earlier requests with the same body_hash this server received (0 for the first one).
    attempt: int = 0

    @property
    def system(self) -> str:
        """Text of the first system (or developer) message, "" if none."""
        for message in self.messages:
            if message.get("role") in ("system", "developer"):
                return _content_text(message.get("content"))
        return ""

    @property
    def user(self) -> str:
        """Text of the last user message, "" if none."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""

    @property
    def text(self) -> str:
        """All prompt text: the raw prompt, or every message's text joined by newlines."""
        if self.endpoint == "completions":
            return self.prompt or ""
        return "\n".join(_content_text(message.get("content")) for message in self.messages)


class _BadRequest(Exception):
    """The request body cannot be served; answered with a 400 carrying this message."""


def _optional_number(body: Mapping[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _BadRequest(f"{key} must be a number")
    return kind(value)


def _parse_request(endpoint: Endpoint, body: Any, attempt_of: Callable[[str], int]) -> ScriptedRequest:
    """Validate a decoded JSON body into a ScriptedRequest; attempt_of(body_hash) numbers the attempt."""
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    messages: tuple[Mapping[str, Any], ...] = ()
    prompt: str | None = None
    if endpoint == "chat":
        raw_messages = body.get("messages")
        if not isinstance(raw_messages, list) or not all(isinstance(m, dict) for m in raw_messages):
            raise _BadRequest("messages must be a list of objects")
        messages = tuple(raw_messages)
    else:
        raw_prompt = body.get("prompt")
        if isinstance(raw_prompt, list) and len(raw_prompt) == 1 and isinstance(raw_prompt[0], str):
            raw_prompt = raw_prompt[0]
        if not isinstance(raw_prompt, str):
            raise _BadRequest("prompt must be a single string")
        prompt = raw_prompt
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise _BadRequest("stop must be a string or a list of strings")
    n = body.get("n", 1)
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise _BadRequest("n must be a positive integer")
    # Newer clients send max_completion_tokens for chat; either one is the cap.
    max_tokens_key = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    body_hash = canonical_body_hash(body)
    return ScriptedRequest(
        endpoint=endpoint,
        model=str(body.get("model", "")),
        body=body,
        body_hash=body_hash,
        messages=messages,
        prompt=prompt,
        seed=_optional_number(body, "seed", int),
        temperature=_optional_number(body, "temperature", float),
        top_p=_optional_number(body, "top_p", float),
        max_tokens=_optional_number(body, max_tokens_key, int),
        stop=stops,
        n=n,
        stream=bool(body.get("stream", False)),
        attempt=attempt_of(body_hash),
    )


@dataclass(frozen=True)
class Reply:
    """A scripted answer.

    texts: one string (used for every one of the request's n choices) or a sequence with one string
    per choice (sent as given, even if that is not n). finish_reason: one for all choices or one per
    choice. usage: keys that override the default usage (prompt tokens from the request text,
    completion tokens from the choices, both by `estimate_tokens`; total is their sum unless given).
    delay: seconds to wait before answering, on top of the server's latency.
    """

    texts: str | Sequence[str]
    finish_reason: str | Sequence[str] = "stop"
    usage: Mapping[str, int] | None = None
    delay: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.texts, str):
            object.__setattr__(self, "texts", tuple(self.texts))
            if not all(isinstance(text, str) for text in self.texts):
                raise TypeError("Reply.texts must hold strings")
        if not isinstance(self.finish_reason, str):
            object.__setattr__(self, "finish_reason", tuple(self.finish_reason))

    def choice_texts(self, n: int) -> tuple[str, ...]:
        if isinstance(self.texts, str):
            return (self.texts,) * n
        return tuple(self.texts)

    def finish_reasons(self, choices: int) -> tuple[str, ...]:
        if isinstance(self.finish_reason, str):
            return (self.finish_reason,) * choices
        if len(self.finish_reason) != choices:
            raise ValueError(f"{len(self.finish_reason)} finish reasons for {choices} choices")
        return tuple(self.finish_reason)

    def usage_for(self, request: ScriptedRequest, texts: Sequence[str]) -> dict[str, int]:
        usage = {
            "prompt_tokens": estimate_tokens(request.text),
            "completion_tokens": sum(estimate_tokens(text) for text in texts),
        }
        usage.update(self.usage or {})
        usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
        return usage


@dataclass(frozen=True)
class Fault:
    """A misbehaviour to inject instead of (or into) an answer.

    status: answer `status` with an OpenAI-style error body (and a Retry-After header if given).
    drop: close the connection without sending anything.
    stall: hold the request `seconds` (cut short by stop()), then close without answering; for a slow
      answer that does arrive use the server's latency or Reply.delay instead.
    truncated_json: a 200 whose body (the real answer) is cut in the middle; Content-Length matches the cut.
    empty_choices: a 200 with a valid body whose "choices" is [].
    """

    kind: FaultKind
    status: int = 500
    retry_after: str | None = None
    seconds: float = 3600.0
    message: str = "scripted fault"

    def __post_init__(self) -> None:
        if self.kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.kind == "status" and not 400 <= self.status <= 599:
            raise ValueError(f"a status fault needs a 4xx or 5xx status, not {self.status}")

    @classmethod
    def http_error(cls, status: int, *, retry_after: str | None = None, message: str = "scripted fault") -> Fault:
        return cls("status", status=status, retry_after=retry_after, message=message)

    @classmethod
    def rate_limited(cls, retry_after: str | None = "1") -> Fault:
        return cls("status", status=429, retry_after=retry_after, message="scripted rate limit")

    @classmethod
    def drop(cls) -> Fault:
        return cls("drop")

    @classmethod
    def stall(cls, seconds: float = 3600.0) -> Fault:
        return cls("stall", seconds=seconds)

    @classmethod
    def truncated_json(cls) -> Fault:
        return cls("truncated_json")

    @classmethod
    def empty_choices(cls) -> Fault:
        return cls("empty_choices")


class FaultPlan(Protocol):
    """Decides, per LLM request, which fault (if any) it gets. Any such callable is a plan."""

    def __call__(self, request: ScriptedRequest, /) -> Fault | None: ...


@dataclass(frozen=True)
class FailFirst:
    """The first `times` attempts of every body hash (that `when` accepts) get `fault`; later ones succeed."""

    fault: Fault
    times: int = 1
    when: Callable[[ScriptedRequest], bool] | None = None

    def __call__(self, request: ScriptedRequest) -> Fault | None:
        if request.attempt >= self.times:
            return None
        if self.when is not None and not self.when(request):
            return None
        return self.fault


class RandomFaults:
    """Each request gets each fault with its probability, decided by a hash of (seed, body hash, attempt).

    Hashing instead of drawing from one generator keeps the pattern the same whatever order concurrent
    requests arrive in: the same seed and the same requests always meet the same faults.
    """

    def __init__(self, rates: Mapping[Fault, float] | Iterable[tuple[Fault, float]], *, seed: int = 0) -> None:
        pairs = tuple(rates.items()) if isinstance(rates, Mapping) else tuple(rates)
        if any(rate < 0 for _, rate in pairs) or sum(rate for _, rate in pairs) > 1 + 1e-9:
            raise ValueError("fault rates must be non-negative and sum to at most 1")
        self._rates = pairs
        self._seed = seed

    def __call__(self, request: ScriptedRequest) -> Fault | None:
        digest = hashlib.sha256(f"{self._seed}:{request.body_hash}:{request.attempt}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        threshold = 0.0
        for fault, rate in self._rates:
            threshold += rate
            if draw < threshold:
                return fault
        return None


Responder = Callable[[ScriptedRequest], "Reply | str | Sequence[str] | Fault"]


@dataclass(frozen=True)
class RequestRecord:
    """One request the server received, written when its handling ended."""

    index: int
    connection_id: int
    method: str
    path: str
    endpoint: str  # chat | completions | models | health | metrics | unknown
    request: ScriptedRequest | None
    fault: Fault | None
    status: int | None  # None when the connection was closed without an answer
    delivered: bool  # the whole answer was written to the socket

    @property
    def body_hash(self) -> str | None:
        return None if self.request is None else self.request.body_hash


@dataclass
class _Outcome:
    """One request's progress through its handler thread."""

    index: int
    connection_id: int
    method: str
    path: str
    endpoint: str = "unknown"
    request: ScriptedRequest | None = None
    fault: Fault | None = None
    status: int | None = None
    in_flight: bool = False  # counted in _State.in_flight
    holds_slot: bool = False  # counted in _State.running
    finished: bool = False  # its record is written and its counts released

    def completed(self) -> bool:
        return self.request is not None and self.fault is None and self.status == 200


@dataclass
class _State:
    """Everything the handler threads share; guarded by `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    records: dict[int, RequestRecord] = field(default_factory=dict)
    completed: Counter[str] = field(default_factory=Counter)
    attempts: Counter[str] = field(default_factory=Counter)
    responder_errors: list[BaseException] = field(default_factory=list)
    internal_errors: list[BaseException] = field(default_factory=list)
    next_index: int = 0
    next_connection: int = 0
    in_flight: int = 0
    running: int = 0


_LLM_PATHS: dict[str, Endpoint] = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
_STREAM_PIECE = re.compile(r"\s*\S+\s*|\s+")


def _error_body(message: str, kind: str, code: int) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


def _completion_id(request: ScriptedRequest) -> str:
    prefix = "chatcmpl" if request.endpoint == "chat" else "cmpl"
    return f"{prefix}-{request.body_hash[:16]}-{request.attempt}"


def _json_body(
    request: ScriptedRequest, texts: Sequence[str], reasons: Sequence[str], usage: Mapping[str, int]
) -> bytes:
    if request.endpoint == "chat":
        choices = [
            {
                "index": index,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
                "logprobs": None,
            }
            for index, (text, reason) in enumerate(zip(texts, reasons, strict=True))
        ]
        obj = "chat.completion"
    else:
        choices = [
            {"index": index, "text": text, "finish_reason": reason, "logprobs": None}
            for index, (text, reason) in enumerate(zip(texts, reasons, strict=True))
        ]
        obj = "text_completion"
    body = {
        "id": _completion_id(request),
        "object": obj,
        "created": int(time.time()),
        "model": request.model,
        "choices": choices,
        "usage": dict(usage),
    }
    return json.dumps(body).encode()


def _sse_body(
    request: ScriptedRequest, texts: Sequence[str], reasons: Sequence[str], usage: Mapping[str, int]
) -> bytes:
    # The whole stream is built up front: a Content-Length body that is valid server-sent events.
    chat = request.endpoint == "chat"
    base = {
        "id": _completion_id(request),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": request.model,
    }
    events: list[dict[str, Any]] = []
    for index, (text, reason) in enumerate(zip(texts, reasons, strict=True)):
        pieces = _STREAM_PIECE.findall(text)
        if chat:
            opening = {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            events.append({**base, "choices": [opening]})
            events.extend(
                {**base, "choices": [{"index": index, "delta": {"content": piece}, "finish_reason": None}]}
                for piece in pieces
            )
            events.append({**base, "choices": [{"index": index, "delta": {}, "finish_reason": reason}]})
        else:
            events.extend(
                {**base, "choices": [{"index": index, "text": piece, "finish_reason": None}]} for piece in pieces
            )
            events.append({**base, "choices": [{"index": index, "text": "", "finish_reason": reason}]})
    options = request.body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        events.append({**base, "choices": [], "usage": dict(usage)})
    lines = [f"data: {json.dumps(event)}\n\n" for event in events]
    lines.append("data: [DONE]\n\n")
    return "".join(lines).encode()


def _metrics_text(model: str, running: int, waiting: int) -> bytes:
    label = f'{{model_name="{model}"}}'
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{label} {float(running)}\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{label} {float(waiting)}\n"
    ).encode()


class _HTTPServer(ThreadingHTTPServer):
    """Threading server that remembers its connections so stop() can close idle keep-alive ones."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024

    def __init__(self, owner: ScriptedOpenAIServer) -> None:
        self.owner = owner
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can stall on machines without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="scripted-openai-connection",
            daemon=True,
        )
        with self._connections_lock:
            self._connections[request] = thread
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            return  # the peer went away (killed client, stop() closing the socket): not a server bug
        if error is not None:
            self.owner._record_internal_error(error)

    def close_connections(self) -> list[threading.Thread]:
        with self._connections_lock:
            connections = list(self._connections.items())
        for sock, _ in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return [thread for _, thread in connections]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = _SOCKET_TIMEOUT_S
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection_id = self.server.owner._new_connection_id()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read the request log, not stderr

    def do_GET(self) -> None:
        self.server.owner._serve(self, "GET")

    def do_POST(self) -> None:
        self.server.owner._serve(self, "POST")

    def send_body(
        self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> bool:
        """Write a complete response; False when the peer is gone."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return False
        return True


class ScriptedOpenAIServer:
    """An OpenAI-compatible HTTP server on 127.0.0.1 whose answers come from `responder`.

    faults: a FaultPlan (any callable request -> Fault | None) consulted before the responder.
    latency: seconds every generation takes (after admission, before the responder).
    capacity: how many generations run at once; the rest wait, which /metrics reports like vLLM.
    models: ids listed by GET /v1/models (the first one labels the metrics).
    """

    def __init__(
        self,
        responder: Responder,
        *,
        faults: FaultPlan | None = None,
        latency: float = 0.0,
        capacity: int | None = None,
        models: Sequence[str] = ("scripted-model",),
    ) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._responder = responder
        self._faults = faults
        self._latency = latency
        self._capacity = capacity
        self._models = tuple(models)
        self._state = _State()
        self._slots = threading.Condition(self._state.lock)
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._serve_thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> ScriptedOpenAIServer:
        if self._httpd is not None:
            raise RuntimeError("the server is already started")
        self._stopping.clear()
        self._httpd = _HTTPServer(self)
        self._serve_thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="scripted-openai", daemon=True
        )
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut short stalls and waits, close every connection, and return."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        with self._slots:
            self._slots.notify_all()
        httpd.shutdown()
        threads = httpd.close_connections()
        deadline = time.monotonic() + _STOP_JOIN_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        httpd.server_close()
        if self._serve_thread is not None:
            self._serve_thread.join()
            self._serve_thread = None

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        return self._httpd.server_port

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT (no /v1), for /health and /metrics."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT/v1, what the openai client takes as base_url."""
        return f"{self.url}/v1"

    # ---- accounting ------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request whose handling has ended, in arrival order."""
        with self._state.lock:
            return [self._state.records[index] for index in sorted(self._state.records)]

    @property
    def llm_requests(self) -> list[RequestRecord]:
        """The chat and completions requests among `requests` (the ones that parsed)."""
        return [record for record in self.requests if record.request is not None]

    @property
    def completed_hashes(self) -> Counter[str]:
        """Body hashes answered 200 with a full valid body and no fault, counted."""
        with self._state.lock:
            return Counter(self._state.completed)

    @property
    def responder_errors(self) -> list[BaseException]:
        """Exceptions the responder or the fault plan raised (each was answered with a 500)."""
        with self._state.lock:
            return list(self._state.responder_errors)

    @property
    def internal_errors(self) -> list[BaseException]:
        """Bugs in the server itself; a test that sees any should fail."""
        with self._state.lock:
            return list(self._state.internal_errors)

    @property
    def in_flight(self) -> int:
        """LLM requests received and not yet finished."""
        with self._state.lock:
            return self._state.in_flight

    @property
    def running(self) -> int:
        with self._state.lock:
            return self._state.running

    @property
    def waiting(self) -> int:
        with self._state.lock:
            return self._state.in_flight - self._state.running

    def requests_by_kind(self, classify: Callable[[ScriptedRequest], str]) -> Counter[str]:
        """Count the LLM requests received by classify(request), e.g. by system prompt."""
        return Counter(classify(record.request) for record in self.llm_requests if record.request is not None)

    def reset_counts(self) -> None:
        """Forget the request log, completed hashes and errors. Attempt numbers keep counting."""
        with self._state.lock:
            self._state.records.clear()
            self._state.completed.clear()
            self._state.responder_errors.clear()
            self._state.internal_errors.clear()

    # ---- request handling (handler threads) ------------------------------------------------------

    def _new_connection_id(self) -> int:
        with self._state.lock:
            self._state.next_connection += 1
            return self._state.next_connection

    def _record_internal_error(self, error: BaseException) -> None:
        with self._state.lock:
            self._state.internal_errors.append(error)

    def _attempt_of(self, body_hash: str) -> int:
        with self._state.lock:
            attempt = self._state.attempts[body_hash]
            self._state.attempts[body_hash] += 1
            return attempt

    def _serve(self, handler: _Handler, method: str) -> None:
        with self._state.lock:
            index = self._state.next_index
            self._state.next_index += 1
        outcome = _Outcome(index, handler.connection_id, method, handler.path.split("?", 1)[0])
        try:
            self._dispatch(handler, method, outcome.path, outcome)
        finally:
            if outcome.status is None:
                handler.close_connection = True
            self._finish(outcome, delivered=False)

    def _finish(self, outcome: _Outcome, *, delivered: bool) -> None:
        """Write the record and release the gauges, once. Done before the answer's first byte is sent,
        so a client that has its answer always finds the request already counted."""
        with self._slots:
            if outcome.finished:
                return
            outcome.finished = True
            if outcome.holds_slot:
                self._state.running -= 1
                self._slots.notify()
            if outcome.in_flight:
                self._state.in_flight -= 1
            self._state.records[outcome.index] = RequestRecord(
                index=outcome.index,
                connection_id=outcome.connection_id,
                method=outcome.method,
                path=outcome.path,
                endpoint=outcome.endpoint,
                request=outcome.request,
                fault=outcome.fault,
                status=outcome.status,
                delivered=delivered,
            )
            if delivered and outcome.completed() and outcome.request is not None:
                self._state.completed[outcome.request.body_hash] += 1

    def _undeliver(self, outcome: _Outcome) -> None:
        """The peer vanished while the answer was being written: take back what _finish counted."""
        with self._state.lock:
            record = self._state.records.get(outcome.index)
            if record is None:  # reset_counts() ran in between
                return
            self._state.records[outcome.index] = replace(record, delivered=False)
            if outcome.completed() and outcome.request is not None:
                self._state.completed[outcome.request.body_hash] -= 1
                if self._state.completed[outcome.request.body_hash] <= 0:
                    del self._state.completed[outcome.request.body_hash]

    def _answer(
        self, handler: _Handler, outcome: _Outcome, status: int, body: bytes, content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        outcome.status = status
        self._finish(outcome, delivered=True)
        if not handler.send_body(status, body, content_type, headers):
            self._undeliver(outcome)

    def _answer_error(self, handler: _Handler, outcome: _Outcome, status: int, message: str, kind: str) -> None:
        self._answer(handler, outcome, status, _error_body(message, kind, status), "application/json")

    def _dispatch(self, handler: _Handler, method: str, path: str, outcome: _Outcome) -> None:
        body_bytes = b""
        if method == "POST":
            length = handler.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self._answer_error(handler, outcome, 411, "Content-Length is required", "invalid_request_error")
                handler.close_connection = True
                return
            body_bytes = handler.rfile.read(int(length))
        if method == "GET" and path == "/health":
            outcome.endpoint = "health"
            self._answer(handler, outcome, 200, b'{"status":"ok"}', "application/json")
        elif method == "GET" and path == "/metrics":
            outcome.endpoint = "metrics"
            with self._state.lock:
                running, waiting = self._state.running, self._state.in_flight - self._state.running
            model = self._models[0] if self._models else ""
            self._answer(handler, outcome, 200, _metrics_text(model, running, waiting), "text/plain; version=0.0.4")
        elif method == "GET" and path == "/v1/models":
            outcome.endpoint = "models"
            listing = {
                "object": "list",
                "data": [
                    {"id": model, "object": "model", "created": 0, "owned_by": "scripted"} for model in self._models
                ],
            }
            self._answer(handler, outcome, 200, json.dumps(listing).encode(), "application/json")
        elif method == "POST" and path in _LLM_PATHS:
            outcome.endpoint = _LLM_PATHS[path]
            self._generate(handler, _LLM_PATHS[path], body_bytes, outcome)
        else:
            self._answer_error(handler, outcome, 404, f"no route for {method} {path}", "not_found_error")

    def _generate(self, handler: _Handler, endpoint: Endpoint, body_bytes: bytes, outcome: _Outcome) -> None:
        try:
            request = _parse_request(endpoint, json.loads(body_bytes), self._attempt_of)
        except (ValueError, _BadRequest) as exc:  # JSONDecodeError is a ValueError
            message = str(exc) if isinstance(exc, _BadRequest) else f"invalid JSON body: {exc}"
            self._answer_error(handler, outcome, 400, message, "invalid_request_error")
            return
        outcome.request = request
        with self._state.lock:
            self._state.in_flight += 1
            outcome.in_flight = True
        try:
            fault = self._faults(request) if self._faults is not None else None
        except Exception as exc:  # the plan is test code too: report its failure as a 500
            self._fail(handler, outcome, "fault plan", exc)
            return
        if fault is not None and fault.kind in ("status", "drop"):
            self._inject(handler, request, fault, outcome, reply=None)
        elif self._admit(outcome):
            self._run_admitted(handler, request, fault, outcome)

    def _fail(self, handler: _Handler, outcome: _Outcome, culprit: str, error: Exception) -> None:
        with self._state.lock:
            self._state.responder_errors.append(error)
        message = f"{culprit} failed: {type(error).__name__}: {error}"
        self._answer_error(handler, outcome, 500, message, "server_error")

    def _admit(self, outcome: _Outcome) -> bool:
        """Wait for a generation slot (when capacity is set); False when the server is stopping."""
        with self._slots:
            while self._capacity is not None and self._state.running >= self._capacity:
                if self._stopping.is_set():
                    return False
                self._slots.wait(0.1)
            if self._stopping.is_set():
                return False
            self._state.running += 1
            outcome.holds_slot = True
            return True

    def _sleep(self, seconds: float) -> bool:
        """Wait, cut short by stop(); False when the server is stopping."""
        if seconds > 0:
            self._stopping.wait(seconds)
        return not self._stopping.is_set()

    def _run_admitted(
        self, handler: _Handler, request: ScriptedRequest, fault: Fault | None, outcome: _Outcome
    ) -> None:
        if fault is not None and fault.kind in ("stall", "empty_choices"):
            self._inject(handler, request, fault, outcome, reply=None)
            return
        if not self._sleep(self._latency):
            return
        try:
            answer = self._responder(request)
            reply = self._as_reply(answer)
        except Exception as exc:  # the responder is test code: report its failure as a 500
            self._fail(handler, outcome, "responder", exc)
            return
        if isinstance(reply, Fault):
            self._inject(handler, request, reply, outcome, reply=None)
            return
        if not self._sleep(reply.delay):
            return
        if fault is not None:  # truncated_json decided by the plan: cut the real answer
            self._inject(handler, request, fault, outcome, reply=reply)
            return
        body, content_type = self._render(request, reply)
        self._answer(handler, outcome, 200, body, content_type)

    @staticmethod
    def _as_reply(answer: object) -> Reply | Fault:
        if isinstance(answer, (Reply, Fault)):
            return answer
        if isinstance(answer, str):
            return Reply(answer)
        if isinstance(answer, (list, tuple)) and all(isinstance(text, str) for text in answer):
            return Reply(tuple(answer))
        raise TypeError(f"the responder returned {type(answer).__name__}, not Reply, str, list[str] or Fault")

    @staticmethod
    def _render(request: ScriptedRequest, reply: Reply) -> tuple[bytes, str]:
        texts = reply.choice_texts(request.n)
        reasons = reply.finish_reasons(len(texts))
        usage = reply.usage_for(request, texts)
        if request.stream:
            return _sse_body(request, texts, reasons, usage), "text/event-stream"
        return _json_body(request, texts, reasons, usage), "application/json"

    def _inject(
        self, handler: _Handler, request: ScriptedRequest, fault: Fault, outcome: _Outcome, reply: Reply | None
    ) -> None:
        outcome.fault = fault
        if fault.kind == "status":
            headers = {} if fault.retry_after is None else {"Retry-After": fault.retry_after}
            kind = "rate_limit_error" if fault.status == 429 else "server_error"
            body = _error_body(fault.message, kind, fault.status)
            self._answer(handler, outcome, fault.status, body, "application/json", headers)
        elif fault.kind == "drop":
            handler.close_connection = True
        elif fault.kind == "stall":
            self._sleep(fault.seconds)
            handler.close_connection = True
        elif fault.kind == "empty_choices":
            empty = Reply(())
            body, content_type = self._render(request, empty)
            self._answer(handler, outcome, 200, body, content_type)
        else:  # truncated_json
            body, content_type = self._render(request, reply if reply is not None else Reply(""))
            self._answer(handler, outcome, 200, body[: max(1, len(body) // 2)], content_type)

