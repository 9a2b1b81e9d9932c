"""Actors: a mailbox plus N worker tasks, supervised.

A bounded mailbox makes a slow actor slow down the ones that feed it (backpressure). A handler that
raises is logged with the item it was working on and retried a bounded number of times; then the
item is handed to `on_failure` (which records the reason) and the actor goes on serving. While a
message is handled, `agent`, `item_id` and `attempt` are bound as structlog context variables, so every
event logged underneath (agents, LLM client, sandbox) carries them. An actor stops by closing: close()
shuts its mailbox, the workers finish what is queued, and run() returns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
import structlog

from kodcode.errors import KodcodeError
from kodcode.runtime.mailbox import Mailbox

__all__ = ["Actor", "ActorStats", "StopHandling"]

T = TypeVar("T")


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
    ) -> None:
        self.name = name
        self.mailbox = mailbox
        self._handler = handler
        self._workers = workers
        self._retries = retries
        self._on_failure = on_failure
        self._describe = describe
        self._log = logger
        self.stats = ActorStats(name, workers)
        self.finished = anyio.Event()       # set when run() returns: the mailbox is closed and drained
        self._scope = anyio.CancelScope()

    async def send(self, message: T, priority: float = 0.0) -> None:
        """Raises anyio.ClosedResourceError once the actor is closed."""
        await self.mailbox.put(message, priority)

    def close(self) -> None:
        """No more messages: the workers finish the ones queued, then run() returns."""
        self.mailbox.close()

    def abandon(self) -> None:
        """Cancel the work in hand (its messages stay where the store has them, for the next run); run()
        then returns. For work that no longer matters to this run, never for work whose result it needs."""
        self.mailbox.close()
        self._scope.cancel()

    def statistics(self) -> ActorStats:
        self.stats.queued = self.mailbox.qsize()
        return self.stats

    async def run(self) -> None:
        """Serve until the mailbox is closed and drained."""
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    for _ in range(self._workers):
                        tg.start_soon(self._serve)
        finally:
            self.finished.set()

    async def _serve(self) -> None:
        # Each worker is its own task with its own copy of the context, so what it binds reaches the events
        # logged under it (and in tasks it starts) and nothing else: the agent once, the item per message.
        structlog.contextvars.bind_contextvars(agent=self.name)
        while True:
            try:
                message = await self.mailbox.get()
            except anyio.EndOfStream:
                return
            self.stats.busy += 1
            described = self._describe(message)
            structlog.contextvars.bind_contextvars(**{k: v for k, v in described.items() if v is not None})
            structlog.contextvars.unbind_contextvars(*(k for k, v in described.items() if v is None))
            try:
                await self._supervise(message)
            finally:
                self.stats.busy -= 1

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
                self._log.warning("handler_error", error=last_error, tries=tries,
                                  exc_info=tries == 1 and not isinstance(exc, KodcodeError))
                continue
            self.stats.handled += 1
            return
        self.stats.failed += 1
        self._log.error("item_failed", reason=last_error)
        await self._on_failure(message, f"{self.name} error: {last_error}")
