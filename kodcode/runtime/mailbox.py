"""Mailboxes for actors: a bounded FIFO (backpressure) and an unbounded priority queue (the attempt queue).

Both end the same way: close() refuses new messages, get() hands out what is left and then raises
anyio.EndOfStream, so an actor's workers finish their backlog and return (shutdown by closing).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from typing import Generic, NamedTuple, Protocol, TypeVar

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["AttemptQueue", "FifoMailbox", "Mailbox", "PriorityMailbox", "QueueStatistics"]

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


class QueueStatistics(NamedTuple):
    queued: int
    waiting_getters: int
    total_put: int
    total_got: int
    closed: bool


class AttemptQueue(Generic[T]):
    """Priority queue for the solver slots: highest priority first, FIFO among equal priorities.

    Unbounded (the scheduler admits questions at its own pace). close() ends it: put raises
    anyio.ClosedResourceError, get drains what is left, then raises anyio.EndOfStream, and
    `async for` stops. Built on anyio.Event, so it runs on asyncio and trio.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()
        self._getters: deque[anyio.Event] = deque()
        self._closed = False
        self._total_put = 0
        self._total_got = 0

    def put_nowait(self, priority: float, item: T) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if math.isnan(priority):
            raise ValueError("priority must be a number, got NaN")
        heapq.heappush(self._heap, (-priority, next(self._seq), item))
        self._total_put += 1
        self._wake_one()

    async def put(self, priority: float, item: T) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        self.put_nowait(priority, item)
        await anyio.lowlevel.cancel_shielded_checkpoint()

    def get_nowait(self) -> T:
        """Raises anyio.WouldBlock when empty, anyio.EndOfStream when closed and drained."""
        if self._heap:
            self._total_got += 1
            return heapq.heappop(self._heap)[2]
        if self._closed:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    async def get(self) -> T:
        await anyio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                item = self.get_nowait()
            except anyio.WouldBlock:
                pass
            else:
                await anyio.lowlevel.cancel_shielded_checkpoint()
                return item
            event = anyio.Event()
            self._getters.append(event)
            try:
                await event.wait()
            except BaseException:
                if event in self._getters:
                    self._getters.remove(event)
                else:
                    self._wake_one()  # this getter was woken for an item; pass the wake-up on
                raise

    def close(self) -> None:
        self._closed = True
        while self._getters:
            self._getters.popleft().set()

    def qsize(self) -> int:
        return len(self._heap)

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(len(self._heap), len(self._getters), self._total_put,
                               self._total_got, self._closed)

    def _wake_one(self) -> None:
        if self._getters:
            self._getters.popleft().set()

    def __aiter__(self) -> AttemptQueue[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.get()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


