"""Actors and mailboxes: supervision, StopHandling, backpressure, priority order and shutdown."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import structlog
from structlog.testing import capture_logs

from kodcode.runtime.actor import Actor, StopHandling
from kodcode.runtime.mailbox import FifoMailbox, PriorityMailbox
from kodcode.log import get_logger


class Recorder:
    def __init__(self) -> None:
        self.handled: list[Any] = []
        self.tries: dict[Any, int] = {}
        self.failures: list[tuple[Any, str]] = []

    async def on_failure(self, message: Any, reason: str) -> None:
        self.failures.append((message, reason))


def make_actor(handler: Any, recorder: Recorder, mailbox: Any, *, retries: int = 2, workers: int = 1) -> Actor:
    return Actor("solver", handler, workers=workers, mailbox=mailbox, retries=retries,
                 on_failure=recorder.on_failure, describe=lambda message: {"item_id": str(message)},
                 logger=get_logger())


async def serve(actor: Actor, messages: list[Any]) -> None:
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(actor.run)
            for message in messages:
                await actor.send(message)
            actor.mailbox.close()


async def test_a_failing_handler_is_retried_then_reported_and_the_actor_goes_on() -> None:
    recorder = Recorder()

    async def handler(message: str) -> None:
        recorder.tries[message] = recorder.tries.get(message, 0) + 1
        if message == "bad":
            raise ValueError(f"cannot handle {message}")
        if message == "flaky" and recorder.tries[message] == 1:
            raise OSError("transient")
        recorder.handled.append(message)

    actor = make_actor(handler, recorder, FifoMailbox(4), retries=2)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await serve(actor, ["bad", "flaky", "good"])
    assert recorder.tries == {"bad": 3, "flaky": 2, "good": 1}   # 1 try + 2 retries for "bad"
    assert recorder.handled == ["flaky", "good"]
    assert recorder.failures == [("bad", "solver error: ValueError: cannot handle bad")]
    stats = actor.statistics()
    assert (stats.handled, stats.errors, stats.failed, stats.busy, stats.queued) == (2, 4, 1, 0, 0)
    failed = [entry for entry in logs if entry["event"] == "item_failed"]
    assert failed == [{"event": "item_failed", "log_level": "error", "agent": "solver", "item_id": "bad",
                       "reason": "ValueError: cannot handle bad"}]
    assert [entry["tries"] for entry in logs if entry["event"] == "handler_error"] == [1, 2, 3, 1]


async def test_stop_handling_leaves_the_message_without_a_failure() -> None:
    recorder = Recorder()

    async def handler(message: str) -> None:
        recorder.tries[message] = recorder.tries.get(message, 0) + 1
        if message == "over budget":
            raise StopHandling
        recorder.handled.append(message)

    actor = make_actor(handler, recorder, FifoMailbox(4), retries=3)
    await serve(actor, ["over budget", "next"])
    assert recorder.tries == {"over budget": 1, "next": 1}
    assert recorder.failures == []
    assert recorder.handled == ["next"]
    stats = actor.statistics()
    assert (stats.handled, stats.errors, stats.failed) == (1, 0, 0)


async def test_workers_handle_messages_concurrently() -> None:
    recorder = Recorder()
    all_in = anyio.Event()
    inside = 0

    async def handler(message: int) -> None:
        nonlocal inside
        inside += 1
        if inside == 3:
            all_in.set()
        await all_in.wait()   # deadlocks (and fails by timeout) unless three run at once
        recorder.handled.append(message)

    await serve(make_actor(handler, recorder, FifoMailbox(0), workers=3), [1, 2, 3])
    assert sorted(recorder.handled) == [1, 2, 3]


async def test_fifo_mailbox_put_waits_while_full() -> None:
    mailbox: FifoMailbox[int] = FifoMailbox(2)
    await mailbox.put(1)
    await mailbox.put(2)
    assert mailbox.qsize() == 2
    with anyio.move_on_after(0.05) as scope:
        await mailbox.put(3)
    assert scope.cancelled_caught        # blocked: the mailbox is full
    put_done = anyio.Event()

    async def producer() -> None:
        await mailbox.put(3)
        put_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        await anyio.wait_all_tasks_blocked()
        assert not put_done.is_set()
        assert await mailbox.get() == 1  # room again: the producer goes on
        with anyio.fail_after(5):
            await put_done.wait()
    mailbox.close()
    assert [await mailbox.get(), await mailbox.get()] == [2, 3]
    with pytest.raises(anyio.EndOfStream):
        await mailbox.get()
    with pytest.raises(anyio.ClosedResourceError):
        await mailbox.put(4)


async def test_priority_mailbox_order_close_and_drain() -> None:
    mailbox: PriorityMailbox[str] = PriorityMailbox()
    for message, priority in [("low", 0.1), ("high-1", 0.9), ("mid", 0.5), ("high-2", 0.9)]:
        await mailbox.put(message, priority)
    assert mailbox.qsize() == 4
    assert await mailbox.get() == "high-1"
    assert await mailbox.get() == "high-2"   # FIFO among equal priorities
    mailbox.close()
    with pytest.raises(anyio.ClosedResourceError):
        await mailbox.put("late", 1.0)
    assert mailbox.drain() == ["mid", "low"]
    assert mailbox.qsize() == 0
    with pytest.raises(anyio.EndOfStream):
        await mailbox.get()


async def test_closing_a_priority_mailbox_ends_idle_workers() -> None:
    recorder = Recorder()

    async def handler(message: str) -> None:
        recorder.handled.append(message)

    mailbox: PriorityMailbox[str] = PriorityMailbox()
    actor = make_actor(handler, recorder, mailbox, workers=2)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(actor.run)
            await actor.send("a", 0.5)
            await anyio.wait_all_tasks_blocked()
            mailbox.close()   # both workers are waiting in get(): they must end, and run() return
    assert recorder.handled == ["a"]


async def test_events_logged_while_handling_carry_the_agent_and_item() -> None:
    """The actor binds agent/item_id as context variables: an event logged anywhere below the handler (an
    agent, the LLM client) carries them without being told, and nothing leaks to events logged after."""
    recorder = Recorder()

    async def handler(message: str) -> None:
        get_logger().info("deep_inside", detail=message)

    actor = make_actor(handler, recorder, FifoMailbox(4))
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await serve(actor, ["Prefill_7"])
        get_logger().info("afterwards")
    inside = next(entry for entry in logs if entry["event"] == "deep_inside")
    assert (inside["agent"], inside["item_id"]) == ("solver", "Prefill_7")
    after = next(entry for entry in logs if entry["event"] == "afterwards")
    assert "agent" not in after and "item_id" not in after
