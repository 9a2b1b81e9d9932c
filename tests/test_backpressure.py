"""Backpressure: with a slow Judge, the work in flight stays bounded instead of piling up."""

from __future__ import annotations

from pathlib import Path

import anyio

from kodcode.agents.context import AgentContext
from kodcode.config import load_config
from kodcode.prompts import PromptLibrary
from kodcode.llm.client import LLMClient, OpenAITransport
from kodcode.log import configure_logging, get_logger
from kodcode.runtime.pipeline import Pipeline
from kodcode.store.records import Records
from kodcode.runtime.scheduler import AdaptivePolicy
from kodcode.store.sqlite import Store
from kodcode.sandbox.base import Limits, TestOutcome, Verdict
from kodcode.agents.sources import SourceMix


class SlowSandbox:
    """A sandbox port that takes its time and passes everything: the Judge becomes the bottleneck."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.running = 0
        self.peak = 0

    async def run(self, solution: str, tests: str, limits: Limits | None = None) -> Verdict:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await anyio.sleep(self.seconds)
        finally:
            self.running -= 1
        return Verdict(True, None, (TestOutcome("test_x", "passed"),), 100.0, self.seconds)

    async def aclose(self) -> None:
        pass


async def test_slow_judge_bounds_items_in_flight(fake_coder_server, tmp_path: Path) -> None:
    _coder, server = fake_coder_server()
    concurrency = 4
    config = load_config(None, {"base_url": server.base_url, "target": 12, "concurrency": concurrency,
                                "mode": "split", "styles": [], "gates": {"mutation": False}})
    configure_logging(tmp_path / "events.jsonl", console_level="warning")
    store = await Store.open(tmp_path / "kc.db")
    records = Records(store)
    await records.start_run({})
    llm = LLMClient({"default": OpenAITransport(server.base_url)}, records, concurrency=concurrency)
    sandbox = SlowSandbox(0.15)
    ctx = AgentContext(config, llm, records, sandbox, PromptLibrary(), {r: "scripted-model" for r in
                       ("proposer", "solver", "tester", "rewriter")}, get_logger())
    pipeline = Pipeline(ctx, policy=AdaptivePolicy(), sources=SourceMix(config))
    peaks = {"open": 0, "in_flight": 0, "judge_queue": 0, "tester_queue": 0}

    async def watch() -> None:
        while True:
            stats = pipeline.statistics()
            peaks["open"] = max(peaks["open"], stats["open_items"])
            peaks["in_flight"] = max(peaks["in_flight"], stats["in_flight"])
            peaks["judge_queue"] = max(peaks["judge_queue"], stats["actors"]["judge"]["queued"])
            peaks["tester_queue"] = max(peaks["tester_queue"], stats["actors"]["tester"]["queued"])
            await anyio.sleep(0.005)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            with anyio.fail_after(120):
                await pipeline.run()
            tg.cancel_scope.cancel()
        assert await records.verified_count() >= 12
        # The supply never opens more questions than the cap, however fast the LLM answers...
        assert peaks["open"] <= pipeline.max_open
        # ...and the slow Judge's mailbox fills to its capacity and no further.
        assert peaks["judge_queue"] <= concurrency
        assert peaks["judge_queue"] >= 1, "the judge was the bottleneck, so work queued in front of it"
        # Messages in flight are bounded by open items (one attempt each) plus proposals in the mailbox.
        assert peaks["in_flight"] <= pipeline.max_open + concurrency
        assert sandbox.peak <= max(2, concurrency // 2)
    finally:
        await llm.aclose()
        await store.aclose()
