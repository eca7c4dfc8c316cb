"""psycopg alone: a batch of rows, and a list parameter, in the forms PostgreSQL accepts.

Why ``headend.bulk_write`` sends a batch as ``unnest()`` of binary arrays and
``headend.sql_lists`` sends a list as one binary array (docs/performance.md, Ingestion,
4 Dec). On a scratch table in a schema of its own (dropped afterwards):

* rows: a 2,000-row readings-shaped insert (``ON CONFLICT DO NOTHING``) as psycopg's
  ``executemany``, as ``unnest()`` of text-format arrays (``%s``) and of binary-format
  arrays (``%b``); µs of client CPU and of PostgreSQL's backend CPU (from ``/proc``) a row;
* lists: ``= ANY`` of a 500-integer and a 500-string list, text format against binary;
  µs of client CPU a query.

Forms alternate, ``--rounds`` times each. Usage: python benchmarks/pg_bulk_forms.py
[--url postgresql://postgres@127.0.0.1:5432/test] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

COLUMNS = "meter_id, quantity, ts, value, source, received_at, quality, flags, reason"
TYPES = "bigint, varchar(32), timestamptz, bigint, varchar(16), timestamptz, varchar(16)"
TYPES += ", varchar(255), text"
QUANTITIES = ("energy_import_kwh", "voltage_v", "current_a", "active_power_w")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
BATCHES = 10  # of 2,000 rows, per form and round


def _rows(k: int) -> list[tuple[Any, ...]]:
    ts = T0 + timedelta(minutes=15 * k)
    return [
        (m, q, ts, 1_000_000 + m, "mqtt", T0, "measured", "", "")
        for m in range(500)
        for q in QUANTITIES
    ]


def _backend_cpu_s(conn: psycopg.Connection[Any]) -> float:
    fields = Path(f"/proc/{conn.info.backend_pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    schema = f"bulk_forms_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.url) as conn:
        cur = conn.cursor()
        cur.execute(f"CREATE SCHEMA {schema}")
        cur.execute(f"SET search_path TO {schema}")
        columns = ", ".join(
            f"{c} {t}" for c, t in zip(COLUMNS.split(", "), TYPES.split(", "), strict=True)
        )
        cur.execute(f"CREATE TABLE t ({columns}, PRIMARY KEY (meter_id, quantity, ts))")
        conn.commit()
        try:
            _rows_forms(conn, args.rounds)
            _list_forms(conn, args.rounds)
        finally:
            conn.rollback()
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
            conn.commit()


def _rows_forms(conn: psycopg.Connection[Any], rounds: int) -> None:
    values = ", ".join(["%s"] * len(COLUMNS.split(", ")))
    many = f"INSERT INTO t ({COLUMNS}) VALUES ({values}) ON CONFLICT DO NOTHING"
    arrays = ", ".join(f"%s::{t}[]" for t in TYPES.split(", "))
    unnest = f"INSERT INTO t ({COLUMNS}) SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING"
    forms = {"executemany": many, "unnest, text": unnest, "unnest, binary": unnest}
    print("rows (2,000 a batch): µs of CPU a row, client / PostgreSQL")
    k = 0
    cur = conn.cursor()
    for _ in range(rounds):
        for form, sql in forms.items():
            batches = [_rows(k + i) for i in range(BATCHES)]
            k += BATCHES
            if form.endswith("binary"):
                sql = sql.replace("%s", "%b")
            client, server = time.process_time(), _backend_cpu_s(conn)
            for rows in batches:
                if form == "executemany":
                    cur.executemany(sql, rows)
                else:
                    cur.execute(sql, [list(column) for column in zip(*rows, strict=True)])
                conn.commit()
            n = BATCHES * len(batches[0])
            client_us = (time.process_time() - client) / n * 1e6
            server_us = (_backend_cpu_s(conn) - server) / n * 1e6
            print(f"  {form:<16}{client_us:>8.1f} / {server_us:.1f}")


def _list_forms(conn: psycopg.Connection[Any], rounds: int) -> None:
    ids = list(range(1000, 1500))
    names = [f"BENCH-{i:05d}" for i in ids]
    print("lists (500 integers and 500 strings a query): µs of client CPU a query")
    cur = conn.cursor()
    for _ in range(rounds):
        for form in ("s", "b"):
            sql = f"SELECT 1 WHERE 1 = ANY(%{form}::bigint[]) AND 'x' = ANY(%{form}::text[])"
            client = time.process_time()
            for _ in range(300):
                cur.execute(sql, [ids, names])
                cur.fetchall()
            label = "text" if form == "s" else "binary"
            print(f"  {label:<16}{(time.process_time() - client) / 300 * 1e6:>8.0f}")


if __name__ == "__main__":
    main()
