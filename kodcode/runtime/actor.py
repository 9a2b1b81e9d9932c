"""Actors: a mailbox plus N worker tasks, supervised.

A bounded mailbox makes a slow actor slow down the ones that feed it (backpressure). A handler that
raises is logged with the item it was working on and retried a bounded number of times; then the
item is handed to `on_failure` (which records the reason) and the actor goes on serving.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from kodcode.errors import KodcodeError
from kodcode.runtime.scheduler import AttemptQueue

__all__ = ["Actor", "ActorStats", "FifoMailbox", "Mailbox", "PriorityMailbox", "StopHandling"]

T = TypeVar("T")


class Mailbox(Protocol[T]):
    async def put(self, message: T, priority: float = 0.0) -> None: ...

    async def get(self) -> T: ...          # raises anyio.EndOfStream once closed and drained

    def close(self) -> None: ...

    def qsize(self) -> int: ...


class FifoMailbox(Generic[T]):
    """Bounded FIFO: `put` waits while the mailbox is full."""

    def __init__(self, capacity: int) -> None:
        self._send: MemoryObjectSendStream[T]
        self._receive: MemoryObjectReceiveStream[T]
        self._send, self._receive = anyio.create_memory_object_stream[T](capacity)

    async def put(self, message: T, priority: float = 0.0) -> None:
        await self._send.send(message)

    async def get(self) -> T:
        try:
            return await self._receive.receive()
        except anyio.ClosedResourceError:
            raise anyio.EndOfStream from None

    def close(self) -> None:
        self._send.close()

    def qsize(self) -> int:
        return self._receive.statistics().current_buffer_used


class PriorityMailbox(Generic[T]):
    """Unbounded, highest priority first, FIFO among equals (the scheduler's AttemptQueue). Used for the
    attempt queue: its producer is the Judge's decision path, which must never block on the Solver
    (that would close a cycle)."""

    def __init__(self) -> None:
        self._queue: AttemptQueue[T] = AttemptQueue()

    async def put(self, message: T, priority: float = 0.0) -> None:
        self._queue.put_nowait(priority, message)

    async def get(self) -> T:
        return await self._queue.get()

    def close(self) -> None:
        self._queue.close()

    def drain(self) -> list[T]:
        """Take every waiting message out (they stay committed in the store for the next run)."""
        taken: list[T] = []
        while self._queue.qsize():
            taken.append(self._queue.get_nowait())
        return taken

    def qsize(self) -> int:
        return self._queue.qsize()


class StopHandling(Exception):
    """Raised by a handler to leave a message unhandled without counting it as a failure (e.g. a budget
    ran out: the item stays where the store has it and the next run picks it up)."""


@dataclass
class ActorStats:
    name: str
    workers: int
    busy: int = 0
    handled: int = 0
    errors: int = 0
    failed: int = 0
    queued: int = 0


class Actor(Generic[T]):
    def __init__(
        self,
        name: str,
        handler: Callable[[T], Awaitable[None]],
        *,
        workers: int,
        mailbox: Mailbox[T],
        retries: int,
        on_failure: Callable[[T, str], Awaitable[None]],
        describe: Callable[[T], dict[str, Any]],
        logger: Any,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.mailbox = mailbox
        self._handler = handler
        self._workers = workers
        self._retries = retries
        self._on_failure = on_failure
        self._describe = describe
        self._log = logger.bind(agent=name)
        self._on_idle = on_idle
        self.stats = ActorStats(name, workers)

    async def send(self, message: T, priority: float = 0.0) -> None:
        await self.mailbox.put(message, priority)

    def statistics(self) -> ActorStats:
        self.stats.queued = self.mailbox.qsize()
        return self.stats

    async def run(self) -> None:
        """Serve until the mailbox is closed and drained."""
        async with anyio.create_task_group() as tg:
            for _ in range(self._workers):
                tg.start_soon(self._serve)

    async def _serve(self) -> None:
        while True:
            try:
                message = await self.mailbox.get()
            except anyio.EndOfStream:
                return
            self.stats.busy += 1
            try:
                await self._supervise(message)
            finally:
                self.stats.busy -= 1
                if self._on_idle is not None:
                    self._on_idle()

    async def _supervise(self, message: T) -> None:
        last_error = ""
        for tries in range(1, self._retries + 2):
            try:
                await self._handler(message)
            except StopHandling:
                return
            except Exception as exc:  # supervision: any bug or I/O error in one item must not stop the actor
                self.stats.errors += 1
                last_error = f"{type(exc).__name__}: {exc}"
                # A traceback helps with a bug, not with a known condition (a full disk, a refused
                # request): those say what to do in their message.
                self._log.warning("handler_error", **self._describe(message), error=last_error, tries=tries,
                                  exc_info=tries == 1 and not isinstance(exc, KodcodeError))
                continue
            self.stats.handled += 1
            return
        self.stats.failed += 1
        self._log.error("item_failed", **self._describe(message), reason=last_error)
        await self._on_failure(message, f"{self.name} error: {last_error}")
