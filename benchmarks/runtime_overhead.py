"""Orchestration overhead: items per second through all five agents with an instant LLM and an instant
sandbox, checkpointing on (SQLite file, WAL, group commit) versus off (in-memory store), in one run.

    .venv/bin/python benchmarks/runtime_overhead.py [--items 300] [--concurrency 16] [--repeats 3]

Target (issue 2): checkpointing costs under 20% of throughput.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kodcode.agents.context import AgentContext  # noqa: E402
from kodcode.config import load_config  # noqa: E402
from kodcode.prompts import PromptLibrary  # noqa: E402
from kodcode.llm.client import LLMClient, LLMRequest, LLMResponse  # noqa: E402
from kodcode.log import configure_logging, get_logger  # noqa: E402
from kodcode.runtime.pipeline import Pipeline  # noqa: E402
from kodcode.store.records import Records  # noqa: E402
from kodcode.runtime.scheduler import AdaptivePolicy  # noqa: E402
from kodcode.store.sqlite import Store  # noqa: E402
from kodcode.sandbox.base import Limits, TestOutcome, Verdict  # noqa: E402
from kodcode.agents.sources import SourceMix  # noqa: E402

SOLUTION = "```python\ndef add(a, b):\n    return a + b\n```"
TESTS = "```python\nfrom solution import add\n\ndef test_add():\n    assert add(1, 2) == 3\n```"
COMPLETION = ('<|Completion Begin|>\n```python\ndef add(a, b):\n    """Add two numbers a and b together.\n'
              '    >>> add(1, 2)\n    3\n    """\n```\n<|Completion End|>')


class InstantTransport:
    """Answers at once, like a model with infinite speed: what remains is kodcode's own work."""

    async def send(self, request: LLMRequest) -> LLMResponse:
        text = {"propose_prefill": f" add two numbers, variant {request.seed}", "solve": SOLUTION,
                "test_split": TESTS, "rewrite_complete": COMPLETION}[request.template]
        return LLMResponse((text,), ("stop",), 50, 50, 0.0, request.key)

    async def aclose(self) -> None:
        pass


class InstantSandbox:
    async def run(self, solution: str, tests: str, limits: Limits | None = None) -> Verdict:
        await anyio.sleep(0)
        return Verdict(True, None, (TestOutcome("test_add", "passed"),), 100.0, 0.0)

    async def aclose(self) -> None:
        pass


async def one_run(db: str, items: int, concurrency: int) -> tuple[float, int]:
    config = load_config(None, {"base_url": "http://127.0.0.1:9/v1", "target": items, "concurrency": concurrency,
                                "mode": "split", "max_attempts": 10})
    store = await Store.open(db)
    records = Records(store)
    await records.start_run({})
    llm = LLMClient({"default": InstantTransport()}, records, concurrency=concurrency)
    ctx = AgentContext(config, llm, records, InstantSandbox(), PromptLibrary(),
                       {r: "instant" for r in ("proposer", "solver", "tester", "rewriter")}, get_logger())
    pipeline = Pipeline(ctx, policy=AdaptivePolicy(), sources=SourceMix(config))
    started = time.perf_counter()
    await pipeline.run()
    elapsed = time.perf_counter() - started
    verified = await records.verified_count()
    commits = store.commits
    await store.aclose()
    return verified / elapsed, commits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        configure_logging(Path(tmp) / "events.jsonl", console_level="error")
        rates: dict[str, list[float]] = {"off (in-memory)": [], "on (SQLite WAL)": []}
        commits = 0
        for repeat in range(args.repeats):   # interleaved, so machine noise hits both alike
            rate, _ = anyio.run(one_run, ":memory:", args.items, args.concurrency, backend="asyncio")
            rates["off (in-memory)"].append(rate)
            rate, commits = anyio.run(one_run, f"{tmp}/run{repeat}.db", args.items, args.concurrency, backend="asyncio")
            rates["on (SQLite WAL)"].append(rate)
    off = statistics.median(rates["off (in-memory)"])
    on = statistics.median(rates["on (SQLite WAL)"])
    print(f"items={args.items} concurrency={args.concurrency} repeats={args.repeats} (median items/s)")
    for name, values in rates.items():
        print(f"  checkpointing {name:16s} {statistics.median(values):8.1f} verified items/s  "
              f"(runs: {', '.join(f'{v:.1f}' for v in values)})")
    print(f"  commits in the last on-disk run: {commits}")
    cost = 1 - on / off
    print(f"  ratio on/off = {on / off:.3f}  -> checkpointing costs {cost:.1%} "
          f"[{'PASS' if cost < 0.20 else 'FAIL'}: target < 20%]")


if __name__ == "__main__":
    main()
