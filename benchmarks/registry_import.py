"""CSV bulk import throughput: meters registered per second, with a share of bad rows.

A file of ``--rows`` meters is generated (valid STS meter numbers, Modbus TCP addresses,
STS key fields) with ``--bad-percent`` of the rows broken in one of several ways (bad
check digit, missing host, duplicate serial). The file is imported into a fresh database
(a temporary SQLite file, or ``--database-url`` for PostgreSQL, in a schema
``bench_import`` created for the run and dropped after it), and the import is timed.

Figures are wall-clock and CPU time of the whole ``import_meters`` call (parse, validate,
registry lookup, one savepoint per row, batched commits).

Usage: python benchmarks/registry_import.py [--rows 10000] [--bad-percent 5]
       [--database-url URL]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select, text

from gridvend.db import make_engine, make_session_factory, upgrade
from headend.bulk_import import import_meters
from headend.models import Meter
from protocols.sts import luhn_check_digit


def _drn(index: int) -> str:
    payload = f"01{index:08d}"
    return payload + str(luhn_check_digit(payload))


def make_csv(rows: int, bad_percent: float, rng: random.Random) -> tuple[str, int]:
    lines = [
        "serial,meter_number,protocol,modbus_profile,modbus_host,modbus_unit,"
        "supply_group_code,tariff_index,key_revision,location"
    ]
    bad = 0
    for i in range(rows):
        serial, number, host = (
            f"BENCH-{i:07d}",
            _drn(i),
            f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
        )
        if rng.random() * 100 < bad_percent:
            bad += 1
            kind = rng.randrange(3)
            if kind == 0:
                number = number[:-1] + str((int(number[-1]) + 1) % 10)
            elif kind == 1:
                host = ""
            else:
                serial = "BENCH-0000000"  # also rejects row 2's meter: counted below
        lines.append(
            f"{serial},{number},modbus_tcp,eastron-sdm120-prepaid,{host},{i % 247 + 1},"
            f"123456,01,1,Stand {i}"
        )
    return "\n".join(lines) + "\n", bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--bad-percent", type=float, default=5.0)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    rng = random.Random(20261124)
    data, broken = make_csv(args.rows, args.bad_percent, rng)

    with tempfile.TemporaryDirectory() as tmp:
        if args.database_url:
            admin = make_engine(args.database_url)
            with admin.begin() as connection:
                connection.execute(text("DROP SCHEMA IF EXISTS bench_import CASCADE"))
                connection.execute(text("CREATE SCHEMA bench_import"))
            admin.dispose()
            separator = "&" if "?" in args.database_url else "?"
            url = f"{args.database_url}{separator}options=-csearch_path%3Dbench_import"
        else:
            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        engine = make_engine(url)
        upgrade(engine)
        session_factory = make_session_factory(engine)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        report = import_meters(session_factory, data, actor="bench", source="bench.csv")
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        with session_factory() as session:
            stored = session.scalar(select(func.count()).select_from(Meter))
        engine.dispose()
        if args.database_url:
            admin = make_engine(args.database_url)
            with admin.begin() as connection:
                connection.execute(text("DROP SCHEMA bench_import CASCADE"))
            admin.dispose()

    print(f"database        {engine.dialect.name}")
    print(f"rows            {report.total_rows} ({broken} broken on purpose)")
    print(f"imported        {len(report.imported)} (stored: {stored})")
    print(f"refused         {len(report.errors)}")
    print(f"wall time       {wall:.2f} s  ->  {report.total_rows / wall:,.0f} rows/s")
    print(f"CPU time        {cpu:.2f} s  ->  {report.total_rows / cpu:,.0f} rows/s of CPU")


if __name__ == "__main__":
    main()
