"""The Sandbox port on a Ray cluster: one worker actor per node keeps a warm local fork-server pool there.

The driver (the pipeline's process) picks the actor with the most free slots for each task, awaits the
ObjectRef on its own event loop (nothing blocks it), and waits for a slot when every one is taken, so a
saturated cluster slows producers down instead of queueing unbounded work. Every trusted decision is made
by the actor's `ForkServerSandbox`, outside the bubblewrap sandbox of that node, exactly as locally.

A task whose actor or node dies is run again on another actor (a replacement is started on the same node
while the node lives): a lost task is never a failed verdict. The actors are not detached, so Ray ends
them with the driver, also when the driver is SIGKILLed.

Needs the `ray` extra (`pip install 'kodcode[ray]'`) on the driver and on every node; `ray` is imported
only when a RaySandbox starts.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import itertools
import os
import secrets
import shutil
import tempfile
import time
from types import TracebackType
from typing import Any

import anyio
import structlog

from kodcode.errors import SandboxError
from kodcode.sandbox.base import Limits, Verdict
from kodcode.sandbox.forkserver import ForkServerSandbox

__all__ = ["ACTOR_PREFIX", "RaySandbox", "SandboxWorker", "ray_unavailable_reason"]

# Every actor's name starts with this, so operators (and tests) can find kodcode's actors on a cluster.
ACTOR_PREFIX = "kodcode-sandbox-"
_READY_TIMEOUT_S = 120.0       # an actor must start its fork servers within this (bwrap + pytest import)
_CLOSE_TIMEOUT_S = 5.0         # then actors are killed without waiting for their fork servers' clean exit
# Beyond a task's wall_s: the fork server's answer margin (15 s), a respawn of it (up to 60 s), and slack.
_STUCK_MARGIN_S = 120.0
_LOCAL_OBJECT_STORE_BYTES = 80 * 1024 * 1024   # verdicts are small; Ray's default takes 30% of the RAM
_log = structlog.get_logger("kodcode.sandbox.ray")


def ray_unavailable_reason() -> str | None:
    """None when `ray` can be imported here, else one line saying how to get it."""
    # find_spec, not import: importing ray fixes its loopback switch before _import_ray can set it.
    if importlib.util.find_spec("ray") is None:
        return "--sandbox ray needs Ray: pip install 'kodcode[ray]'"
    return None


def _is_loopback(address: str | None) -> bool:
    if address in (None, "local"):
        return True
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _import_ray(address: str | None) -> Any:
    # Ray rewrites a loopback address into the machine's routable IP, so a "local" cluster would listen
    # on the network and a 127.0.0.1 cluster would be dialled on an address it does not listen on. This
    # switch (read once, when ray is imported) keeps a single machine's Ray on loopback; a real cluster
    # address is not loopback and is left alone.
    if _is_loopback(address):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if address == "local":
        # A new local cluster turns on token auth and, with no token given, writes one to ~/.ray/auth_token,
        # which then switches every later `ray start` on this machine to token auth. A token of this run's
        # own, passed down in the environment, authenticates the private cluster without leaving one behind.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    try:
        import ray
    except ImportError as exc:
        raise SandboxError("--sandbox ray needs Ray: pip install 'kodcode[ray]'") from exc
    return ray


class SandboxWorker:
    """The actor on one node: a `ForkServerSandbox` of `workers` warm fork servers, run from Ray's loop."""

    def __init__(self, workers: int, isolation: bool, limits: Limits, recycle_after: int) -> None:
        self._sandbox = ForkServerSandbox(workers=workers, isolation=isolation, limits=limits,
                                          recycle_after=recycle_after)

    async def start(self) -> dict[str, Any]:
        """Warm every fork server; the driver counts this actor's slots only after this returns."""
        import ray

        await self._sandbox.start()
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "slots": self._sandbox.workers}

    async def run(self, solution: str, tests: str, limits: Limits | None) -> Verdict:
        return await self._sandbox.run(solution, tests, limits)

    async def aclose(self) -> None:
        await self._sandbox.aclose()


@dataclasses.dataclass(eq=False)
class _Worker:
    """The driver's view of one actor: its handle, node and free slots."""

    handle: Any
    name: str
    node_id: str
    slots: int
    free: int
    alive: bool = True
    last_used: int = 0       # ticket of the latest task given to it; ties in free slots go to the oldest


class RaySandbox:
    """The Sandbox port over sandbox worker actors on every Ray node with CPUs; `run` is safe from many tasks.

    `address`: a Ray cluster (`host:port`, `ray://...`), or "local" for a private one-machine cluster that
    lives as long as this object; None reads RAY_ADDRESS and falls back to "local". `workers`: fork servers
    per node (default: the node's CPUs + 1, as the local pool). The actor on a node reserves all that node's
    CPUs, so other Ray work is not scheduled onto cores the sandbox keeps busy.
    """

    def __init__(self, *, address: str | None = None, workers: int | None = None, isolation: bool = True,
                 limits: Limits | None = None, recycle_after: int = 500, max_attempts: int = 5) -> None:
        reason = ray_unavailable_reason()
        if reason is not None:
            raise SandboxError(reason)
        self.address = address or os.environ.get("RAY_ADDRESS") or "local"
        self.workers_per_node = workers
        self.isolation = isolation
        self.limits = limits or Limits()
        self.recycle_after = recycle_after
        self.max_attempts = max_attempts
        self.tasks_lost = 0               # tasks that were run again because their actor or node died
        self._ray: Any = None
        self._owns_connection = False
        self._token = secrets.token_hex(4)
        self._names = itertools.count()
        self._tickets = itertools.count(1)
        self._workers: list[_Worker] = []
        self._replacing: set[str] = set()    # nodes whose replacement actor is starting
        self._changed = anyio.Event()
        self._closed = False
        self._lost_errors: tuple[type[BaseException], ...] = ()
        self._actor_class: Any = None
        self._temp_dir: str | None = None

    @property
    def workers(self) -> int:
        """Slots on live actors: as many tasks as this sandbox runs at once (the local pool's `workers`)."""
        return sum(w.slots for w in self._workers if w.alive)

    async def __aenter__(self) -> RaySandbox:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect (or start a local cluster) and warm one actor on every node that has CPUs."""
        ray = self._ray = _import_ray(self.address)
        exceptions = ray.exceptions
        # Errors that mean the task's actor, worker process or node is gone: the task was lost, not judged.
        self._lost_errors = tuple(getattr(exceptions, name) for name in (
            "RayActorError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError",
            "ActorUnschedulableError") if hasattr(exceptions, name))
        if not ray.is_initialized():
            options: dict[str, Any] = {"log_to_driver": False, "logging_level": "warning"}
            if self.address == "local":
                # Its own session directory, removed at close: Ray keeps every session's logs otherwise.
                self._temp_dir = tempfile.mkdtemp(prefix="kodcode-ray-")
                options.update(address="local", include_dashboard=False, num_cpus=os.cpu_count() or 1,
                               object_store_memory=_LOCAL_OBJECT_STORE_BYTES, _temp_dir=self._temp_dir)
            else:
                options["address"] = self.address
            try:
                await anyio.to_thread.run_sync(lambda: ray.init(**options))
            except Exception as exc:
                if self._temp_dir is not None:
                    shutil.rmtree(self._temp_dir, ignore_errors=True)
                raise SandboxError(f"cannot connect to the Ray cluster at {self.address}: {exc}") from exc
            self._owns_connection = True
        nodes = await anyio.to_thread.run_sync(ray.nodes)
        cpus = {n["NodeID"]: int(n.get("Resources", {}).get("CPU", 0)) for n in nodes if n.get("Alive")}
        try:
            async with anyio.create_task_group() as tg:
                for node_id, count in cpus.items():
                    if count > 0:
                        tg.start_soon(self._add_worker, node_id, count)
        except* SandboxError as group:
            _log.warning("sandbox.ray.node_skipped", error=str(group.exceptions[0]))
        if not self._workers:
            await self.aclose()
            raise SandboxError(f"no Ray node at {self.address} could start a sandbox worker "
                               "(no node with free CPUs, or bubblewrap missing on them)")
        _log.info("sandbox.ray.ready", address=self.address, nodes=len(self._workers), slots=self.workers)

    async def _add_worker(self, node_id: str, cpus: int) -> None:
        """Start one actor pinned to `node_id` and count its slots once its fork servers are warm."""
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        name = f"{ACTOR_PREFIX}{self._token}-{next(self._names)}"
        if self._actor_class is None:
            self._actor_class = ray.remote(SandboxWorker)
        handle = self._actor_class.options(
            name=name, num_cpus=cpus, max_restarts=0, max_concurrency=1000,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(self.workers_per_node or cpus + 1, self.isolation, self.limits, self.recycle_after)
        try:
            with anyio.fail_after(_READY_TIMEOUT_S):
                info = await handle.start.remote()
        except BaseException as exc:
            _kill_quietly(ray, handle)
            if isinstance(exc, (anyio.get_cancelled_exc_class(), KeyboardInterrupt)):
                raise
            raise SandboxError(f"sandbox worker on node {node_id[:8]} did not start: {exc}") from exc
        if self._closed:
            _kill_quietly(ray, handle)
            return
        self._workers.append(_Worker(handle, name, info["node"], info["slots"], info["slots"]))
        self._notify()

    def _notify(self) -> None:
        # Wakes every caller waiting for a slot; each re-checks and the losers wait on a fresh event.
        self._changed.set()
        self._changed = anyio.Event()

    async def _acquire(self) -> _Worker:
        """The live actor with the most free slots, one slot taken; waits while the cluster is saturated."""
        while True:
            if self._closed:
                raise SandboxError("sandbox is closed")
            live = [w for w in self._workers if w.alive]
            # Most free slots first; among equals the least recently used, so light load spreads too.
            best = max(live, key=lambda w: (w.free, -w.last_used), default=None)
            if best is not None and best.free > 0:
                best.free -= 1
                best.last_used = next(self._tickets)
                return best
            if not live and not self._replacing:
                raise SandboxError("no sandbox worker is left on the Ray cluster")
            await self._changed.wait()

    def _release(self, worker: _Worker) -> None:
        worker.free += 1
        self._notify()

    async def run(self, solution: str, tests: str, limits: Limits | None = None) -> Verdict:
        started = time.monotonic()
        limits = limits or self.limits
        for _attempt in range(self.max_attempts):
            worker = await self._acquire()
            ref = worker.handle.run.remote(solution, tests, limits)
            verdict: Verdict | None = None
            lost = "stuck"
            try:
                # The task started on a free slot, so it ends within the fork server's own limits; past
                # this the actor or its node is stuck (e.g. cut off without being declared dead).
                with anyio.move_on_after(limits.wall_s + _STUCK_MARGIN_S):
                    verdict = await ref
            except self._lost_errors as exc:
                lost = type(exc).__name__
            except self._ray.exceptions.RayTaskError as exc:
                self._release(worker)
                # The actor's sandbox raised (e.g. a fork server that cannot start): the same SandboxError
                # a local run raises, not a verdict about the code.
                raise SandboxError(f"sandbox worker {worker.name} failed: {exc.cause or exc}") from exc
            except BaseException:
                # Cancelled (a deadline or shutdown): stop the remote run too, so it frees its fork server.
                self._release(worker)
                _cancel_quietly(self._ray, ref)
                raise
            self._release(worker)
            if verdict is None:
                _cancel_quietly(self._ray, ref)
                self.tasks_lost += 1
                _log.warning("sandbox.ray.task_lost", actor=worker.name, error=lost)
                await self._replace(worker)
                continue
            extra = {**verdict.extra, "ray_node": worker.node_id[:12], "sandbox_s": verdict.duration_s}
            return dataclasses.replace(verdict, duration_s=time.monotonic() - started, extra=extra)
        raise SandboxError(f"a sandbox task was lost {self.max_attempts} times on the Ray cluster")

    async def _replace(self, worker: _Worker) -> None:
        """Retire a dead actor and, while its node lives, start another there (once, however many saw it die)."""
        if not worker.alive:
            return
        worker.alive = False
        _kill_quietly(self._ray, worker.handle)
        if self._closed or worker.node_id in self._replacing:
            return
        self._replacing.add(worker.node_id)
        try:
            nodes = await anyio.to_thread.run_sync(self._ray.nodes)
            node = next((n for n in nodes if n["NodeID"] == worker.node_id and n.get("Alive")), None)
            if node is not None:
                await self._add_worker(worker.node_id, int(node.get("Resources", {}).get("CPU", 1)))
            else:
                _log.warning("sandbox.ray.node_gone", node=worker.node_id[:12])
        except SandboxError as exc:
            _log.warning("sandbox.ray.replace_failed", node=worker.node_id[:12], error=str(exc))
        finally:
            self._replacing.discard(worker.node_id)
            self._workers = [w for w in self._workers if w.alive]
            self._notify()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._notify()
        ray = self._ray
        if ray is None:
            return
        with anyio.CancelScope(shield=True):
            # A clean close lets each node's bwrap reap its sandbox; killing the actor is the fallback.
            refs = [w.handle.aclose.remote() for w in self._workers if w.alive]
            if refs:
                await anyio.to_thread.run_sync(_wait_quietly, ray, refs, _CLOSE_TIMEOUT_S)
            for worker in self._workers:
                _kill_quietly(ray, worker.handle)
            self._workers = []
            if self._owns_connection:
                await anyio.to_thread.run_sync(ray.shutdown)
            if self._temp_dir is not None:
                shutil.rmtree(self._temp_dir, ignore_errors=True)


def _kill_quietly(ray: Any, handle: Any) -> None:
    try:
        ray.kill(handle)
    except Exception:  # noqa: BLE001 - an actor that never started or already died needs no kill
        pass


def _cancel_quietly(ray: Any, ref: Any) -> None:
    try:
        ray.cancel(ref)
    except Exception:  # noqa: BLE001 - the run is abandoned either way; its actor may be gone already
        pass


def _wait_quietly(ray: Any, refs: list[Any], timeout_s: float) -> None:
    ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
