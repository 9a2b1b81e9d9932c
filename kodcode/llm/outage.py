"""An outage gate per transport: when an endpoint stops answering at the transport level, its calls wait
instead of failing, one of them probes it with backoff, and all go on when it answers again.

Why here and not in the agents or the actors: a refused connection says nothing about the item whose
call met it, so no item may be failed for it. Retrying each call on its own would also hammer a dead
server with every worker's retries and then give up after the retry budget (about half a minute), which
is shorter than a server restart. So LLMClient keeps one gate per transport (an endpoint, or a pool of
them, serving one or more roles):

- It closes after `outage_after` transport faults in a row with no success between them (connection
  refused or reset, connect timeouts, 502/503/504: TransientLLMError.outage is set), or when one call
  spent its retries on such faults. The model's own failures (500, read timeouts, malformed bodies, 429)
  never close it: those stay the retry budget's business and fail the attempt as before.
- While it is closed, callers wait outside the client's concurrency limiter (a paused role holds no slot
  another role could use); one of them at a time is the prober: after the backoff delay it sends its own
  request, which is the cheapest probe that proves the endpoint serves requests (and is not wasted).
- After `max_outage_s` without an answer the gate gives up: every waiter, and every later call through
  it, raises EndpointUnavailable, which the pipeline turns into a clean stop (exit 75).

Everything runs on the event loop thread: no locks, only events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from kodcode.errors import EndpointUnavailable

__all__ = ["OutageGate", "OutageStatus", "waiting_line"]

Clock = Callable[[], float]


@dataclass(frozen=True)
class OutageStatus:
    """One endpoint that is down, for the progress view and the summary."""

    endpoint: str
    roles: tuple[str, ...]
    reason: str              # "connection refused", "503 Service Unavailable", ...
    down_s: float            # how long it has been down
    retry_in_s: float        # until the next probe (0: a probe is in flight)
    probes: int              # probes that failed so far


def waiting_line(status: OutageStatus) -> str:
    """The one line the progress view and the event log show for an outage."""
    retry = "probing now" if status.retry_in_s <= 0 else f"retrying in {status.retry_in_s:.0f} s"
    return (f"waiting for endpoint {status.endpoint} ({', '.join(status.roles)}): {status.reason}, {retry}"
            f" (down {status.down_s:.0f} s)")


class OutageGate:
    def __init__(self, endpoint: str, roles: tuple[str, ...], *, max_outage_s: float, probe_base_s: float,
                 probe_cap_s: float, outage_after: int, logger: Any = None, clock: Clock = time.monotonic) -> None:
        self.endpoint = endpoint
        self.roles = roles
        self._max_outage_s = max_outage_s
        self._probe_base_s = probe_base_s
        self._probe_cap_s = probe_cap_s
        self._outage_after = max(1, outage_after)
        self._log = logger
        self._clock = clock
        self._streak = 0                      # transport faults in a row, across callers
        self.down_since: float | None = None
        self.reason = ""
        self._delay = probe_base_s
        self._next_probe_at = 0.0
        self._probing = False                 # a caller holds the prober's turn
        self._changed = anyio.Event()         # set (and replaced) whenever the state above changes
        self.probes = 0
        self.outages = 0
        self.given_up: str | None = None

    # -- state -----------------------------------------------------------------------------------------

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def status(self) -> OutageStatus | None:
        if self.down_since is None:
            return None
        now = self._clock()
        return OutageStatus(self.endpoint, self.roles, self.reason, now - self.down_since,
                            0.0 if self._probing and now >= self._next_probe_at else max(0.0, self._next_probe_at - now),
                            self.probes)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- what callers report -----------------------------------------------------------------------------

    def note_fault(self, reason: str, *, spent: bool) -> bool:
        """A call met a transport fault; True when that closes the gate (the caller then waits at it).
        `spent`: the call has no retries left."""
        if self.down:
            return True
        self._streak += 1
        if self._streak < self._outage_after and not spent:
            return False
        self.down_since = self._clock()
        self.reason = reason
        self._delay = self._probe_base_s
        self._next_probe_at = self.down_since + self._delay
        self.outages += 1
        if self._log is not None:
            self._log.warning("endpoint_down", endpoint=self.endpoint, roles=list(self.roles), reason=reason,
                              retry_in_s=round(self._delay, 1), max_outage_s=self._max_outage_s,
                              message=f"waiting for endpoint {self.endpoint}: {reason}, retrying in {self._delay:.0f} s")
        self._notify()
        return True

    def probe_failed(self, reason: str) -> None:
        """The prober's request met a transport fault again: back off, or give up past the longest outage."""
        assert self.down_since is not None
        self._probing = False
        self.probes += 1
        self.reason = reason
        now = self._clock()
        down_s = now - self.down_since
        if down_s >= self._max_outage_s:
            self.given_up = (f"endpoint {self.endpoint} has been down for {down_s:.0f} s ({reason}), longer than "
                             f"--max-outage {self._max_outage_s:.0f} s")
            if self._log is not None:
                self._log.error("endpoint_outage_too_long", endpoint=self.endpoint, roles=list(self.roles),
                                reason=reason, down_s=round(down_s, 1), max_outage_s=self._max_outage_s)
        else:
            self._delay = min(self._probe_cap_s, self._delay * 2)
            # The last probe lands on the deadline, so that a long backoff never overshoots --max-outage.
            self._next_probe_at = min(now + self._delay, self.down_since + self._max_outage_s)
            if self._log is not None:
                retry_in = self._next_probe_at - now
                self._log.warning("endpoint_waiting", endpoint=self.endpoint, roles=list(self.roles), reason=reason,
                                  retry_in_s=round(retry_in, 1), down_s=round(down_s, 1), probes=self.probes,
                                  message=f"waiting for endpoint {self.endpoint}: {reason}, retrying in {retry_in:.0f} s")
        self._notify()

    def probe_abandoned(self) -> None:
        """The prober was cancelled (or its request was refused by the client side): another waiter probes."""
        self._probing = False
        self._notify()

    def opened(self) -> None:
        """A request went through: the endpoint is back."""
        self._streak = 0
        self._probing = False
        if self.down_since is None:
            return
        down_s = self._clock() - self.down_since
        self.down_since = None
        if self._log is not None:
            self._log.warning("endpoint_recovered", endpoint=self.endpoint, roles=list(self.roles),
                              down_s=round(down_s, 1), probes=self.probes,
                              message=f"endpoint {self.endpoint} answers again after {down_s:.0f} s; going on")
        self.probes = 0
        self._notify()

    # -- waiting -------------------------------------------------------------------------------------------

    def check(self) -> None:
        if self.given_up is not None:
            raise EndpointUnavailable(self.given_up)

    async def wait_turn(self) -> bool:
        """Return at once while the endpoint is up (False). While it is down, wait: return True when this
        caller is to probe it (it must then report probe_failed, opened or probe_abandoned), False when
        someone else's request found it up. Raises EndpointUnavailable once the gate has given up."""
        while True:
            self.check()
            if self.down_since is None:
                return False
            if self._probing:
                await self._changed.wait()
                continue
            self._probing = True
            try:
                while self.down_since is not None and self._clock() < self._next_probe_at:
                    changed = self._changed
                    with anyio.move_on_after(self._next_probe_at - self._clock()):
                        await changed.wait()
            except BaseException:
                self.probe_abandoned()
                raise
            if self.down_since is None:      # a request sent before the gate closed came back fine
                self._probing = False
                return False
            return True
