"""Backpressure: with a slow Judge, the work in flight stays bounded instead of piling up."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import anyio

from kodcode.app.build import assemble
from kodcode.config import load_config
from kodcode.llm.client import OpenAITransport
from kodcode.log import configure_logging
from kodcode.sandbox.fake import FakeSandbox


async def test_slow_judge_bounds_items_in_flight(fake_coder_server, tmp_path: Path) -> None:
    _coder, server = fake_coder_server()
    concurrency = 4
    config = load_config(None, {"base_url": server.base_url, "target": 12, "concurrency": concurrency,
                                "mode": "split", "styles": [], "gates": {"mutation": False}})
    configure_logging(tmp_path / "events.jsonl", console_level="warning")
    sandbox = FakeSandbox(delay_s=0.15)          # passes everything, slowly: the Judge becomes the bottleneck
    async with AsyncExitStack() as stack:
        parts = await assemble(config, tmp_path / "kc.db", stack, transport=OpenAITransport(server.base_url),
                               sandbox=sandbox)
        await parts.records.start_run({})
        pipeline = await parts.pipeline()
        peaks = {"open": 0, "queued": 0, "judge_queue": 0, "tester_queue": 0}

        async def watch() -> None:
            while True:
                stats = pipeline.statistics()
                peaks["open"] = max(peaks["open"], stats["open_items"])
                peaks["queued"] = max(peaks["queued"], sum(a["queued"] + a["busy"] for a in stats["actors"].values()))
                peaks["judge_queue"] = max(peaks["judge_queue"], stats["actors"]["judge"]["queued"])
                peaks["tester_queue"] = max(peaks["tester_queue"], stats["actors"]["tester"]["queued"])
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            with anyio.fail_after(120):
                await pipeline.run()
            tg.cancel_scope.cancel()
        assert (await parts.records.counts())["verified"] >= 12
        # The supply never opens more questions than the cap, however fast the LLM answers...
        assert peaks["open"] <= pipeline.max_open
        # ...and the slow Judge's mailbox fills to its capacity and no further.
        assert peaks["judge_queue"] <= concurrency
        assert peaks["judge_queue"] >= 1, "the judge was the bottleneck, so work queued in front of it"
        # Messages queued or being handled are bounded by open items (one attempt each) plus proposals.
        assert peaks["queued"] <= pipeline.max_open + concurrency
        assert sandbox.peak <= max(2, concurrency // 2)
