"""A run through a long endpoint outage (issue 21): the scripted model server stops accepting connections
after some requests, stays down for --down seconds, and comes back on the same port. The run must pause,
go on by itself, and end with the verified set of a run without the outage (run side by side, same seed).
The default retry budget and probe backoff are kodcode's own (no test config).

    .venv/bin/python benchmarks/outage.py --down 300 --target 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fake_coder import FakeCoder  # noqa: E402
from helpers import query, start_kodcode  # noqa: E402
from scripted_openai import ScriptedOpenAIServer  # noqa: E402
from test_fleet import SamePortServer  # noqa: E402
from test_outage import OutageAfter  # noqa: E402
from test_soak import RUN_ARGS, SCRIPT, IdempotentCoder, comparable, export_rows  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--down", type=float, default=300.0, help="seconds the endpoint refuses connections (default 300)")
    parser.add_argument("--after", type=int, default=6, help="LLM requests before the outage starts (default 6)")
    parser.add_argument("--target", type=int, default=4, help="verified items to reach (default 4)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kodcode-outage-") as scratch:
        root = Path(scratch)
        clean = ScriptedOpenAIServer(IdempotentCoder(FakeCoder(**SCRIPT))).start()
        coder = IdempotentCoder(FakeCoder(**SCRIPT))
        flaky = SamePortServer(coder).start()
        outage = OutageAfter(coder, flaky, after=args.after, down_s=args.down)
        dbs = {"clean": root / "clean" / "kc.db", "outage": root / "outage" / "kc.db"}
        started = time.monotonic()
        try:
            processes = {name: start_kodcode("run", "--base-url", server.base_url, "--db", str(dbs[name]),
                                             "--target", str(args.target), *RUN_ARGS,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                         for name, server in (("clean", clean), ("outage", flaky))}
            outputs = {name: process.communicate(timeout=args.down + 900) for name, process in processes.items()}
        finally:
            outage.end.set()
            clean.stop()
            flaky.stop()
        wall = time.monotonic() - started
        codes = {name: process.returncode for name, process in processes.items()}
        same = codes == {"clean": 0, "outage": 0} and \
            comparable(export_rows(dbs["outage"], root / "outage.jsonl")) == \
            comparable(export_rows(dbs["clean"], root / "clean.jsonl"))
        events = [json.loads(line) for line in (dbs["outage"].parent / "events.jsonl").read_text().splitlines()]
        pauses = [e for e in events if e["event"] in ("endpoint_down", "endpoint_waiting", "endpoint_recovered")]
        failed = query(dbs["outage"], "SELECT COUNT(*) FROM items WHERE state='failed'")[0][0]
        clean_failed = query(dbs["clean"], "SELECT COUNT(*) FROM items WHERE state='failed'")[0][0]
        verified = query(dbs["outage"], "SELECT item_id, question FROM items WHERE state='verified' ORDER BY seq")
        print(f"outage of {args.down:.0f} s after {args.after} requests; wall {wall:.0f} s; exit codes {codes}")
        for event in pauses:
            print(f"  {event['event']}: {event.get('message', '')}")
        print(f"verified (outage run): {[item for item, _ in verified]}")
        print(f"failed items: outage run {failed}, clean run {clean_failed}")
        print(f"progress lines naming the outage: "
              f"{sum('waiting for endpoint' in line for line in outputs['outage'][0].splitlines())}")
        print("same verified set and export as the run without the outage" if same else "DIFFERENT from the clean run")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
