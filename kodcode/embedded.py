"""`python -m kodcode.embedded prepare`: get the embedded model ready on this machine, once.

Assembles and verifies the model file, then checks that llama.cpp really runs here by starting the server
and asking for one completion. The default runtime is prebuilt (the xllamacpp wheel, any x86-64 CPU with
AVX2), so nothing is compiled. `prepare --native` also compiles llama-server for this CPU from the pinned
llama.cpp sources (cmake and a C++ compiler; tens of CPU-minutes, once), measures both and prints the gain;
later runs use the native build whenever it exists. Running `prepare` again is cheap.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anyio
import httpx

from kodcode.errors import EmbeddedModelError, KodcodeError
from kodcode.models.files import default_cache_dir, ensure_model
from kodcode.models.llama_server import embedded_server
from kodcode.models.native_build import build_server, built_server_path

__all__ = ["main", "measure_generation", "prepare"]

_SPEED_PROMPT = "Write a Python function that merges two sorted lists into one sorted list, with a docstring."
_SPEED_TOKENS = 96


async def _answers(cache_dir: Path, server_binary: Path | None, prefer_native: bool = True) -> str | None:
    """None when the server starts and completes a request, else why not."""
    try:
        async with embedded_server(cache_dir=cache_dir, concurrency=1, server_binary=server_binary,
                                   prefer_native=prefer_native,
                                   log_path=cache_dir / "llama-server.prepare.log") as endpoint:
            async with httpx.AsyncClient(timeout=120) as client:
                reply = await client.post(f"{endpoint.base_url}/completions",
                                          json={"model": endpoint.model, "prompt": "def add(a, b):", "max_tokens": 8})
                reply.raise_for_status()
    except (EmbeddedModelError, httpx.HTTPError) as exc:
        return str(exc)
    return None


async def measure_generation(cache_dir: Path, server_binary: Path | None, *, tokens: int = _SPEED_TOKENS) -> float:
    """Tokens/s of one request generating exactly ``tokens`` tokens (after a warm-up) on the given server
    (None: the prebuilt runtime)."""
    async with embedded_server(cache_dir=cache_dir, concurrency=1, server_binary=server_binary, prefer_native=False,
                               log_path=cache_dir / "llama-server.prepare.log") as endpoint:
        async with httpx.AsyncClient(timeout=600) as client:
            body = {"model": endpoint.model, "messages": [{"role": "user", "content": _SPEED_PROMPT}],
                    "temperature": 0.3, "seed": 1, "ignore_eos": True}
            (await client.post(f"{endpoint.base_url}/chat/completions", json={**body, "max_tokens": 8})).raise_for_status()
            started = time.perf_counter()
            reply = await client.post(f"{endpoint.base_url}/chat/completions", json={**body, "max_tokens": tokens})
            reply.raise_for_status()
            return int(reply.json()["usage"]["completion_tokens"]) / (time.perf_counter() - started)


def _print_gain(cache_dir: Path, built: Path) -> None:
    prebuilt = anyio.run(measure_generation, cache_dir, None)
    native = anyio.run(measure_generation, cache_dir, built)
    print(f"kodcode: generation, 1 request: prebuilt {prebuilt:.1f} tok/s, native {native:.1f} tok/s "
          f"({(native / prebuilt - 1) * 100:+.0f}%); runs use the native build from now on "
          f"(delete {built.parent} to go back)")


def _build_native(cache_dir: Path) -> Path:
    built = build_server(cache_dir)
    problem = anyio.run(_answers, cache_dir, built)
    if problem is not None:
        built.unlink()
        raise EmbeddedModelError(f"the llama-server built for this CPU does not work: {problem}")
    _print_gain(cache_dir, built)
    return built


def prepare(variant: str = "0.5b", cache_dir: Path | None = None, *, native: bool = False) -> Path | None:
    """Make the embedded model usable here; returns the native server in use, or None for the prebuilt runtime."""
    cache_dir = cache_dir or default_cache_dir()
    model = ensure_model(variant, cache_dir)
    print(f"kodcode: model ready: {model}")
    built = built_server_path(cache_dir)
    if built.exists():
        problem = anyio.run(_answers, cache_dir, built)
        if problem is None:
            print(f"kodcode: llama-server ready (built for this CPU): {built}")
            if native:
                _print_gain(cache_dir, built)
            return built
        print(f"kodcode: the llama-server built earlier does not work ({problem}); removing it")
        built.unlink()
    problem = anyio.run(_answers, cache_dir, None, False)
    if problem is None:
        print("kodcode: the prebuilt llama.cpp runtime (xllamacpp) runs on this machine")
    elif not native:
        raise EmbeddedModelError(f"the prebuilt llama.cpp runtime cannot run here: {problem}; build one for this "
                                 "CPU with: python -m kodcode.embedded prepare --native (needs cmake and g++)")
    else:
        print(f"kodcode: the prebuilt llama.cpp runtime cannot run here: {problem}")
    if not native:
        return None
    if problem is not None:
        built = build_server(cache_dir)
        problem = anyio.run(_answers, cache_dir, built)
        if problem is not None:
            raise EmbeddedModelError(f"the llama-server built for this CPU does not work either: {problem}")
        print(f"kodcode: llama-server ready (built for this CPU): {built}")
        return built
    return _build_native(cache_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kodcode.embedded", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="assemble the model and make sure llama.cpp runs on this CPU")
    prep.add_argument("--variant", choices=("0.5b", "1.5b"), default="0.5b")
    prep.add_argument("--cache-dir", type=Path, help="default: $KODCODE_CACHE_DIR or ~/.cache/kodcode/models")
    prep.add_argument("--native", "--build", dest="native", action="store_true",
                      help="also compile llama-server for this CPU (cmake, g++; tens of CPU-minutes) and use it "
                           "from then on; prints its measured gain over the prebuilt runtime")
    args = parser.parse_args(argv)
    try:
        prepare(args.variant, args.cache_dir, native=args.native)
    except KodcodeError as exc:
        print(f"kodcode: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
