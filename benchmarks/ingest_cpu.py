"""CPU per message of ``Ingestor.ingest``: this process's, the write transaction's, PostgreSQL's.

The ``direct`` case of ``benchmarks/ingest_bench.py`` (batches of 500 telemetry messages,
one per meter, four values each, handed to ``Ingestor.ingest`` in this process), with the
first four batches as warm-up and the rest measured:

* ``client``: this process's CPU (``time.process_time``) per message;
* ``in txn``: the ingesting thread's CPU from the transaction's first statement to the end
  of its commit (``time.thread_time`` between the engine's ``begin`` event and the
  session's ``after_commit``): on SQLite the time the batch holds the database's one
  write lock, which is what two worker processes queue for;
* ``server``: PostgreSQL's CPU for the backends of this process's connections (from
  ``/proc``; Linux, PostgreSQL on the same machine), per message.

CPU seconds, not wall time, so runs on a busy machine still compare; still, the machine's
speed moves, so compare trees back to back (``git worktree add /tmp/base <commit>`` and
run the same script there).

Usage: python benchmarks/ingest_cpu.py [--meters 500] [--intervals 40] [--rounds 3]
       [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/test | --no-postgres]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ingest_bench import BATCH, INTERVAL, _database, _payloads, _register, _start_time
from sqlalchemy import Engine, event

from gridvend.db import make_session_factory
from headend.ingest import InboundMessage, Ingestor
from protocols.mqtt import MeterChannel, TopicScheme

WARM_UP_BATCHES = 4


def _backend_cpu_s(pids: set[int]) -> float:
    """CPU seconds (user + system) of the PostgreSQL backends ``pids`` so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def run(kind: str, postgres_url: str | None, meters: int, intervals: int) -> dict[str, float]:
    scheme = TopicScheme()
    t0 = _start_time(intervals)
    received = t0 + (intervals + 1) * INTERVAL
    messages = [
        InboundMessage(scheme.meter_topic(serial, MeterChannel.TELEMETRY), payload, received)
        for serial, payload in _payloads(meters, intervals, t0)
    ]
    with _database(kind, postgres_url) as engine:
        _register(engine, meters)
        factory = make_session_factory(engine)
        in_txn = _TransactionClock(engine, factory)
        backends = _backend_pids(engine) if kind == "postgresql" else None
        ingestor = Ingestor(factory, scheme)
        warm = WARM_UP_BATCHES * BATCH
        for i in range(0, warm, BATCH):
            ingestor.ingest(messages[i : i + BATCH])
        in_txn.total = 0.0
        server = _backend_cpu_s(backends) if backends is not None else 0.0
        client = time.process_time()
        for i in range(warm, len(messages), BATCH):
            ingestor.ingest(messages[i : i + BATCH])
        client = time.process_time() - client
        if backends is not None:
            server = _backend_cpu_s(backends) - server
        measured = len(messages) - warm
    per_message = 1e6 / measured
    return {
        "client": client * per_message,
        "in txn": in_txn.total * per_message,
        "server": server * per_message,
    }


class _TransactionClock:
    """Thread CPU seconds spent inside write transactions, summed."""

    def __init__(self, engine: Engine, factory: Any) -> None:
        self.total = 0.0
        self._started: float | None = None
        event.listen(engine, "begin", self._begin)
        event.listen(factory, "after_commit", self._committed)

    def _begin(self, _connection: Any) -> None:
        self._started = time.thread_time()

    def _committed(self, _session: Any) -> None:
        if self._started is not None:
            self.total += time.thread_time() - self._started
            self._started = None


def _backend_pids(engine: Engine) -> set[int]:
    """The PostgreSQL backend of every connection the engine's pool opens from now on."""
    pids: set[int] = set()

    def connected(dbapi_connection: Any, _record: Any) -> None:
        pids.add(dbapi_connection.info.backend_pid)

    event.listen(engine.pool, "connect", connected)
    engine.dispose()  # connections opened before the listener reopen through it
    return pids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=500)
    parser.add_argument("--intervals", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    kinds = ["sqlite"] if args.no_postgres else ["sqlite", "postgresql"]
    print(f"{args.meters} meters x {args.intervals + 1} intervals; µs of CPU a message, median")
    print(f"{'database':<12}{'client':>10}{'in txn':>10}{'server':>10}")
    for kind in kinds:
        runs = [
            run(kind, args.postgres_url, args.meters, args.intervals) for _ in range(args.rounds)
        ]
        medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        server = f"{medians['server']:>10.0f}" if kind == "postgresql" else f"{'-':>10}"
        print(f"{kind:<12}{medians['client']:>10.0f}{medians['in txn']:>10.0f}{server}")


if __name__ == "__main__":
    main()
