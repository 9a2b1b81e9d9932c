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
from kodcode.llm.outage import waiting_line
from kodcode.log import EVENTS_FILE, close_logging, configure_logging, get_logger
from kodcode.runtime.pipeline import Pipeline, RunSummary

__all__ = ["EXIT_OK", "EXIT_OUTAGE", "EXIT_USAGE", "launch", "user_error"]


# Exit codes of `python -m kodcode.run` (also in the README and --help).
EXIT_OK = 0               # the run ended by itself: target reached, questions exhausted, a budget spent
EXIT_USAGE = 2            # bad flags, config, seeds, prompts or store: one line, nothing changed
EXIT_OUTAGE = 75          # an endpoint stayed down longer than --max-outage (EX_TEMPFAIL): rerun to resume
# A run stopped by a signal exits 128 + its number: 130 for Ctrl-C (SIGINT), 143 for SIGTERM, whether it
# landed during start-up or later; either way after committing, with nothing left running.


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
        return EXIT_USAGE
    except OSError as exc:
        print(f"kodcode: error: cannot write the run directory {args.db.parent}: {exc.strerror}; choose another --db",
              file=sys.stderr)
        return EXIT_USAGE
    stop = _Stop(config.grace_s)
    # A Ctrl-C in the instant before the signal watcher starts is a KeyboardInterrupt (asyncio has cancelled
    # the run): kodcode.run's main reports it as the start-up stop it is.
    try:
        summary = anyio.run(_run, config, args.db, live, stop, backend="asyncio")
    except (KodcodeError, BaseExceptionGroup) as exc:
        error = user_error(exc)
        if error is None:
            raise
        if args.debug:
            traceback.print_exc()
        print(f"kodcode: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if stop.signum is not None:
            # The run is over; a repeated Ctrl-C while the summary prints must not turn into a traceback.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        close_logging()
    if summary is None:        # stopped during start-up: the signal's line is printed, nothing ran
        return 128 + (stop.signum or signal.SIGINT)
    _print_summary(summary)
    if stop.signum is not None:
        return 128 + stop.signum
    if summary.outage is not None:
        print(f"kodcode: {summary.outage}; stopped, the store is intact: run the same command again to resume",
              file=sys.stderr)
        return EXIT_OUTAGE
    return EXIT_OK


def user_error(exc: BaseException) -> KodcodeError | None:
    """The KodcodeError behind `exc`: an actor's store or LLM failure reaches main inside task-group groups."""
    if isinstance(exc, KodcodeError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := user_error(inner)) is not None:
                return found
    return None


class _Stop:
    """How signals stop a run. Watched from the first await of the run on, so start-up (preflight, the store,
    the embedded model, the sandbox) stops the same way as the rest: during start-up there is no work in
    flight to finish, so the first signal cancels at once and the exit stack closes what was opened; once
    the pipeline runs, the first signal stops intake and lets work in flight finish for --grace seconds,
    and a second one stops at once."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.signum: int | None = None
        self.pipeline: Pipeline | None = None
        self.scope: anyio.CancelScope | None = None     # what a stop cancels: start-up's, then the pipeline's

    async def watch(self, log: Any) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                self.signum = signum
                if self.pipeline is None:
                    print(f"\nkodcode: {name}: stopped during start-up; the store is intact, run the same command "
                          "again to resume", file=sys.stderr)
                else:
                    self.pipeline.request_stop(f"{name} received")
                    print(f"\nkodcode: {name}: finishing work in flight (up to {self.grace_s:.0f} s); press Ctrl-C "
                          "again to stop now", file=sys.stderr)
                    with anyio.move_on_after(self.grace_s):
                        async for again in signals:
                            log.warning("stop_now", signal=signal.Signals(again).name)
                            break
                self.cancel()
                break
            # The stop is under way: later signals must not interrupt the cleanup (the receiver holds them
            # until the run is over).
            async for _ in signals:
                pass

    def cancel(self) -> None:
        if self.scope is not None:
            self.scope.cancel()


async def _run(config: Config, db_path: Path, live: bool, stop: _Stop) -> RunSummary | None:
    """The run, or None when a signal stopped it during start-up."""
    log = get_logger()
    async with anyio.create_task_group() as watchers:
        watchers.start_soon(stop.watch, log)
        try:
            with anyio.CancelScope() as stop.scope:
                return await _run_pipeline(config, db_path, live, stop)
            return None
        finally:
            watchers.cancel_scope.cancel()


async def _run_pipeline(config: Config, db_path: Path, live: bool, stop: _Stop) -> RunSummary | None:
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
                sandbox_workers=workers, rewrites_done=stats["rewrites_done"], stopping=stats["stopping"],
                waiting_for=tuple(waiting_line(outage) for outage in llm.outages()))
            view.update(snapshot)
            log.debug("progress", verified=stats["verified"], target=config.target, open=stats["open_items"],
                      **{f"llm_{k}": v for k, v in llm_stats.items()})

        status = "interrupted"
        # Signals are the pipeline's business from here on: a stop drains work in flight.
        stop.pipeline = pipeline
        with anyio.CancelScope() as run_scope:
            stop.scope = run_scope    # from here a stop (the grace's end, a second signal) ends only the pipeline
            try:
                await pipeline.run(on_tick=tick, tick_s=1.0 if live else 10.0)
            finally:
                view.close()
            status = "completed" if stop.signum is None and pipeline.summary.outage is None else "interrupted"
        with anyio.CancelScope(shield=True):
            summary = await pipeline.collect_summary()
            summary.llm = llm.statistics()
            await records.finish_run(status, summary.as_dict())
            log.info("run_finished", status=status, **summary.as_dict())
        structlog.contextvars.unbind_contextvars("run_id")
        return summary


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
