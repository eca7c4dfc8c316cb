"""Signed channel purchases per second through the API (uvicorn on loopback, httpx client).

The server runs in a child process (uvicorn, one worker) on a fresh database with a key
store, a stepped residential tariff, token meters and one channel; this process is the
bank: it signs every request with the reference client and keeps ``--concurrency``
requests in flight. Cases: new purchases (a vend and a token each), the same purchases
replayed (the stored answer), and lookups. Wall-clock rates depend on the machine's load;
the server's CPU time per request (read from /proc) does not.

Usage: python benchmarks/channel_purchases.py [--purchases 1000] [--concurrency 8]
       [--meters 50] [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import secrets
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from gridvend.audit import AuditLog
from gridvend.channel_cli import ChannelClient
from gridvend.db import (
    make_engine,
    make_read_only_session_factory,
    make_session_factory,
    upgrade,
)
from protocols.sts import KeyConfig
from tests.vending.factories import residential_stepped
from tests.vending.world import KRN, SGC, TARIFF_INDEX, VendingWorld, add_metered_customer
from vending.accounts import save_tariff
from vending.channels.service import NewChannelTerms, create_channel
from vending.keystore import KeyEncryptionKey, KeyStore
from vending.security_module import SoftwareSecurityModule
from vending.tariff_documents import TariffDocument


def _set_up(url: str, kek: KeyEncryptionKey, meters: int) -> tuple[list[str], str, str]:
    engine = make_engine(url)
    upgrade(engine)
    session_factory = make_session_factory(engine)
    store = KeyStore(kek)
    key_config = KeyConfig(
        vending_key=secrets.token_bytes(20),
        supply_group_code=SGC,
        tariff_index=TARIFF_INDEX,
        key_revision=KRN,
    )
    tariff = residential_stepped()
    now = datetime.now(UTC)
    with session_factory() as session, session.begin():
        store.add_key(session, key_config)
        save_tariff(session, TariffDocument.from_tariff(tariff), actor="bench", now=now)
        channel, secret = create_channel(
            session,
            NewChannelTerms(
                code="bench-bank",
                name="Bench Bank",
                currency="ZAR",
                rate_limit_per_minute=10_000_000,
            ),
            kek=kek,
            audit=AuditLog(),
            actor="bench",
            now=now,
        )
        key_id = channel.key_id
    world = VendingWorld(
        session_factory=session_factory,
        key_config=key_config,
        security_module=SoftwareSecurityModule(store, make_read_only_session_factory(engine)),
        audit=AuditLog(),
        tariff_code=tariff.code,
        keystore=store,
    )
    numbers = [add_metered_customer(world, serial) for serial in range(meters)]
    engine.dispose()
    return numbers, key_id, secret


def _serve(url: str, kek_b64: str, port: int) -> None:
    import uvicorn
    from fastapi import FastAPI

    from vending.channels.api import make_router

    engine = make_engine(url, pool_size=20, max_overflow=20) if "postgresql" in url else None
    engine = engine or make_engine(url)
    kek = KeyEncryptionKey.from_base64(kek_b64)
    app = FastAPI()
    app.include_router(
        make_router(
            make_session_factory(engine),
            security_module=SoftwareSecurityModule(
                KeyStore(kek), make_read_only_session_factory(engine)
            ),
            audit=AuditLog(),
            kek=kek,
        )
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _wait_listening(port: int) -> None:
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError("the server did not start")


async def _measure(requests: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def guarded(n: int) -> None:
        async with gate:
            await one(n)

    started = time.perf_counter()
    await asyncio.gather(*(guarded(n) for n in range(requests)))
    return time.perf_counter() - started


async def _run(
    port: int, pid: int, numbers: list[str], key_id: str, secret: str, args: argparse.Namespace
) -> list[tuple[str, int, float, float]]:
    await _wait_listening(port)
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    rows: list[tuple[str, int, float, float]] = []
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60
    ) as http:
        client = ChannelClient(http, key_id, secret)

        def order(n: int) -> dict[str, str]:
            return {
                "reference": f"BENCH-{n:08d}",
                "amount": "100.00",
                "currency": "ZAR",
                "meter_number": numbers[n % len(numbers)],
            }

        async def buy(n: int) -> None:
            response = await client.send_json("POST", "/channel/v1/purchases", order(n))
            if response.status_code != 200:
                raise RuntimeError(response.text)

        async def look(n: int) -> None:
            body = {"meter_number": numbers[n % len(numbers)]}
            response = await client.send_json("POST", "/channel/v1/lookup", body)
            if response.status_code != 200:
                raise RuntimeError(response.text)

        cases: list[tuple[str, Callable[[int], Awaitable[None]]]] = [
            ("new purchase (vend + token)", buy),
            ("replayed purchase (stored answer)", buy),
            ("lookup", look),
        ]
        for name, one in cases:
            cpu_before = _cpu_seconds(pid)
            elapsed = await _measure(args.purchases, args.concurrency, one)
            cpu = _cpu_seconds(pid) - cpu_before
            rows.append((name, args.purchases, elapsed, cpu))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--purchases", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--meters", type=int, default=50)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    schema: str | None = None
    if args.database_url:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin = make_engine(args.database_url)
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        separator = "&" if "?" in args.database_url else "?"
        url = f"{args.database_url}{separator}options=-csearch_path%3D{schema}"
        label = "PostgreSQL"
    else:
        url = f"sqlite:///{tempfile.mkdtemp(prefix='channel-bench-')}/gridvend.db"
        label = "SQLite (WAL)"
    try:
        kek_b64 = base64.b64encode(secrets.token_bytes(32)).decode()
        kek = KeyEncryptionKey.from_base64(kek_b64)
        numbers, key_id, secret = _set_up(url, kek, args.meters)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(url, kek_b64, port), daemon=True
        )
        server.start()
        try:
            assert server.pid is not None
            rows = asyncio.run(_run(port, server.pid, numbers, key_id, secret, args))
        finally:
            server.terminate()
            server.join(10)
    finally:
        if schema is not None:
            with admin.begin() as connection:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()

    table = Table(
        title=f"Signed channel requests, {label}, {args.concurrency} in flight, "
        f"{args.meters} meters"
    )
    for column in ("case", "requests", "wall s", "requests/s", "server CPU ms/req", "req/s/core"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for name, count, elapsed, cpu in rows:
        table.add_row(
            name,
            str(count),
            f"{elapsed:.2f}",
            f"{count / elapsed:.0f}",
            f"{cpu * 1000 / count:.2f}",
            f"{count / cpu:.0f}" if cpu else "-",
        )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
