"""What `python -m kodcode.run` does once its flags are parsed: load the config, open the store, start the
model endpoint, the sandbox and the pipeline, watch signals, and print the summary. Kept apart from the
command line so that `--help` answers without importing any of it."""

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
from kodcode.app.progress import ProgressSnapshot, ProgressView
from kodcode.prompts import PromptLibrary
from kodcode.llm.pool import build_transport, endpoint_specs, preflight_pool
from kodcode.runtime.gate import build_gate
from kodcode.llm.client import LLMClient, LLMTransport, OpenAITransport
from kodcode.log import EVENTS_FILE, close_logging, configure_logging, get_logger
from kodcode.runtime.pipeline import Pipeline, RunSummary
from kodcode.llm.prices import merged_prices
from kodcode.store.records import Records
from kodcode.runtime.scheduler import AdaptivePolicy, Budget, BudgetSpent
from kodcode.store.sqlite import Store
from kodcode.sandbox import open_sandbox
from kodcode.sandbox.base import Limits
from kodcode.agents.sources import SourceMix

__all__ = ["launch", "role_models", "start_endpoint", "user_error"]


def launch(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """Everything after the command line is parsed: config, logging, the run, the summary."""
    try:
        config = load_config(args.config, overrides)
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
        error = user_error(exc)
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


def user_error(exc: BaseException) -> KodcodeError | None:
    """The KodcodeError behind `exc`: an actor's store or LLM failure reaches main inside task-group groups."""
    if isinstance(exc, KodcodeError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := user_error(inner)) is not None:
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
        endpoint = await start_endpoint(config, db_path.parent, stack) if config.effective_backend == "openai" else None
        if endpoint is not None:
            _prices(config, role_models(config, endpoint[1]))   # an unpriced --budget-usd must not create the store
        store = await Store.open(db_path)
        stack.push_async_callback(store.aclose)
        records = Records(store)
        spent = await records.spent()
        base_url, default_model, default_transport = endpoint or await start_endpoint(config, db_path.parent, stack)
        models = role_models(config, default_model)
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
            limits=Limits(wall_s=config.sandbox.timeout_s),
            backend=config.sandbox.backend, ray_address=config.sandbox.ray_address))
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


def role_models(config: Config, default_model: str) -> dict[str, str]:
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


async def start_endpoint(config: Config, run_dir: Path, stack: AsyncExitStack) -> tuple[str, str, LLMTransport]:
    """(where, default model, transport): the configured endpoint, checked; the embedded model; or vLLM in process."""
    backend = config.effective_backend
    if backend == "vllm":
        from kodcode.llm.vllm_inprocess import engine_settings, vllm_transport   # vllm only when chosen

        settings = await anyio.to_thread.run_sync(engine_settings, config)   # may convert the model (once)
        transport = await stack.enter_async_context(vllm_transport(settings))
        return transport.label, transport.model, transport
    if backend == "embedded":
        from kodcode.models.llama_server import embedded_server   # only the embedded path needs its packages

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
