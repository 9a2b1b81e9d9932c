"""Helpers for tests that run kodcode's commands as a user would: in a subprocess."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def kodcode_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"kodcode.{module}", *args]


def kodcode_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "KODCODE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_kodcode(module: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run `python -m kodcode.<module> args` to completion."""
    return subprocess.run(kodcode_command(module, *args), capture_output=True, text=True, timeout=timeout,
                          env=kodcode_env())


def start_kodcode(module: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(kodcode_command(module, *args), text=True, env=kodcode_env(), **popen)


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the store directly, as `sqlite3` on the command line would."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie is dead for our purposes)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pids: set[int] | list[int], timeout_s: float = 20.0) -> list[int]:
    """Wait until none of `pids` is alive; returns those still alive at the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(pid_alive(pid) for pid in pids):
            return []
        time.sleep(0.05)
    return [pid for pid in pids if pid_alive(pid)]


def load_benchmark(name: str) -> ModuleType:
    """A script of benchmarks/ as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module
