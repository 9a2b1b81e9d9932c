"""Running untrusted solution + pytest pairs: isolated (bubblewrap), fast (warm fork servers), and judged on the trusted side."""

from __future__ import annotations

from kodcode.sandbox.base import Limits, Sandbox, TestOutcome, Verdict
from kodcode.sandbox.bwrap import bwrap_available, bwrap_unavailable_reason
from kodcode.sandbox.forkserver import ForkServerSandbox
from kodcode.sandbox.ray_cluster import RaySandbox

__all__ = [
    "ForkServerSandbox",
    "Limits",
    "RaySandbox",
    "Sandbox",
    "TestOutcome",
    "Verdict",
    "bwrap_available",
    "bwrap_unavailable_reason",
    "open_sandbox",
]


def open_sandbox(*, workers: int | None = None, isolation: bool = True, limits: Limits | None = None,
                 recycle_after: int = 500, backend: str = "local",
                 ray_address: str | None = None) -> ForkServerSandbox | RaySandbox:
    """A pool of `workers` fork servers (default: one per CPU, plus one); use as `async with open_sandbox() as sb:`.

    Raises SandboxError when bubblewrap cannot run here, unless `isolation=False` is passed explicitly
    (then untrusted code runs unisolated and a warning is logged). `backend="ray"` runs the same pool on
    every node of a Ray cluster instead (`workers` per node; `ray_address`: see RaySandbox).
    """
    if backend == "ray":
        return RaySandbox(address=ray_address, workers=workers, isolation=isolation, limits=limits,
                          recycle_after=recycle_after)
    return ForkServerSandbox(workers=workers, isolation=isolation, limits=limits, recycle_after=recycle_after)
