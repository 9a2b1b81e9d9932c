"""What `python -m kodcode.run` does once its flags are parsed: load the config, assemble the run
(kodcode.app.build), drive the pipeline with a progress view, watch signals, and print the summary. Kept
apart from the command line so that `--help` answers without importing any of it."""

from __future__ import annotations

import argparse
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

from kodcode.agents.sources import SourceMix
from kodcode.app.build import assemble
from kodcode.app.progress import ProgressSnapshot, ProgressView
from kodcode.config import Config, load_config
from kodcode.errors import KodcodeError
from kodcode.log import EVENTS_FILE, close_logging, configure_logging
from kodcode.runtime.pipeline import Pipeline, RunSummary

__all__ = ["launch", "user_error"]


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


async def _run(config: Config, db_path: Path, live: bool) -> RunSummary:
    sources = SourceMix(config)                # a bad seed file fails here, before anything is opened
    async with AsyncExitStack() as stack:
        parts = await assemble(config, db_path, stack)
        log, records, llm, sandbox = parts.log, parts.records, parts.llm, parts.sandbox
        pipeline = await parts.pipeline(sources)
        run_id = await records.start_run({**config.model_dump(mode="json"), "models": parts.models,
                                          "prompts": parts.prompt_hashes})
        structlog.contextvars.bind_contextvars(run_id=run_id)
        log.info("run_started", db=str(db_path), target=config.target, concurrency=config.concurrency,
                 mode=config.effective_mode, models=parts.models, base_url=parts.endpoint)
        print(f"kodcode: watch this run in a browser: python -m kodcode.view --db {db_path}", flush=True)

        started = time.monotonic()
        view = ProgressView(Console(), live=live)
        workers = getattr(sandbox, "workers", 0)

        async def tick() -> None:
            stats = pipeline.statistics()
            llm_stats = llm.statistics()
            snapshot = ProgressSnapshot(
                elapsed_s=time.monotonic() - started, target=config.target, verified=stats["verified"],
                verified_at_start=pipeline.summary.verified_before, counts_by_state=pipeline.counts(),
                questions_settled=stats["settled_this_run"], attempts_judged=stats["attempts_judged"],
                attempts_passed=stats["attempts_passed"], llm_in_flight=llm_stats["in_flight"],
                llm_waiting=llm_stats["waiting"], llm_concurrency=config.concurrency, llm_calls=llm_stats["calls"],
                llm_cache_hits=llm_stats["cache_hits"], llm_retries=llm_stats["retries"], tokens=llm_stats["tokens"],
                cost_usd=llm.cost_usd,
                sandbox_busy=min(workers, sum(stats["actors"][a]["busy"] for a in ("judge", "rewriter", "reasoner"))),
                sandbox_workers=workers, rewrites_done=stats["rewrites_done"], stopping=stats["stopping"])
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
