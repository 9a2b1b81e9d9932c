"""Crash soak, longer than CI's: kill a run N times at seeded random moments, resume it each time, and
compare its export with an uninterrupted run's (run side by side, same seed, same scripted model).

    .venv/bin/python benchmarks/soak.py --kills 50 --seed 1 --target 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers import query  # noqa: E402
from test_soak import comparable, export_rows, soak, uninterrupted  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50, help="interruptions (default 50)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the kill moments (default 1)")
    parser.add_argument("--target", type=int, default=20, help="verified items to reach (default 20)")
    parser.add_argument("--term-share", type=float, default=0.2, help="share of SIGTERM among the kills (default 0.2)")
    parser.add_argument("--max-requests", type=int, default=8, help="kill after 1..N more LLM requests (default 8)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kodcode-soak-") as scratch:
        root = Path(scratch)
        started = time.monotonic()
        reference = uninterrupted(root / "reference" / "kc.db", args.target)
        try:
            result = soak(root / "soak" / "kc.db", target=args.target, kills=args.kills, seed=args.seed,
                          term_share=args.term_share, max_requests=args.max_requests,
                          on_progress=lambda line: print(f"  {line}", flush=True))
            reference.communicate(timeout=1800)
        finally:
            if reference.poll() is None:
                reference.kill()
            reference.server.stop()
        elapsed = time.monotonic() - started
        soaked = export_rows(root / "soak" / "kc.db", root / "soak.jsonl")
        clean = export_rows(root / "reference" / "kc.db", root / "reference.jsonl")
        same = comparable(soaked) == comparable(clean)
        ids = [row["question_id"] for row in soaked]
        calls = query(root / "soak" / "kc.db", "SELECT COUNT(*) FROM llm_calls")[0][0]
        print(f"kills: SIGKILL {result.kills}, SIGTERM {result.terms} (exit 143), finished before the kill point "
              f"{result.finished_early}; resumes {result.resumes}")
        print(f"export: {len(soaked)} rows interrupted vs {len(clean)} uninterrupted; identical: {same}; "
              f"duplicate question ids: {len(ids) - len(set(ids))}")
        print(f"llm calls stored: {calls}; answered more than once: {result.resent} "
              f"(ratio {result.resent / max(1, result.kills):.2f} per SIGKILL, at most 1 allowed); "
              f"re-sent after being stored: {len(result.resent_after_recorded)}")
        print(f"integrity_check: {sorted(set(result.integrity))}; tracebacks on stderr: {result.stderr_tracebacks}; "
              f"wall {elapsed:.0f} s")
        ok = same and not result.resent_after_recorded and result.resent <= result.kills \
            and set(result.integrity) == {"ok"} and len(ids) == len(set(ids))
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
