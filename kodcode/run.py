"""`python -m kodcode.run`: run the whole pipeline until --target verified triplets are stored.

Running again with the same --db resumes: every item re-enters at its last committed state and no
completed LLM call is sent again. Ctrl-C (or SIGTERM) stops intake and lets work in flight finish for
--grace seconds; a second Ctrl-C stops at once. Either way, nothing committed is lost.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import structlog
from rich.console import Console

from kodcode.agents.context import AgentContext
from kodcode.config import ROLES, Config, load_config
from kodcode.errors import ConfigError, KodcodeError
from kodcode.progress import ProgressSnapshot, ProgressView
from kodcode.prompts import PromptLibrary
from kodcode.runtime.gate import build_gate
from kodcode.runtime.fleet import build_transport, endpoint_specs, preflight_pool
from kodcode.runtime.llm import LLMClient, LLMTransport, OpenAITransport
from kodcode.runtime.logging import EVENTS_FILE, close_logging, configure_logging, get_logger
from kodcode.runtime.pipeline import Pipeline, RunSummary
from kodcode.runtime.prices import merged_prices
from kodcode.runtime.records import Records
from kodcode.runtime.scheduler import AdaptivePolicy, Budget, BudgetSpent
from kodcode.runtime.store import Store
from kodcode.sandbox import open_sandbox
from kodcode.sandbox.base import Limits
from kodcode.sources import SourceMix

__all__ = ["build_parser", "main"]

DEFAULT_DB = Path("runs/kodcode.db")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kodcode.run",
        description="Make verified (question, solution, unit tests) triplets with LLM agents; resumable.")
    parser.add_argument("--config", type=Path, help="TOML config file (flags override it)")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB,
                        help=f"SQLite store; its directory also gets {EVENTS_FILE} (default: {DEFAULT_DB})")
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
    parser.add_argument("--seed-subset", help="subset name recorded for seed-made questions (e.g. Leetcode)")
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
    parser.add_argument("--cross-check", action="store_true",
                        help="a second, independent solution must also pass a trial's tests")
    parser.add_argument("--vacuous", choices=("flag", "reject"),
                        help="vacuous tests: flag them, or reject trials that have any (default flag)")
    parser.add_argument("--llm-timeout", type=float,
                        help="seconds to wait for one LLM answer before retrying it (default 300)")
    parser.add_argument("--grace", type=float, help="seconds in-flight work may take after Ctrl-C (default 30)")
    parser.add_argument("--unsafe-no-isolation", action="store_true",
                        help="run generated code without the bubblewrap sandbox (only where bwrap cannot run)")
    parser.add_argument("--debug", action="store_true", help="debug logs on the console and full tracebacks")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    if args.embedded_model and args.base_url:
        raise ConfigError("--embedded-model and --base-url conflict: the embedded model runs only without --base-url")
    weights = _weights(args.sources) if args.sources else ({"seeds": 1.0, "prefill": 0.0} if args.seeds else None)
    return {
        "target": args.target,
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
        "llm_timeout_s": args.llm_timeout,
        "gates.mutation": False if args.no_mutation_gate else None,
        "gates.mutation_threshold": args.mutation_threshold,
        "gates.max_mutants": args.max_mutants,
        "gates.cross_check": True if args.cross_check else None,
        "gates.vacuous": args.vacuous,
        "reasoning_samples": args.reasoning_samples,
        "roles.reasoning.model": args.reasoning_model,
        "roles.reasoning.base_url": args.reasoning_base_url,
        "sources.seeds_file": args.seeds,
        "sources.seeds_field": args.seeds_field,
        "sources.seeds_split": args.seeds_split,
        "sources.snippets_dir": args.snippets_dir,
        "sources.snippets_subset": args.snippets_subset,
        "sources.docs_modules": _csv(args.docs_modules),
        "sources.filter_qualities": _csv(args.filter_quality),
        "sources.subset": args.seed_subset,
        "sources.weights": weights,
        "sandbox.isolation": False if args.unsafe_no_isolation else None,
    }


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, _overrides(args))
        # On a terminal the live progress panel is the console view; logs there would tear it apart, so only
        # warnings reach the console (everything still goes to events.jsonl, for kodcode.tail).
        live = sys.stdout.isatty()
        console_level = "debug" if args.debug else ("warning" if live else "info")
        configure_logging(args.db.parent / EVENTS_FILE, console_level=console_level)
    except KodcodeError as exc:
        print(f"kodcode: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"kodcode: error: cannot write the run directory {args.db.parent}: {exc.strerror}; choose another --db",
              file=sys.stderr)
        return 2
    try:
        summary = anyio.run(_run, config, args.db, live, backend="asyncio")
    except (KodcodeError, BaseExceptionGroup) as exc:
        error = _user_error(exc)
        if error is None:
            raise
        if args.debug:
            traceback.print_exc()
        print(f"kodcode: error: {error}", file=sys.stderr)
        return 2
    finally:
        close_logging()
    _print_summary(summary)
    return 0


def _user_error(exc: BaseException) -> KodcodeError | None:
    """The KodcodeError behind `exc`: an actor's store or LLM failure reaches main inside task-group groups."""
    if isinstance(exc, KodcodeError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _user_error(inner)) is not None:
                return found
    return None


def _api_key(env_name: str | None) -> str | None:
    return os.environ.get(env_name or "OPENAI_API_KEY") or None


async def _run(config: Config, db_path: Path, live: bool) -> RunSummary:
    log = get_logger()
    prompts = PromptLibrary(config.prompts_dir)
    prompt_hashes = prompts.hashes()           # a broken template fails here, before anything is paid for
    sources = SourceMix(config)                # so does a bad seed file
    async with AsyncExitStack() as stack:
        # A configured endpoint is checked first: a wrong URL or model must not create or touch the store.
        # The embedded model starts after the store is open, so a store in use costs no model start.
        endpoint = await _endpoint(config, db_path.parent, stack) if config.effective_backend == "openai" else None
        if endpoint is not None:
            _prices(config, _models(config, endpoint[1]))   # an unpriced --budget-usd must not create the store
        store = await Store.open(db_path)
        stack.push_async_callback(store.aclose)
        records = Records(store)
        spent = await records.spent()
        base_url, default_model, default_transport = endpoint or await _endpoint(config, db_path.parent, stack)
        models = _models(config, default_model)
        prices = _prices(config, models)
        budget = Budget(calls=config.budget_calls, tokens=config.budget_tokens, usd=config.budget_usd,
                        prices=prices, spent=BudgetSpent(calls=int(spent["calls"]),
                                                         prompt_tokens=int(spent["tokens"]), usd=spent["usd"]))
        transports: dict[str, LLMTransport] = {"default": default_transport}
        for role in ROLES:
            settings = config.role(role)
            if settings.base_url:
                specs = endpoint_specs(settings.base_url, settings.api_key_env or config.api_key_env)
                await preflight_pool(specs, models[role])
                transports[role] = build_transport(specs, timeout_s=config.llm_timeout_s, ceiling=config.concurrency,
                                                   logger=log)
        llm = LLMClient(transports, records, concurrency=config.concurrency, max_retries=config.llm_max_retries,
                        budget=budget, logger=log)
        stack.push_async_callback(llm.aclose)
        sandbox = await stack.enter_async_context(open_sandbox(
            workers=config.sandbox.workers, isolation=config.sandbox.isolation,
            limits=Limits(wall_s=config.sandbox.timeout_s)))
        gate = await build_gate(records)
        run_id = await records.start_run({**config.model_dump(mode="json"), "models": models, "prompts": prompt_hashes})
        structlog.contextvars.bind_contextvars(run_id=run_id)
        log.info("run_started", db=str(db_path), target=config.target, concurrency=config.concurrency,
                 mode=config.effective_mode, models=models, base_url=base_url)
        ctx = AgentContext(config, llm, records, sandbox, prompts, models, log)
        policy = AdaptivePolicy(max_attempts=config.max_attempts, cap_confidence=True)
        if policy.confidence < 0.95:
            log.warning("label_confidence_capped", max_attempts=config.max_attempts,
                        expected_label_agreement=round(policy.confidence, 3))
        pipeline = Pipeline(ctx, policy=policy, sources=sources, gate=gate)

        started = time.monotonic()
        view = ProgressView(Console(), live=live)

        async def tick() -> None:
            stats = pipeline.statistics()
            llm_stats = llm.statistics()
            snapshot = ProgressSnapshot(
                elapsed_s=time.monotonic() - started, target=config.target, verified=stats["verified"],
                verified_at_start=pipeline.summary.verified_before, counts_by_state=await records.counts(),
                questions_settled=stats["settled_this_run"], attempts_judged=stats["attempts_judged"],
                attempts_passed=stats["attempts_passed"], llm_in_flight=llm_stats["in_flight"],
                llm_waiting=llm_stats["waiting"], llm_concurrency=config.concurrency, llm_calls=llm_stats["calls"],
                llm_cache_hits=llm_stats["cache_hits"], llm_retries=llm_stats["retries"], tokens=llm_stats["tokens"],
                cost_usd=llm.cost_usd, sandbox_busy=min(getattr(sandbox, "workers", 0), sum(stats["actors"][a]["busy"] for a in ("judge", "rewriter", "reasoner"))),
                sandbox_workers=getattr(sandbox, "workers", 0), rewrites_done=stats["rewrites_done"],
                stopping=stats["stopping"])
            view.update(snapshot)
            log.debug("progress", verified=stats["verified"], target=config.target, open=stats["open_items"],
                      **{f"llm_{k}": v for k, v in llm_stats.items()})

        status = "interrupted"
        with anyio.CancelScope() as run_scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch_signals, pipeline, run_scope, config.grace_s, log)
                try:
                    await pipeline.run(on_tick=tick, tick_s=1.0 if live else 10.0)
                finally:
                    view.close()
                status = "completed"
                tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            summary = await pipeline.collect_summary()
            summary.llm = llm.statistics()
            await records.finish_run(status, summary.as_dict())
            log.info("run_finished", status=status, **summary.as_dict())
        structlog.contextvars.unbind_contextvars("run_id")
        return summary


def _models(config: Config, default_model: str) -> dict[str, str]:
    return {role: config.role(role).model or default_model for role in ROLES}


def _prices(config: Config, models: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Built-in prices for common hosted models, overridden by the config's [prices]; with --budget-usd every
    model in use needs one."""
    prices = merged_prices(config.prices, models.values())
    if config.budget_usd is not None:
        unpriced = sorted({m for m in models.values() if m not in prices})
        if unpriced:
            raise ConfigError(f"--budget-usd: no price for model(s) {', '.join(unpriced)}; add them to [prices] "
                              "in the config (model = [usd_per_1M_in, usd_per_1M_out])")
    return prices


async def _endpoint(config: Config, run_dir: Path, stack: AsyncExitStack) -> tuple[str, str, LLMTransport]:
    """(where, default model, transport): the configured endpoint, checked; the embedded model; or vLLM in process."""
    backend = config.effective_backend
    if backend == "vllm":
        from kodcode.runtime.vllm_backend import engine_settings, vllm_transport   # vllm only when chosen

        settings = await anyio.to_thread.run_sync(engine_settings, config)   # may convert the model (once)
        transport = await stack.enter_async_context(vllm_transport(settings))
        return transport.label, transport.model, transport
    if backend == "embedded":
        from kodcode.runtime.embedded import embedded_server   # only the embedded path needs its packages

        endpoint = await stack.enter_async_context(embedded_server(
            config.embedded_variant, concurrency=config.concurrency, log_path=run_dir / "llama-server.log"))
        return endpoint.base_url, endpoint.model, OpenAITransport(endpoint.base_url, None, timeout_s=config.llm_timeout_s)
    # One URL, several comma-separated URLs, or [[endpoints]] with limits: several become a pool with
    # least-outstanding routing, ejection, rate limits and per-endpoint adaptive concurrency.
    specs = endpoint_specs(config.base_url, config.api_key_env, config.endpoints)
    served = await preflight_pool(specs, config.model)
    where = ",".join(spec.base_url for spec in specs)
    model = config.model or (served[0] if served else None)
    if model is None:
        raise ConfigError(f"{where} lists no models; pass --model")
    return where, model, build_transport(specs, timeout_s=config.llm_timeout_s, ceiling=config.concurrency,
                                         logger=get_logger())


async def _watch_signals(pipeline: Pipeline, run_scope: anyio.CancelScope, grace_s: float, log: Any) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            pipeline.request_stop(f"{name} received")
            print(f"\nkodcode: {name}: finishing work in flight (up to {grace_s:.0f} s); press Ctrl-C again to stop now",
                  file=sys.stderr)
            with anyio.move_on_after(grace_s):
                async for signum in signals:
                    log.warning("stop_now", signal=signal.Signals(signum).name)
                    break
            run_scope.cancel()
            return


def _print_summary(summary: RunSummary) -> None:
    data = summary.as_dict()
    counts = ", ".join(f"{state} {n}" for state, n in data["items"].items() if n)
    llm = data["llm"]
    print(f"kodcode: {data['stop_reason']}. verified {data['verified_total']} "
          f"(+{data['verified_this_run']} this run) in {data['elapsed_s']:.1f} s")
    print(f"  items: {counts or 'none'}")
    if llm:
        print(f"  llm: {llm.get('calls', 0)} calls, {llm.get('cache_hits', 0)} from cache, "
              f"{llm.get('retries', 0)} retries, {llm.get('tokens', 0)} tokens")


if __name__ == "__main__":
    sys.exit(main())
