"""Ctrl-C at any moment is the same clean stop: during start-up (imports, the endpoint check, opening the
store, starting the sandbox) as later in the run. One `kodcode:` line naming the signal, exit 130, no
traceback, nothing left running (the run is started under the subreaper launcher of test_hygiene, which
reports every process it left behind) and a sound store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import kodcode_command, kodcode_env, query, run_kodcode
from scripted_openai import ScriptedOpenAIServer
from test_hygiene import LAUNCHER
from test_soak import RUN_ARGS, start_server


class SlowModels(ScriptedOpenAIServer):
    """/v1/models answers only after `delay_s`, like a server still loading its model: a long start-up."""

    delay_s = 30.0

    def _dispatch(self, handler: Any, method: str, path: str, outcome: Any) -> None:
        if method == "GET" and path == "/v1/models":
            self._stopping.wait(self.delay_s)
        super()._dispatch(handler, method, path, outcome)


def interrupt(args: list[str], moments: list[float]) -> tuple[int, list[str], str]:
    """Run kodcode under the launcher, send SIGINT at each moment (seconds after start); return the exit
    code, the processes it left behind, and its stderr."""
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, *kodcode_command("run", *args)], env=kodcode_env(),
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert launcher.stdout is not None
        pid = int(launcher.stdout.readline())
        started = time.monotonic()
        for moment in moments:
            time.sleep(max(0.0, started + moment - time.monotonic()))
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                break
        out, err = launcher.communicate(timeout=180)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    report = json.loads(out.strip().splitlines()[-1])
    return report["rc"], report["left"], err


def assert_clean_stop(rc: int, left: list[str], err: str) -> None:
    assert rc == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert left == [], left
    ours = [line for line in err.splitlines() if line.startswith("kodcode:")]
    assert len(ours) == 1 and "SIGINT" in ours[0], ours


@pytest.mark.parametrize("moment", [1.5, 6.0], ids=["1.5s", "6s"])
def test_sigint_during_start_up_is_a_clean_stop(tmp_path: Path, moment: float) -> None:
    server = SlowModels(lambda request: "unused").start()
    db = tmp_path / "kc.db"
    try:
        rc, left, err = interrupt(["--base-url", server.base_url, "--db", str(db), *RUN_ARGS], [moment])
    finally:
        server.stop()
    assert_clean_stop(rc, left, err)
    assert not db.exists() or query(db, "PRAGMA integrity_check")[0][0] == "ok"


@pytest.mark.parametrize("moments", [[1.5, 1.7], [3.5, 3.7]], ids=["during-imports", "during-resume"])
def test_sigint_twice_on_an_existing_store_is_a_clean_stop(tmp_path: Path, moments: list[float]) -> None:
    _coder, server = start_server()
    db = tmp_path / "kc.db"
    try:
        first = run_kodcode("run", "--base-url", server.base_url, "--db", str(db), "--target", "1", *RUN_ARGS)
        assert first.returncode == 0, first.stderr
        verified = set(query(db, "SELECT item_id, question FROM items WHERE state='verified'"))
        rc, left, err = interrupt(["--base-url", server.base_url, "--db", str(db), "--target", "5", *RUN_ARGS],
                                  moments)
    finally:
        server.stop()
    assert_clean_stop(rc, left, err)
    assert query(db, "PRAGMA integrity_check")[0][0] == "ok"
    assert verified <= set(query(db, "SELECT item_id, question FROM items WHERE state='verified'"))
