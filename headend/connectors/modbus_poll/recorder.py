"""Writes poll results: readings through the one ingestion path, then outcomes and
communication-health counters. One writer at a time, off the event loop."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

from sqlalchemy import Table, func, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from headend.bulk_write import BulkStatement
from headend.connectors.modbus_models import ModbusCommHealth, ModbusPollOutcome
from headend.connectors.modbus_poll.failures import FailureReason, PollFailure
from headend.ingest import Ingestor, PolledEvents, PolledReading

__all__ = ["PollResult", "Recorder"]

log = logging.getLogger(__name__)

# Which health counter each per-attempt failure reason increments.
_COUNTER_OF_REASON = {
    FailureReason.TIMEOUT: "timeouts",
    FailureReason.MODBUS_EXCEPTION: "modbus_exceptions",
    FailureReason.FRAME_ERROR: "frame_errors",
    FailureReason.CONNECTION_REFUSED: "connection_errors",
    FailureReason.CONNECT_FAILED: "connection_errors",
    FailureReason.CONNECTION_LOST: "connection_errors",
    FailureReason.BAD_REPLY: "bad_replies",
}
_OUTCOMES: Table = ModbusPollOutcome.__table__  # type: ignore[assignment]
_HEALTH: Table = ModbusCommHealth.__table__  # type: ignore[assignment]
_COUNTERS = (
    "polls_ok",
    "polls_failed",
    "requests",
    "timeouts",
    "modbus_exceptions",
    "frame_errors",
    "connection_errors",
    "bad_replies",
    "skipped",
)


@dataclass(frozen=True, slots=True)
class PollResult:
    """One poll of one meter: the reading, or the failure that ended it.

    ``errors`` holds every failed attempt (a poll that succeeded on its third try has
    two), for the health counters; ``failure`` is the reason the poll as a whole failed.
    ``events`` are the new records of the meter's event log, stored with the reading.
    """

    meter_id: int
    group: str
    interval_ts: datetime
    channel: str
    worker: str
    started_at: datetime
    finished_at: datetime
    attempts: int
    requests: int
    reading: PolledReading | None = None
    failure: PollFailure | None = None
    errors: tuple[PollFailure, ...] = field(default=())
    events: PolledEvents | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


class Recorder:
    """Buffers results and writes them in batches, in submission order."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        ingestor: Ingestor,
        *,
        batch_size: int,
        on_store_failed: Callable[[PollResult], None] | None = None,
    ) -> None:
        """``on_store_failed`` is called (in the event loop) for each read whose
        readings the database refused."""
        self._session_factory = session_factory
        self._on_store_failed = on_store_failed
        self._ingestor = ingestor
        self._batch_size = max(1, batch_size)
        self._pending: list[PollResult] = []
        self._lock = asyncio.Lock()
        self._flushes: set[asyncio.Task[list[PollResult]]] = set()

    def submit(self, result: PollResult) -> None:
        """Queue ``result``; a full batch starts a write in the background."""
        self._pending.append(result)
        if len(self._pending) >= self._batch_size:
            task = asyncio.get_running_loop().create_task(self.flush())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def flush(self) -> list[PollResult]:
        """Write what is queued; return the results as stored (a reading the database
        refused turns into a STORE_FAILED failure)."""
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return []
            try:
                written = await asyncio.to_thread(self._write, batch)
            except SQLAlchemyError:
                # The database is unreachable: keep the results (both writes are
                # idempotent for a batch that failed half-way) for the next flush.
                self._pending[:0] = batch
                raise
            if self._on_store_failed is not None:
                for before, after in zip(batch, written, strict=True):
                    if before.ok and not after.ok:
                        self._on_store_failed(after)
            return written

    async def write_now(self, result: PollResult) -> PollResult:
        """Write ``result`` at once and return it as stored."""
        async with self._lock:
            return (await asyncio.to_thread(self._write, [result]))[0]

    async def drain(self) -> None:
        """Wait until everything submitted so far is written."""
        await self.flush()
        if self._flushes:
            await asyncio.gather(*list(self._flushes))

    def _write(self, batch: Sequence[PollResult]) -> list[PollResult]:
        readings = [r.reading for r in batch if r.reading is not None]
        events = [r.events for r in batch if r.events is not None]
        results = list(batch)
        if readings or events:
            try:
                # One transaction: a reading is never stored without its poll's events.
                self._ingestor.ingest_polled(readings, events)
            except SQLAlchemyError as exc:
                log.error("storing %d polled readings failed: %s", len(readings), exc)
                failure = PollFailure(FailureReason.STORE_FAILED, str(exc).splitlines()[0])
                results = [
                    replace(r, reading=None, events=None, failure=failure)
                    if r.reading is not None or r.events is not None
                    else r
                    for r in results
                ]
        with self._session_factory() as session, session.begin():
            _INSERT_OUTCOMES.execute(session.connection(), [_outcome(r) for r in results])
            _add_health(session, results)
        return results


# Both writes go straight to the driver (headend.bulk_write): SQLAlchemy's per-row
# parameter processing of an executemany cost more than the database's insert.
_OUTCOME_COLUMNS = (
    "meter_id",
    "poll_group",
    "interval_ts",
    "ok",
    "reason",
    "exception_code",
    "detail",
    "attempts",
    "requests",
    "channel",
    "worker",
    "started_at",
    "finished_at",
)
_INSERT_OUTCOMES = BulkStatement(insert(_OUTCOMES), _OUTCOME_COLUMNS)


def _outcome(result: PollResult) -> dict[str, Any]:
    failure = result.failure
    return dict(
        meter_id=result.meter_id,
        poll_group=result.group,
        interval_ts=result.interval_ts,
        ok=failure is None,
        reason=None if failure is None else failure.reason.value,
        exception_code=None if failure is None else failure.exception_code,
        detail="" if failure is None else failure.detail[:2000],
        attempts=result.attempts,
        requests=result.requests,
        channel=result.channel,
        worker=result.worker,
        started_at=result.started_at,
        finished_at=result.finished_at,
    )


def _add_health(session: Session, results: Sequence[PollResult]) -> None:
    rows: dict[tuple[int, date], dict[str, Any]] = defaultdict(dict)
    for result in results:
        key = (result.meter_id, result.interval_ts.date())
        row = rows[key]
        if not row:
            row.update({"meter_id": key[0], "day": key[1]}, **dict.fromkeys(_COUNTERS, 0))
            row.update(last_ok_at=None, last_failure_at=None, last_failure_reason=None)
        row["requests"] += result.requests
        for error in result.errors:
            counter = _COUNTER_OF_REASON.get(error.reason)
            if counter is not None:
                row[counter] += 1
        if result.failure is None:
            row["polls_ok"] += 1
            row["last_ok_at"] = result.finished_at
        else:
            row["polls_failed"] += 1
            row["last_failure_at"] = result.finished_at
            row["last_failure_reason"] = result.failure.reason.value
            if (
                result.failure.reason
                in (
                    FailureReason.CIRCUIT_OPEN,
                    FailureReason.METER_BUSY,
                    FailureReason.DEADLINE,
                )
                and not result.errors
            ):
                row["skipped"] += 1
    if not rows:
        return
    connection = session.connection()
    # One row per (meter, day) in ``rows``, so one statement cannot hit a key twice.
    _health_upsert(connection.dialect.name).execute(connection, list(rows.values()))


@functools.cache
def _health_upsert(dialect: str) -> BulkStatement:
    """Add a batch's counts to each (meter, day) row, creating it where there is none."""
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(_HEALTH)
    columns = _HEALTH.c
    updates: dict[str, Any] = {name: columns[name] + insert.excluded[name] for name in _COUNTERS}
    for name in ("last_ok_at", "last_failure_at", "last_failure_reason"):
        updates[name] = func.coalesce(insert.excluded[name], columns[name])
    statement = insert.on_conflict_do_update(
        index_elements=[columns.meter_id, columns.day], set_=updates
    )
    return BulkStatement(
        statement,
        ["meter_id", "day", *_COUNTERS, "last_ok_at", "last_failure_at", "last_failure_reason"],
    )
