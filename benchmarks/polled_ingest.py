"""CPU time per polled meter of ``Ingestor.ingest_polled``, the Modbus poller's writes.

In this process, no network and no poller: ``--meters`` registered meters (default 256,
the Modbus benchmark's fleet) polled every 15 minutes, each poll carrying what an Eastron
SDM120 prepaid meter gives the energy group: import energy (rising), export energy (held
at zero, as on most meters) and credit. A pass is handed over in batches of ``--batch``
polls (64: about what the poller's recorder writes at once). ``--warm`` passes fill the
history first (from the fourth on, every batch is in the steady state: loaded windows,
zero-consumption look-ups for the export register); then ``--passes`` are timed.

Printed: process CPU time and wall time per polled meter, and the statements SQLAlchemy
ran per batch. Compare code versions back to back: CPU time moves less with the machine's
load than wall time.

Usage: python benchmarks/polled_ingest.py [--database-url postgresql+psycopg://...]
       [--meters 256] [--batch 64] [--warm 6] [--passes 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy import Engine, event, text

from gridvend.collector import tune_for_service
from gridvend.db import make_engine, make_session_factory, upgrade
from headend.ingest import Ingestor, PolledReading
from headend.models import Meter
from protocols.mqtt import TopicScheme
from protocols.quantities import Quantity

START = datetime(2026, 11, 24, tzinfo=UTC)
INTERVAL = timedelta(minutes=15)


def _polls(meter_ids: list[int], k: int) -> list[PolledReading]:
    ts = START + k * INTERVAL
    return [
        PolledReading(
            meter_id,
            ts,
            {
                Quantity.ENERGY_IMPORT_KWH: Decimal(k * 10 + (meter_id % 7) * (k % 3)) / 100,
                Quantity.ENERGY_EXPORT_KWH: Decimal(0),
                Quantity.CREDIT_KWH: Decimal(1000 - k),
            },
            ts + timedelta(seconds=1),
        )
        for meter_id in meter_ids
    ]


def _database(url: str | None) -> tuple[str, Engine | None, str]:
    if url is None:
        return f"sqlite:///{tempfile.mkdtemp(prefix='gridvend-bench-')}/bench.db", None, ""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}", admin, schema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--meters", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warm", type=int, default=6)
    parser.add_argument("--passes", type=int, default=6)
    args = parser.parse_args()
    tune_for_service()  # as `gridvend serve` does
    url, admin, schema = _database(args.database_url)
    engine = make_engine(url)
    try:
        upgrade(engine)
        factory = make_session_factory(engine)
        with factory() as session, session.begin():
            meters = [
                Meter(
                    serial=f"PI{i:05d}",
                    comm_id=f"PI{i:05d}",
                    protocol="modbus_tcp",
                    created_at=START,
                )
                for i in range(args.meters)
            ]
            session.add_all(meters)
            session.flush()
            meter_ids = [meter.id for meter in meters]
        ingestor = Ingestor(factory, TopicScheme())

        def one_pass(k: int) -> int:
            polls = _polls(meter_ids, k)
            for start in range(0, len(polls), args.batch):
                ingestor.ingest_polled(polls[start : start + args.batch])
            return -(-len(polls) // args.batch)

        for k in range(args.warm):
            one_pass(k)
        statements = 0

        def count(*_: object) -> None:
            nonlocal statements
            statements += 1

        event.listen(engine, "before_cursor_execute", count)
        batches = 0
        cpu, wall = time.process_time(), time.perf_counter()
        for k in range(args.warm, args.warm + args.passes):
            batches += one_pass(k)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        event.remove(engine, "before_cursor_execute", count)
    finally:
        engine.dispose()
        if admin is not None:
            with admin.begin() as connection:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    polls = args.passes * args.meters
    database = "SQLite" if args.database_url is None else "PostgreSQL"
    print(
        f"{database}: {cpu / polls * 1e6:,.0f} µs CPU and {wall / polls * 1e6:,.0f} µs wall "
        f"per polled meter; {statements / batches:.1f} statements per batch of {args.batch} "
        f"(SQLAlchemy's; driver-level look-ups not counted)"
    )


if __name__ == "__main__":
    main()
