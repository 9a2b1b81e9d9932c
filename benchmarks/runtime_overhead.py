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
from contextlib import AsyncExitStack
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kodcode.app.build import assemble  # noqa: E402
from kodcode.config import load_config  # noqa: E402
from kodcode.llm.client import LLMRequest  # noqa: E402
from kodcode.llm.fake import ScriptedTransport  # noqa: E402
from kodcode.log import configure_logging  # noqa: E402
from kodcode.sandbox.fake import FakeSandbox  # noqa: E402

SOLUTION = "```python\ndef add(a, b):\n    return a + b\n```"
TESTS = "```python\nfrom solution import add\n\ndef test_add():\n    assert add(1, 2) == 3\n```"
COMPLETION = ('<|Completion Begin|>\n```python\ndef add(a, b):\n    """Add two numbers a and b together.\n'
              '    >>> add(1, 2)\n    3\n    """\n```\n<|Completion End|>')


def instant_answer(request: LLMRequest) -> str:
    """Answers at once, like a model with infinite speed: what remains is kodcode's own work."""
    return {"propose_prefill": f" add two numbers, variant {request.seed}", "solve": SOLUTION,
            "test_split": TESTS, "rewrite_complete": COMPLETION}[request.template]


async def one_run(db: str, items: int, concurrency: int) -> tuple[float, int]:
    config = load_config(None, {"base_url": "http://127.0.0.1:9/v1", "target": items, "concurrency": concurrency,
                                "mode": "split", "max_attempts": 10,
                                "gates": {"mutation": False}})   # the fake sandbox passes every mutant too
    async with AsyncExitStack() as stack:
        # The composition root with fakes at the I/O boundary; no question gate: the synthetic questions
        # are near-duplicates of each other on purpose.
        parts = await assemble(config, db, stack, transport=ScriptedTransport(instant_answer), sandbox=FakeSandbox())
        await parts.records.start_run({})
        pipeline = await parts.pipeline(question_gate=False)
        started = time.perf_counter()
        await pipeline.run()
        elapsed = time.perf_counter() - started
        verified = (await parts.records.counts())["verified"]
        return verified / elapsed, parts.store.commits


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
