"""LLM traffic through kodcode's LLM layer (LLMClient + EndpointPool) against a simulated fleet.

    .venv/bin/python benchmarks/llm_fleet.py [--service 0.5] [--levels 1,8,64,256,512] [--measure 6]

The simulated servers run in a separate process (so their CPU is not charged to the client) as a light
asyncio HTTP/1.1 server speaking enough of the OpenAI protocol for the real openai client:
  - "reject": runs `capacity` requests at once and answers 429 + Retry-After: 1 beyond that;
  - "queue":  runs `capacity` at once and queues the rest like vLLM, never 429, with /metrics gauges.
Every request takes `service` seconds once running. Mixed fleet: reject(16) + queue(16) + queue(32).

Measured per concurrency level (a fresh pool each, `--warmup` s to adapt, then `--measure` s):
throughput against the ideal min(c, total capacity) / service, client-side p50/p99 latency, the time
requests spend at the queueing servers (send to answer), 429s received, and the client process's CPU
seconds per 1,000 requests. Then 1,000 requests in flight: once over HTTP (the whole client: pool,
LLMClient, openai SDK, httpx) and once with an in-process transport (the pool's and LLMClient's own
bookkeeping only).

Targets: >= 90% of ideal throughput on the mixed fleet (at concurrency >= 2x its capacity, where the
fleet can be kept full); p99 time at the queueing servers within 2x service once adapted; the
orchestrator under 25% of one core at 1,000 requests in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kodcode.errors import LLMError  # noqa: E402
from kodcode.llm.fake import ScriptedTransport  # noqa: E402
from kodcode.llm.pool import EndpointPool, EndpointSpec  # noqa: E402
from kodcode.llm.client import LLMClient, LLMRequest  # noqa: E402

MIXED_FLEET = [("reject", 16), ("queue", 16), ("queue", 32)]

# ---- the simulated servers (run in a child process) ---------------------------------------------------


def _reply_body(model: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-sim", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "def f():\n    return 1\n"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 100, "total_tokens": 150},
    }).encode()


class SimServer:
    def __init__(self, mode: str, capacity: int, service_s: float) -> None:
        self.mode, self.capacity, self.service_s = mode, capacity, service_s
        self.running = 0
        self.waiting = 0
        self.slots = asyncio.Semaphore(capacity)
        self.body = _reply_body("sim-model")
        self.times: list[float] = []     # arrival to answer, for requests answered 200
        self.rejected = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, _, rest = head.partition(b"\r\n")
                method, path, _ = request_line.decode().split(" ", 2)
                length = 0
                for line in rest.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                status, body, extra = await self.route(method, path.split("?", 1)[0])
                writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
                             % (status, len(body), extra) + body)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def route(self, method: str, path: str) -> tuple[int, bytes, bytes]:
        if method == "POST":
            if self.mode == "reject" and self.running >= self.capacity:
                self.rejected += 1
                return 429, b'{"error":{"message":"over capacity","type":"rate_limit_error","code":429}}', \
                    b"Retry-After: 1\r\n"
            arrived = time.monotonic()
            self.waiting += 1
            async with self.slots:
                self.waiting -= 1
                self.running += 1
                try:
                    await asyncio.sleep(self.service_s)
                finally:
                    self.running -= 1
            self.times.append(time.monotonic() - arrived)
            return 200, self.body, b""
        if path == "/metrics" and self.mode == "queue":
            text = (f'vllm:num_requests_running{{model_name="sim-model"}} {float(self.running)}\n'
                    f'vllm:num_requests_waiting{{model_name="sim-model"}} {float(self.waiting)}\n')
            return 200, text.encode(), b""
        if path == "/stats":    # the server's own view of the time requests spent with it; resets
            times, self.times = sorted(self.times), []
            rejected, self.rejected = self.rejected, 0
            p99 = times[min(len(times) - 1, int(0.99 * len(times)))] if times else None
            return 200, json.dumps({"answered": len(times), "p99": p99, "rejected": rejected}).encode(), b""
        if path in ("/v1/models", "/health"):
            return 200, b'{"object":"list","data":[{"id":"sim-model","object":"model"}]}', b""
        return 404, b'{"error":{"message":"no route"}}', b""


async def _serve(specs: list[dict[str, Any]]) -> None:
    ports = []
    for spec in specs:
        server = SimServer(spec["mode"], spec["capacity"], spec["service_s"])
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, backlog=4096)
        ports.append(listener.sockets[0].getsockname()[1])
    print(json.dumps(ports), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)   # until the parent closes stdin


class Fleet:
    """Simulated servers in a child process; .urls once started."""

    def __init__(self, specs: list[tuple[str, int]], service_s: float) -> None:
        payload = json.dumps([{"mode": m, "capacity": c, "service_s": service_s} for m, c in specs])
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", payload], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ports = json.loads(self.proc.stdout.readline())
        self.urls = [f"http://127.0.0.1:{port}/v1" for port in ports]
        self.specs = specs

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


# ---- the client side -------------------------------------------------------------------------------------


def _request(index: int) -> LLMRequest:
    return LLMRequest(role="solver", model="sim-model", max_tokens=256,
                      messages=({"role": "user", "content": f"Write a python function number {index}."},))


async def _server_stats(pool: EndpointPool) -> dict[str, dict[str, Any]]:
    import httpx

    stats = {}
    async with httpx.AsyncClient(timeout=30) as http:
        for status in pool.statuses():
            if status.base_url.startswith("http://127.0.0.1"):
                stats[status.base_url] = (await http.get(status.base_url[: -len("/v1")] + "/stats")).json()
    return stats


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(client: LLMClient, pool: EndpointPool, concurrency: int, warmup_s: float,
                measure_s: float) -> dict[str, Any]:
    counter = iter(range(10**9))
    latencies: list[float] = []
    done = 0
    errors: list[int] = []
    measuring = False
    stop_at = time.monotonic() + warmup_s + measure_s

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            started = time.monotonic()
            try:
                await client.complete(_request(next(counter)))
            except LLMError:
                errors.append(1)
                continue
            if measuring:
                latencies.append(time.monotonic() - started)
                done += 1

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup_s)
    before = {s.base_url: (s.successes, s.rate_limited) for s in pool.statuses()}
    await _server_stats(pool)                      # resets the servers' own latency logs
    cpu0, wall0 = time.process_time(), time.monotonic()
    measuring = True
    await asyncio.sleep(measure_s)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    measuring = False
    at_servers = await _server_stats(pool)
    server_time: dict[str, list[float]] = {}
    rate_limited = 0
    for status in pool.statuses():
        seen, limited = before[status.base_url]
        fresh = status.successes - seen   # the deque keeps the latest 2048: the measured ones are its tail
        server_time[status.base_url] = list(status.latencies_s)[-fresh:] if fresh > 0 else []
        rate_limited += status.rate_limited - limited
    await asyncio.gather(*tasks, return_exceptions=True)
    if errors:
        print(f"  ({len(errors)} requests failed after LLMClient's retries)")
    return {"done": done, "wall": wall, "cpu": cpu, "latencies": latencies, "server_time": server_time,
            "at_servers": at_servers,
            "rate_limited": rate_limited, "limits": {s.base_url: s.limit for s in pool.statuses()}}


async def fleet_sweep(fleet: Fleet, service_s: float, levels: list[int], warmup_s: float,
                      measure_s: float) -> list[dict[str, Any]]:
    rows = []
    capacity = sum(c for _, c in fleet.specs)
    queue_urls = [url.rstrip("/") for url, (mode, _) in zip(fleet.urls, fleet.specs) if mode == "queue"]
    for level, oracle in [(level, False) for level in levels] + [(max(levels), True)]:
        if oracle:
            # Control: each server's true capacity as a fixed limit, no adaptation. Same machine, same run,
            # so adaptive / oracle isolates what adaptation costs from what a busy client costs.
            specs = [EndpointSpec(url, kind="openai", max_concurrency=cap) for url, (_, cap) in zip(fleet.urls, fleet.specs)]
            pool = EndpointPool(specs, timeout_s=60, initial_concurrency=max(cap for _, cap in fleet.specs))
        else:
            specs = [EndpointSpec(url, kind="auto") for url in fleet.urls]
            pool = EndpointPool(specs, timeout_s=60)
        async with pool:
            client = LLMClient({"default": pool}, None, concurrency=level, backoff_base_s=0.05, backoff_cap_s=1.0)
            result = await drive(client, pool, level, warmup_s, measure_s)
            await client.aclose()
        ideal = min(level, capacity) / service_s
        throughput = result["done"] / result["wall"]
        queue_times = [t for url in queue_urls for t in result["server_time"][url]]
        queue_p99_server = max((result["at_servers"][url]["p99"] or 0.0 for url in queue_urls), default=float("nan"))
        rows.append({
            "oracle": oracle, "concurrency": level, "throughput": throughput, "ideal": ideal, "ratio": throughput / ideal,
            "p50": _pct(result["latencies"], 0.5), "p99": _pct(result["latencies"], 0.99),
            "queue_p99": queue_p99_server, "queue_p99_client": _pct(queue_times, 0.99),
            "rate_limited": result["rate_limited"],
            "cpu_per_1k": 1000 * result["cpu"] / max(1, result["done"]), "cores": result["cpu"] / result["wall"],
            "limits": "/".join(f"{result['limits'][u.rstrip('/')]:.0f}" for u in fleet.urls),
        })
        print(f"  {'oracle ' if oracle else ''}c={level:>4}: {throughput:7.1f} req/s of {ideal:6.1f} ideal ({throughput / ideal:5.1%}), "
              f"p50 {rows[-1]['p50']:.3f}s p99 {rows[-1]['p99']:.3f}s, queueing servers p99 {rows[-1]['queue_p99']:.3f}s at the server / "
              f"{rows[-1]['queue_p99_client']:.3f}s seen by the client, "
              f"429s {result['rate_limited']}, limits {rows[-1]['limits']}, "
              f"client CPU {rows[-1]['cpu_per_1k']:.2f} s/1k req", flush=True)
    return rows


async def thousand_in_flight(url: str | None, service_s: float, warmup_s: float, measure_s: float) -> dict[str, Any]:
    if url is None:
        specs = [EndpointSpec(f"http://sim-{i}/v1", kind="openai", tpm=10**9, rpm=10**7) for i in range(4)]
        pool = EndpointPool(specs, initial_concurrency=250, transport_factory=lambda spec, key: ScriptedTransport(
            lambda request: "ok", delay_s=service_s, usage=(50, 100)))
    else:
        pool = EndpointPool([EndpointSpec(url, kind="auto")], initial_concurrency=1000, timeout_s=60)
    async with pool:
        client = LLMClient({"default": pool}, None, concurrency=1000)
        result = await drive(client, pool, 1000, warmup_s, measure_s)
        await client.aclose()
    in_flight = result["done"] / result["wall"] * statistics.median(result["latencies"])
    return {"throughput": result["done"] / result["wall"], "cpu_per_1k": 1000 * result["cpu"] / max(1, result["done"]),
            "cores": result["cpu"] / result["wall"], "in_flight": in_flight}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--service", type=float, default=0.5, help="seconds per request at a server (default 0.5)")
    parser.add_argument("--levels", default="1,8,64,256,512", help="client concurrency levels")
    parser.add_argument("--warmup", type=float, help="seconds to adapt before measuring (default max(4, 8 x service))")
    parser.add_argument("--measure", type=float, help="seconds measured per level (default max(6, 12 x service))")
    parser.add_argument("--thousand-service", type=float, default=2.0,
                        help="service time for the 1,000-in-flight runs (default 2.0 s, so 500 req/s)")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(json.loads(args.serve)))
        return 0
    levels = [int(part) for part in args.levels.split(",")]
    args.warmup = args.warmup if args.warmup is not None else max(4.0, 8 * args.service)
    args.measure = args.measure if args.measure is not None else max(6.0, 12 * args.service)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other work on the machine slows the client)")
    print(f"mixed fleet {MIXED_FLEET} (mode, capacity), service {args.service}s, "
          f"ideal {sum(c for _, c in MIXED_FLEET) / args.service:.0f} req/s at full load; {os.cpu_count()} CPUs")
    fleet = Fleet(MIXED_FLEET, args.service)
    try:
        rows = asyncio.run(fleet_sweep(fleet, args.service, levels, args.warmup, args.measure))
    finally:
        fleet.close()
    print("\n1,000 requests in flight:")
    big = Fleet([("queue", 1000)], args.thousand_service)
    try:
        http = asyncio.run(thousand_in_flight(big.urls[0], args.thousand_service, args.warmup, args.measure))
    finally:
        big.close()
    local = asyncio.run(thousand_in_flight(None, args.thousand_service, args.warmup, args.measure))
    for name, row in (("whole client over HTTP (pool + LLMClient + openai SDK + httpx)", http),
                      ("orchestrator only (pool + LLMClient, in-process transport)", local)):
        print(f"  {name}: {row['throughput']:.0f} req/s, ~{row['in_flight']:.0f} in flight, "
              f"{row['cpu_per_1k']:.3f} CPU s per 1k requests = {row['cores']:.1%} of one core")

    oracle = next(row for row in rows if row["oracle"])
    rows = [row for row in rows if not row["oracle"]]
    adaptive_top = next(row for row in rows if row["concurrency"] == oracle["concurrency"])
    print(f"adaptive / oracle (true capacities as fixed limits) at c={oracle['concurrency']}: "
          f"{adaptive_top['throughput'] / oracle['throughput']:.1%} "
          f"(oracle reached {oracle['ratio']:.1%} of ideal on this machine)")
    full = [row for row in rows if row["concurrency"] >= 2 * sum(c for _, c in MIXED_FLEET)]
    worst_ratio = min((row["ratio"] for row in full), default=float("nan"))
    worst_queue_p99 = max((row["queue_p99"] for row in full), default=float("nan"))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("\nTargets:")
    print(f"  {'PASS' if worst_ratio >= 0.9 else 'FAIL'}: throughput >= 90% of ideal on the mixed fleet at "
          f"concurrency >= 2x capacity: worst {worst_ratio:.1%}")
    print(f"  {'PASS' if worst_queue_p99 <= 2 * args.service else 'FAIL'}: p99 at the queueing servers within "
          f"2x service ({2 * args.service:.2f}s) once adapted: worst {worst_queue_p99:.3f}s, "
          f"measured by the servers (arrival to answer)")
    print(f"  {'PASS' if local['cores'] < 0.25 else 'FAIL'}: orchestrator under 25% of one core at 1,000 in flight: "
          f"{local['cores']:.1%} (whole client over HTTP: {http['cores']:.1%}, "
          f"{'within' if http['cores'] < 0.25 else 'over'} the same bound)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
