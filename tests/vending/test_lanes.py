"""vending.lanes: at most N calls at once, the rest wait on the event loop."""

import threading
import time

import anyio
import pytest

from gridvend.db import make_engine, make_session_factory
from vending.lanes import ThreadLane, lane_size_for


def _run_concurrently(lane: ThreadLane, calls: int) -> int:
    """The most calls the lane ran at the same time."""
    running = 0
    most = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.02)  # long enough for the other callers to arrive
        with guard:
            running -= 1

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(calls):
                group.start_soon(lane.run, work)

    anyio.run(main)
    return most


@pytest.mark.parametrize("size", [1, 3])
def test_a_lane_runs_at_most_its_size_at_once(size: int) -> None:
    assert _run_concurrently(ThreadLane(size), 8) == size


def test_a_lane_returns_the_call_result_and_raises_its_error() -> None:
    lane = ThreadLane(1)

    def fail() -> None:
        raise KeyError("boom")

    async def main() -> int:
        with pytest.raises(KeyError):
            await lane.run(fail)
        return await lane.run(lambda a, b: a + b, 2, 3)

    assert anyio.run(main) == 5


def test_a_lane_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        ThreadLane(0)


def test_sqlite_vends_on_one_thread_a_server_database_on_several(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/lane.db")
    assert lane_size_for(make_session_factory(engine)) == 1
    postgres = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")  # never connects
    assert lane_size_for(make_session_factory(postgres)) > 1
