"""The embedded default model: a local llama.cpp server on 127.0.0.1 speaking the OpenAI protocol.

With no endpoint configured, kodcode starts llama.cpp's server with the Qwen2.5-Coder GGUF from
:mod:`kodcode.models.files`, and the rest of kodcode talks to it through the ordinary OpenAI-compatible
path (``/v1/chat/completions`` and, for prefill, ``/v1/completions``). Concurrent requests share the
server's ``--parallel`` slots through continuous batching.

Which server runs, first match wins: an explicit binary (argument or $KODCODE_LLAMA_SERVER); a
``llama-server`` compiled for this CPU by ``python -m kodcode.embedded prepare --native``; else the
default, llama.cpp from the prebuilt, portable ``xllamacpp`` wheel (any x86-64 CPU with AVX2), run by
:mod:`kodcode.models.xllamacpp_server` in a child process that takes the same flags as ``llama-server``.

The server must never outlive kodcode: it is stopped when the context exits (also on Ctrl-C and
errors), an atexit hook stops any left over, and the kernel kills it if kodcode itself is killed
(``PR_SET_PDEATHSIG``), even by SIGKILL.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx

from kodcode.errors import EmbeddedModelError
from kodcode.models.files import ModelVariant, default_cache_dir, ensure_model, resolve_variant
from kodcode.models.native_build import built_server_path

__all__ = [
    "CTX_PER_SLOT",
    "MAX_SLOTS",
    "PREBUILT_RUNTIME",
    "SERVER_BINARY_ENV",
    "XLLAMACPP_REQUIREMENT",
    "EmbeddedEndpoint",
    "embedded_server",
    "ensure_model",
    "prebuilt_launcher",
    "server_command",
    "slots_for",
]

MAX_SLOTS = 8  # on a few CPU cores, more slots only add latency: batched throughput is flat past 4
CTX_PER_SLOT = 4096  # tokens of prompt + completion one request may use
# Path of another llama-server build to use instead of the default, or "xllamacpp": the prebuilt runtime even
# where `prepare --native` built a server (to compare them, or to set a bad native build aside).
SERVER_BINARY_ENV = "KODCODE_LLAMA_SERVER"
# The prebuilt runtime. Pinned: when a request whose prompt the server finds fully cached (the pipeline's
# retries of one prompt) loses its client, llama.cpp's server may miss the disconnect and generate on to
# max_tokens; measured, this release caught 7 of 8 such disconnects, xllamacpp 2026.10.x 2 of 7.
XLLAMACPP_REQUIREMENT = "xllamacpp==2026.8.10229"
PREBUILT_RUNTIME = "xllamacpp"
_PORT_ATTEMPTS = 5
_STOP_GRACE_SECONDS = 5.0
_LOG_TAIL_LINES = 8
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclass(frozen=True)
class EmbeddedEndpoint:
    """Where the running embedded server answers; pass ``base_url`` and ``model`` to an OpenAI client."""

    base_url: str
    model: str
    pid: int
    slots: int
    log_path: Path
    runtime: str = PREBUILT_RUNTIME  # "xllamacpp" (the prebuilt default) or the path of the llama-server binary


def slots_for(concurrency: int) -> int:
    """Server slots for ``concurrency`` simultaneous requests: one each, at least 1, at most MAX_SLOTS."""
    return max(1, min(concurrency, MAX_SLOTS))


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def server_command(
    launcher: Path | Sequence[str], model_path: Path, *, port: int, slots: int, threads: int, alias: str
) -> list[str]:
    """The llama-server command line; with explicit ``--parallel`` each slot gets ``ctx-size / slots`` tokens.
    ``launcher`` is a llama-server binary or the argv prefix of another program taking the same flags."""
    prefix = [str(launcher)] if isinstance(launcher, Path) else list(launcher)
    return [
        *prefix,
        "--model", str(model_path),
        "--alias", alias,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--threads", str(threads),
        "--parallel", str(slots),
        "--ctx-size", str(slots * CTX_PER_SLOT),
        "--cont-batching",
        "--no-webui",
    ]  # fmt: skip


def prebuilt_launcher() -> list[str]:
    """The argv prefix that runs the prebuilt runtime (xllamacpp) with llama-server's flags."""
    return [sys.executable, "-m", "kodcode.models.xllamacpp_server"]


def _resolve_runtime(
    server_binary: Path | None, cache_dir: Path | None = None, *, prefer_native: bool = True
) -> tuple[list[str], dict[str, str], str]:
    """(argv prefix, environment, runtime label) of the server to run: an explicit binary, $KODCODE_LLAMA_SERVER,
    one built for this CPU (`python -m kodcode.embedded prepare --native`) unless ``prefer_native`` is False,
    or the prebuilt xllamacpp runtime."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LLAMA_ARG_")}
    # llama.cpp's CPU backend uses OpenMP, whose threads spin while waiting. When the cores are also
    # busy with anything else (kodcode's own sandboxes), a spinning thread starves the one doing the
    # work: measured 1.3-4 tok/s instead of 21-25 tok/s with 2 threads on 2 busy cores.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from_env = os.environ.get(SERVER_BINARY_ENV) or None
    if server_binary is None and from_env == PREBUILT_RUNTIME:
        prefer_native, from_env = False, None
    explicit = server_binary or (Path(from_env) if from_env else None)
    if explicit is not None:
        if not os.access(explicit, os.X_OK):
            raise EmbeddedModelError(f"llama-server binary {explicit} does not exist or is not executable")
        return [str(explicit)], env, str(explicit)
    built = built_server_path(cache_dir or default_cache_dir())
    if prefer_native and built.exists():
        return [str(built)], env, str(built)
    # Found, not imported: loading llama.cpp into kodcode's own process would only cost memory. A wheel that is
    # installed but cannot load (no libgomp) fails in the child, whose log tail names the package to install.
    if importlib.util.find_spec("xllamacpp") is None:
        raise EmbeddedModelError(
            f"the embedded model needs the llama.cpp runtime; install it with: pip install '{XLLAMACPP_REQUIREMENT}'"
        )
    return prebuilt_launcher(), env, PREBUILT_RUNTIME


def _pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent_hook() -> Callable[[], None]:
    """A preexec_fn asking the kernel to SIGKILL the child when its parent dies.

    libc is resolved here, before fork, so the child only makes two syscalls. The
    getppid check closes the race where the parent dies between fork and prctl.
    PDEATHSIG fires when the forking *thread* exits, so the server is spawned from
    the event loop's thread, never from a worker thread.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    parent_pid = os.getpid()

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return die_with_parent


# Servers still running, stopped at interpreter exit should a context never be closed.
_LIVE_SERVERS: set[subprocess.Popen[bytes]] = set()


def _kill_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        # The server leads its own process group (start_new_session), so this reaches any helper it forked.
        os.killpg(process.pid, signum)


def _stop_left_over_servers() -> None:
    for process in list(_LIVE_SERVERS):
        if process.poll() is None:
            _kill_group(process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=_STOP_GRACE_SECONDS)
        _LIVE_SERVERS.discard(process)


atexit.register(_stop_left_over_servers)


async def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, a grace period, then SIGKILL; always reaps the process."""
    with anyio.CancelScope(shield=True):
        if process.poll() is None:
            _kill_group(process, signal.SIGTERM)
            with anyio.move_on_after(_STOP_GRACE_SECONDS):
                while process.poll() is None:
                    await anyio.sleep(0.05)
        if process.poll() is None:
            _kill_group(process, signal.SIGKILL)
            while process.poll() is None:
                await anyio.sleep(0.02)
        _LIVE_SERVERS.discard(process)


def _log_tail(log_path: Path, start_offset: int) -> str:
    try:
        with open(log_path, "rb") as log_file:
            log_file.seek(start_offset)
            lines = deque(log_file.read().decode("utf-8", "replace").splitlines(), maxlen=_LOG_TAIL_LINES)
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in lines if line.strip()) or "(empty log)"


def _exit_reason(returncode: int) -> str:
    if returncode == -signal.SIGILL:
        return ("was killed by SIGILL before it was ready: this llama.cpp build uses CPU instructions this "
                "machine lacks (the prebuilt one needs AVX2); build one for this CPU with: "
                f"python -m kodcode.embedded prepare --native (or set {SERVER_BINARY_ENV} to another llama-server)")
    if returncode < 0:
        return f"was killed by signal {-returncode} before it was ready"
    return f"exited with code {returncode} before it was ready"


class _PortTaken(Exception):
    pass


async def _wait_ready(
    process: subprocess.Popen[bytes], base_url: str, alias: str, deadline: float, log_path: Path, log_offset: int
) -> None:
    """Return once the server reports healthy and serves our model; raise if it exits or the deadline passes."""
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            returncode = process.poll()
            if returncode is not None:
                tail = _log_tail(log_path, log_offset)
                if "couldn't bind" in tail or "Address already in use" in tail:
                    raise _PortTaken()
                raise EmbeddedModelError(
                    f"llama-server {_exit_reason(returncode)} (log {log_path}): {tail}"
                )
            if time.monotonic() > deadline:
                raise EmbeddedModelError(
                    f"llama-server was not ready within the startup timeout (log {log_path}): "
                    f"{_log_tail(log_path, log_offset)}"
                )
            with contextlib.suppress(httpx.HTTPError, ValueError):
                health = await client.get(base_url + "/health")
                if health.status_code == 200 and health.json().get("status") == "ok":
                    # Another server could answer on a port we lost the race for: check it is ours.
                    models = (await client.get(base_url + "/v1/models")).json()
                    served = {entry.get("id") for entry in models.get("data", [])}
                    if alias in served and process.poll() is None:
                        return
            await anyio.sleep(0.1)


def _spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: a terminal's Ctrl-C reaches kodcode, which stops it
            preexec_fn=_die_with_parent_hook(),
            close_fds=True,
        )
    _LIVE_SERVERS.add(process)
    return process


@asynccontextmanager
async def embedded_server(
    variant: str | ModelVariant = "0.5b",
    *,
    concurrency: int = 4,
    threads: int | None = None,
    cache_dir: Path | None = None,
    log_path: Path | None = None,
    startup_timeout: float = 120,
    server_binary: Path | None = None,
    prefer_native: bool = True,
) -> AsyncIterator[EmbeddedEndpoint]:
    """Run the embedded model's server for the duration of the block and yield where it answers.

    ``concurrency`` is how many requests the caller will have in flight; it becomes the
    number of server slots (capped at MAX_SLOTS), each with CTX_PER_SLOT tokens of context.
    Server output goes to ``log_path`` (default: ``llama-server.<pid>.log`` in the cache dir).
    ``prefer_native=False`` runs the prebuilt runtime even where ``prepare --native`` built a server.
    """
    spec = resolve_variant(variant)
    model_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    launcher, env, runtime = _resolve_runtime(server_binary, model_dir, prefer_native=prefer_native)
    model_path = await anyio.to_thread.run_sync(ensure_model, spec, model_dir)
    slots = slots_for(concurrency)
    thread_count = threads if threads is not None else _available_cpus()
    if log_path is None:
        log_path = model_dir / f"llama-server.{os.getpid()}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)

    deadline = time.monotonic() + startup_timeout
    process: subprocess.Popen[bytes] | None = None
    try:
        for _attempt in range(_PORT_ATTEMPTS):
            port = _pick_free_port()
            command = server_command(launcher, model_path, port=port, slots=slots, threads=thread_count, alias=spec.alias)
            log_offset = log_path.stat().st_size if log_path.exists() else 0
            process = _spawn(command, env, log_path)
            try:
                await _wait_ready(process, f"http://127.0.0.1:{port}", spec.alias, deadline, log_path, log_offset)
                break
            except _PortTaken:
                await _stop(process)  # another process bound the port between our probe and the server's bind
                process = None
        else:
            raise EmbeddedModelError(f"llama-server could not bind a free port in {_PORT_ATTEMPTS} tries (log {log_path})")
        assert process is not None  # the loop only breaks with a ready server
        yield EmbeddedEndpoint(
            base_url=f"http://127.0.0.1:{port}/v1", model=spec.alias, pid=process.pid, slots=slots, log_path=log_path,
            runtime=runtime,
        )
    finally:
        if process is not None:
            await _stop(process)
