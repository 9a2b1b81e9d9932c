"""`python -m kodcode.run`: run the whole pipeline until --target verified triplets are stored.

Running again with the same --db resumes: every item re-enters at its last committed state and no
completed LLM call is sent again. Ctrl-C (or SIGTERM) stops intake and lets work in flight finish for
--grace seconds; a second Ctrl-C stops at once. Either way, nothing committed is lost.

An endpoint that goes down (refused connections, 502/503/504) pauses the roles it serves instead of
failing items; the run goes on when it answers again, or stops after --max-outage (exit 75).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from kodcode.errors import ConfigError, KodcodeError

__all__ = ["build_parser", "main"]

DEFAULT_DB = Path("runs/kodcode.db")

EXIT_CODES = """exit codes:
  0    the run ended by itself (target reached, questions exhausted, a budget spent)
  2    bad input (flags, config, seeds, prompts, --db, a store from a newer kodcode): one line, nothing changed
  75   an endpoint stayed down longer than --max-outage; the store is intact: run again to resume
  130  stopped by Ctrl-C (SIGINT), at start-up or later, after committing; 143 for SIGTERM"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kodcode.run",
        description="Make verified (question, solution, unit tests) triplets with LLM agents; resumable.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="TOML config file (flags override it)")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB,
                        help=f"SQLite store; its directory also holds the structured event log (default: {DEFAULT_DB})")
    parser.add_argument("--target", type=int, help="stop after this many verified triplets (default 10)")
    parser.add_argument("--concurrency", type=int, help="LLM requests in flight at most (default 8)")
    parser.add_argument("--max-attempts", type=int, help="solve attempts per question at most (default 10)")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint(s), one or several comma-separated, e.g. "
                                           "http://127.0.0.1:8000/v1 (default: start the embedded local model)")
    parser.add_argument("--model", help="model name for every role (default: the endpoint's first model)")
    parser.add_argument("--api-key-env", help="environment variable that holds the API key (default OPENAI_API_KEY)")
    parser.add_argument("--mode", choices=("split", "joint"),
                        help="split: solution and tests in separate calls; joint: one call (the paper's format)")
    parser.add_argument("--sources", help="question sources and weights, e.g. prefill=1,seeds=1,snippets=1,docs=1,"
                                          "filter=1,evol=1 (default prefill=1, or seeds=1 with --seeds)")
    parser.add_argument("--seeds", type=Path,
                        help="seed questions: a JSONL file or a directory written by datasets.save_to_disk")
    parser.add_argument("--seeds-field", help="text field of the seed questions (default question/text/problem)")
    parser.add_argument("--seeds-split", help="split of a saved DatasetDict (default train)")
    parser.add_argument("--snippets-dir", type=Path,
                        help="directory of Python files for the snippets source (default: the standard library)")
    parser.add_argument("--snippets-subset", choices=("Algorithm", "Data_Structure"),
                        help="subset name recorded for snippet questions (default Algorithm)")
    parser.add_argument("--docs-modules", help="comma-separated modules whose docstrings feed the docs source")
    parser.add_argument("--filter-quality", help="comma-separated qualities the filter source keeps (default good,excellent)")
    parser.add_argument("--given", type=Path,
                        help="questions to solve as written (JSONL with a question field, or a save_to_disk "
                             "directory): one item each, no proposer call; the run ends when all are settled")
    parser.add_argument("--seed-subset", help="subset name recorded for seed-made (or given) questions (e.g. Leetcode)")
    parser.add_argument("--prompts", type=Path, help="directory of .j2 templates that override the packaged ones")
    parser.add_argument("--seed", type=int, help="run seed: same seed, same requests (default 0)")
    parser.add_argument("--budget-calls", type=int, help="stop after this many LLM calls (whole store)")
    parser.add_argument("--budget-tokens", type=int, help="stop after this many LLM tokens (whole store)")
    parser.add_argument("--budget-usd", type=float, help="stop after this much money (needs prices in config)")
    parser.add_argument("--embedded-model", choices=("0.5b", "1.5b"),
                        help="embedded model when no --base-url is given (default 0.5b)")
    parser.add_argument("--backend", choices=("embedded", "vllm", "openai"),
                        help="embedded: the local llama.cpp server; vllm: vLLM in this process (needs the vllm extra); "
                             "openai: --base-url (default: openai with --base-url, else embedded)")
    parser.add_argument("--vllm-model", type=Path,
                        help="Hugging Face checkpoint directory for --backend vllm (default: the embedded model, "
                             "converted once to bf16)")
    parser.add_argument("--vllm-max-model-len", type=int, help="prompt + completion tokens per sequence (default 4096)")
    parser.add_argument("--vllm-kv-cache-gib", type=int, help="KV cache size on a CPU, in GiB (default 1)")
    parser.add_argument("--reasoning-samples", type=int,
                        help="responses per verified question from the reasoning role, kept only if they pass (default 0: off)")
    parser.add_argument("--reasoning-model", help="model for the reasoning role (default: --model)")
    parser.add_argument("--reasoning-base-url", help="endpoint for the reasoning role (default: --base-url)")
    parser.add_argument("--no-mutation-gate", action="store_true",
                        help="accept trials without checking that their tests kill mutants of the solution")
    parser.add_argument("--mutation-threshold", type=float,
                        help="share of mutants the tests must kill for a trial to count as verified (default 0.5)")
    parser.add_argument("--max-mutants", type=int, help="mutants run per passing trial at most (default 6)")
    parser.add_argument("--no-matrix", action="store_true",
                        help="judge each attempt on its own tests only (no execution matrix, no consensus)")
    parser.add_argument("--cross-check", action="store_true",
                        help="a second, independent solution must also pass a trial's tests")
    parser.add_argument("--vacuous", choices=("flag", "reject"),
                        help="vacuous tests: flag them, or reject trials that have any (default flag)")
    parser.add_argument("--llm-timeout", type=float,
                        help="seconds to wait for one LLM answer before retrying it (default 300)")
    parser.add_argument("--max-outage", metavar="DURATION",
                        help="how long an endpoint may stay down (refused connections, 502/503/504) while the run "
                             "waits for it, e.g. 90s, 5m, 1h; then the run stops with exit 75 (default 30m)")
    parser.add_argument("--grace", type=float, help="seconds in-flight work may take after Ctrl-C (default 30)")
    parser.add_argument("--unsafe-no-isolation", action="store_true",
                        help="run generated code without the bubblewrap sandbox (only where bwrap cannot run)")
    parser.add_argument("--sandbox", choices=("local", "ray"),
                        help="where tests run: local fork servers (default) or worker actors on a Ray cluster")
    parser.add_argument("--ray-address", help="Ray cluster for --sandbox ray (default: RAY_ADDRESS, else a local one)")
    parser.add_argument("--debug", action="store_true", help="debug logs on the console and full tracebacks")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    if args.embedded_model and args.base_url:
        raise ConfigError("--embedded-model and --base-url conflict: the embedded model runs only without --base-url")
    if args.given and args.sources:
        raise ConfigError("--given and --sources conflict: given questions are not mixed with other sources")
    weights = (_weights(args.sources) if args.sources else {"given": 1.0} if args.given
               else {"seeds": 1.0, "prefill": 0.0} if args.seeds else None)
    target = args.target
    if args.given and target is None:
        # A given run's job is every question it was given: the default target (10) would stop it part-way,
        # leaving questions unsettled. An explicit --target still stops it early.
        from kodcode.agents.sources.seeds import load_seeds

        target = max(1, len(load_seeds(args.given, field=args.seeds_field, split=args.seeds_split)))
    return {
        "target": target,
        "concurrency": args.concurrency,
        "max_attempts": args.max_attempts,
        "base_url": args.base_url,
        "model": args.model,
        "api_key_env": args.api_key_env,
        "mode": args.mode,
        "seed": args.seed,
        "prompts_dir": args.prompts,
        "budget_calls": args.budget_calls,
        "budget_tokens": args.budget_tokens,
        "budget_usd": args.budget_usd,
        "embedded_variant": args.embedded_model,
        "backend": args.backend,
        "vllm.model_dir": args.vllm_model,
        "vllm.max_model_len": args.vllm_max_model_len,
        "vllm.kv_cache_gib": args.vllm_kv_cache_gib,
        "grace_s": args.grace,
        "max_outage_s": parse_duration(args.max_outage, "--max-outage") if args.max_outage is not None else None,
        "llm_timeout_s": args.llm_timeout,
        "gates.mutation": False if args.no_mutation_gate else None,
        "gates.mutation_threshold": args.mutation_threshold,
        "gates.max_mutants": args.max_mutants,
        "gates.cross_check": True if args.cross_check else None,
        "gates.vacuous": args.vacuous,
        "matrix.enabled": False if args.no_matrix else None,
        "reasoning_samples": args.reasoning_samples,
        "roles.reasoning.model": args.reasoning_model,
        "roles.reasoning.base_url": args.reasoning_base_url,
        "sources.seeds_file": args.seeds,
        "sources.given_file": args.given,
        "sources.seeds_field": args.seeds_field,
        "sources.seeds_split": args.seeds_split,
        "sources.snippets_dir": args.snippets_dir,
        "sources.snippets_subset": args.snippets_subset,
        "sources.docs_modules": _csv(args.docs_modules),
        "sources.filter_qualities": _csv(args.filter_quality),
        "sources.subset": args.seed_subset,
        "sources.weights": weights,
        "sandbox.isolation": False if args.unsafe_no_isolation else None,
        "sandbox.backend": args.sandbox,
        "sandbox.ray_address": args.ray_address,
    }


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)?")


def parse_duration(value: str, flag: str) -> float:
    """Seconds in '90', '90s', '5m' or '1h'."""
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise ConfigError(f"{flag} {value!r}: give seconds or a duration such as 90s, 5m, 1h")
    return float(match[1]) * {"h": 3600.0, "m": 60.0, "s": 1.0, None: 1.0}[match[2]]


def _csv(value: str | None) -> tuple[str, ...] | None:
    return tuple(part.strip() for part in value.split(",") if part.strip()) if value else None


def _weights(spec: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for part in _csv(spec) or ():
        name, _, weight = part.partition("=")
        try:
            weights[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise ConfigError(f"--sources {spec!r}: weight of {name!r} is not a number") from None
    return weights


# Set when a Ctrl-C was handled here. If the KeyboardInterrupt was raised inside code that an extension
# module's initialisation ran through the C API (PyRun_String), CPython marks it unhandled and, however this
# function returns, ends the process by SIGINT (exit -2) after finalising; __main__ exits directly instead.
_interrupted_in_c = False


def _interrupt_once(signum: int, frame: object) -> None:
    """Ctrl-C before the run's own watcher is up: the first one stops, a second one cannot interrupt the
    stop (a KeyboardInterrupt raised inside the handling of the first dies with a traceback, or silently)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:   # not when embedded in another program
        signal.signal(signal.SIGINT, _interrupt_once)
    try:
        args = build_parser().parse_args(argv)
        try:
            overrides = _overrides(args)
        except KodcodeError as exc:
            print(f"kodcode: error: {exc}", file=sys.stderr)
            return 2
        from kodcode.app.launch import launch   # the run's dependencies, only once there is a run

        return launch(args, overrides)
    except KeyboardInterrupt:
        return _stopped_at_start_up()
    except BaseExceptionGroup as group:      # the interrupt reached the run's task groups
        if group.split(KeyboardInterrupt)[1] is not None:
            raise
        return _stopped_at_start_up()


def _stopped_at_start_up() -> int:
    """Ctrl-C while Python imports the run's libraries, reads the config or starts the event loop: nothing is
    open (or it was closed as the interrupt unwound). Once the run starts, its own signal watcher makes the
    same stop (kodcode.app.launch)."""
    global _interrupted_in_c
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not cut this stop short
    _interrupted_in_c = True
    print("\nkodcode: SIGINT: stopped during start-up; the store is intact, run the same command again to resume",
          file=sys.stderr)
    return 130


if __name__ == "__main__":
    code = main()
    if _interrupted_in_c:      # nothing is open at this point: skip finalisation (see _interrupted_in_c)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
