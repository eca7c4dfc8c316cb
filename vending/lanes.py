"""Worker-thread lanes: a route's blocking work on at most N threads at a time.

FastAPI runs a sync route in anyio's shared pool (40 threads). For a route whose work is
database transactions that the database runs one at a time anyway (SQLite's single
writer), those threads only take turns: each SQLite call hands the GIL over, so with
dozens of requests in flight every vend pays for thread switches and waits its turn for
the GIL behind threads that cannot go on either. A lane of one thread runs the same work
back to back, and the requests beyond it wait on the event loop at no cost. On a server
database the statements' round trips overlap, so a lane there is wider.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")

# SQLite: one writer at a time. A server database: enough threads to overlap round trips
# (beyond a few, they only queue at the rows every vend locks).
_SQLITE_LANE = 1
_SERVER_LANE = 8


class ThreadLane:
    """Runs blocking calls in worker threads, at most ``size`` at once; the callers beyond
    them wait on the event loop, in arrival order."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a lane needs at least one thread, got {size}")
        self.size = size
        # Made on first use: anyio ties a limiter to the running event loop's library.
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self, call: Callable[..., T], *args: object) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.size)
        return await anyio.to_thread.run_sync(call, *args, limiter=self._limiter)


def lane_size_for(session_factory: sessionmaker[Session]) -> int:
    """The default lane width for the write transactions of ``session_factory``'s
    database (a factory without an engine bound: a server database's)."""
    bind = session_factory.kw.get("bind")
    return _SQLITE_LANE if bind is not None and bind.dialect.name == "sqlite" else _SERVER_LANE
