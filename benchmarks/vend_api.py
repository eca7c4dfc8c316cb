"""Vends per second through the counter's REST API.

Run: ``.venv/bin/python benchmarks/vend_api.py [--vends N] [--concurrency C ...]``

For each database (a SQLite file; PostgreSQL at GRIDVEND_BENCH_DATABASE_URL, or the local
server at postgresql+psycopg://postgres@127.0.0.1:5432/test when it answers, in a schema
of its own dropped afterwards) it sets up a utility (vending key, tariff, vending point,
``--meters`` token meters on their own accounts, one clerk per concurrent client, each on
an open shift), starts uvicorn on loopback in a child process with the counter router and
gridvend.auth's router (uvloop and httptools; ``--plain-server``: asyncio's loop and h11),
and sends ``--vends`` POST /api/vending/vends with C requests in flight, one keep-alive
connection per clerk (``--client aiohttp``, the default, or ``httpx``, which costs the
load generator about twice the CPU on the same two cores). Every vend is the full path:
bearer-token check, shift check, account lock, pricing, TID allocation, STS token, audit
entry, commit. The meters are spread over the clients, so concurrent vends also hit the
same meters. Prints a table of vends/s, latency percentiles, the server's CPU per vend
(user + system time of the uvicorn process and its workers, from /proc: steadier than
wall-clock rates on a shared machine) and the load generator's (this process's) CPU per
vend, and on PostgreSQL the CPU of this machine's PostgreSQL processes per vend (all of
them, from /proc: so nothing else may use the server during the run, and a remote server
counts 0); checks that every answer was 201 and no TID repeats. ``--workers N`` runs N uvicorn
worker processes; ``--points N`` spreads the clerks over N vending points (with one,
every vend takes cash for the same point and waits for its row lock). ``--vend-threads N``
sets how many worker threads a server process vends on (vending.lanes; default one on
SQLite, eight on PostgreSQL).

``--in-process N`` measures the vend transaction alone instead (N vends through
``vending.api.counter_vend``, one thread, no HTTP): SQL statements and CPU per vend
(and PostgreSQL's, as above).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gridvend.db import (
    make_engine,
    make_read_only_session_factory,
    make_session_factory,
    upgrade,
)

LOCAL_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@dataclass
class Setup:
    url: str
    kek_b64: str
    meters: list[str]
    tokens: list[str]


def _setup(url: str, meters: int, clerks: int, points: int = 1) -> Setup:
    import hashlib

    from gridvend.audit import AuditLog
    from gridvend.auth import AccessToken, User
    from headend.models import MeterLifecycle, PrepaidMode
    from headend.registry import MeterRegistration, register_meter
    from meter_sim.fleet import sts_meter_pan
    from protocols.sts import BaseDate, Dkga, EncryptionAlgorithm, KeyConfig, KeyType
    from tests.vending.factories import residential_stepped
    from vending.accounts import (
        NewAccount,
        NewCustomer,
        add_customer,
        link_meter,
        open_account,
        save_tariff,
    )
    from vending.keystore import KeyEncryptionKey, KeyStore
    from vending.shifts import create_vending_point, open_shift
    from vending.tariff_documents import TariffDocument

    engine = make_engine(url)
    upgrade(engine)
    factory = make_session_factory(engine)
    kek_bytes = secrets.token_bytes(32)
    kek = KeyEncryptionKey(kek_bytes)
    now = datetime.now(UTC)
    pans = [sts_meter_pan(100 + i) for i in range(meters)]
    tokens = []
    with factory() as session, session.begin():
        KeyStore(kek).add_key(
            session,
            KeyConfig(
                vending_key=bytes.fromhex("0123456789abcdef"),
                supply_group_code="123457",
                tariff_index="01",
                key_revision=1,
                key_type=KeyType.DUTK,
                base_date=BaseDate.Y2014,
                algorithm=EncryptionAlgorithm.STA,
                dkga=Dkga.DKGA02,
            ),
        )
        save_tariff(
            session, TariffDocument.from_tariff(residential_stepped()), actor="bench", now=now
        )
        for p in range(points):
            create_vending_point(
                session,
                code=_point_code(p),
                name=f"bench {p}",
                currency="ZAR",
                credit_limit=Decimal(10**9),
            )
        for i, pan in enumerate(pans):
            register_meter(
                session,
                MeterRegistration(
                    serial=f"BENCH-{i:06d}",
                    meter_number=pan,
                    prepaid_mode=PrepaidMode.TOKEN,
                    lifecycle=MeterLifecycle.INSTALLED,
                    supply_group_code="123457",
                    tariff_index="01",
                    key_revision=1,
                ),
                audit=AuditLog(),
            )
            customer = add_customer(session, NewCustomer(name=f"Customer {i}"), now)
            account = open_account(
                session, NewAccount(customer_id=customer.id, tariff_code="RES-STEP"), now
            )
            link_meter(session, account.id, pan, actor="bench", now=now)
        for c in range(clerks):
            username = f"clerk-{c}"
            user = User(
                username=username, role="clerk", password_hash="-", active=True, created_at=now
            )
            session.add(user)
            session.flush()
            token = secrets.token_urlsafe(32)
            session.add(
                AccessToken(
                    token_sha256=hashlib.sha256(token.encode()).hexdigest(),
                    user_id=user.id,
                    created_at=now,
                    expires_at=now.replace(year=now.year + 1),
                    revoked=False,
                )
            )
            open_shift(
                session,
                clerk=username,
                point_code=_point_code(c % points),
                opening_float=Decimal(0),
                now=now,
            )
            tokens.append(token)
    engine.dispose()
    return Setup(url, base64.b64encode(kek_bytes).decode(), pans, tokens)


def _point_code(p: int) -> str:
    return "BENCH" if p == 0 else f"BENCH{p}"


def _server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its live descendants (uvicorn's
    worker processes), from /proc; 0 where /proc is not there."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def _postgres_cpu_s() -> float:
    """User + system CPU seconds of this machine's live PostgreSQL processes (backends, WAL
    writer, checkpointer...), from /proc: a local server's own cost, which shares the
    cores with the API. 0 where /proc is not there or the server runs elsewhere."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if (process / "comm").read_text().strip() != "postgres":
                continue
            fields = (process / "stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            continue
    return total


def app_factory() -> Any:
    """The app each server worker runs (database and KEK from the environment)."""
    from fastapi import FastAPI

    from gridvend.audit import AuditLog
    from gridvend.auth import Auth
    from gridvend.auth import make_router as make_auth_router
    from vending.api import make_router
    from vending.keystore import KeyEncryptionKey, KeyStore
    from vending.security_module import SoftwareSecurityModule

    url = os.environ["BENCH_DATABASE_URL"]
    kek_b64 = os.environ["BENCH_KEK"]
    engine = make_engine(url, pool_size=20, max_overflow=20)
    factory = make_session_factory(engine)
    auth = Auth(factory)
    app = FastAPI()
    app.include_router(make_auth_router(factory, auth))
    module = SoftwareSecurityModule(
        KeyStore(KeyEncryptionKey.from_base64(kek_b64)), make_read_only_session_factory(engine)
    )
    app.include_router(
        make_router(
            factory,
            require=auth.require,
            require_later=auth.require_later,
            security_module=module,
            audit=AuditLog(),
            vend_threads=int(os.environ.get("BENCH_VEND_THREADS", 0)) or None,
        )
    )
    return app


def in_process(name: str, url: str, vends: int) -> None:
    """The vend transaction alone (``vending.api.counter_vend``, no HTTP), one thread:
    SQL statements and CPU per vend. The statements are counted at the driver (SQLite's
    trace callback, a counting psycopg cursor), BEGIN and COMMIT included: the vend runs
    most of its statements on the driver directly (vending.driver_statements), which
    SQLAlchemy's statement events do not see."""
    from sqlalchemy import event

    from gridvend.audit import AuditLog
    from vending.api import counter_vend
    from vending.counter import PaymentMethod, VendLimits
    from vending.keystore import KeyEncryptionKey, KeyStore
    from vending.security_module import SoftwareSecurityModule

    setup = _setup(url, 50, 1)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    module = SoftwareSecurityModule(
        KeyStore(KeyEncryptionKey.from_base64(setup.kek_b64)),
        make_read_only_session_factory(engine),
    )
    statements = 0

    def count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    def counting(dbapi_connection: Any, _record: Any) -> None:
        if hasattr(dbapi_connection, "set_trace_callback"):  # sqlite3
            dbapi_connection.set_trace_callback(count)
            return
        base = dbapi_connection.cursor_factory  # psycopg

        class CountingCursor(base):  # type: ignore[misc, valid-type]
            def execute(self, *args: Any, **kwargs: Any) -> Any:
                count()
                return super().execute(*args, **kwargs)

        dbapi_connection.cursor_factory = CountingCursor

    event.listen(engine, "connect", counting)
    audit = AuditLog()

    def one(i: int) -> None:
        counter_vend(
            factory,
            clerk="clerk-0",
            clerk_key="bench",
            meter_number=setup.meters[i % len(setup.meters)],
            amount=Decimal(f"{50 + i % 50}.00"),
            payment_method=PaymentMethod.CASH,
            reference=f"in-process-{i}",
            security_module=module,
            audit=audit,
            clock=lambda: datetime.now(UTC),
            limits=VendLimits(),
        )

    for i in range(len(setup.meters)):  # warm-up: every meter's key cached
        one(i)
    statements = 0
    database_cpu = _postgres_cpu_s()
    cpu = time.process_time()
    wall = time.perf_counter()
    for i in range(len(setup.meters), len(setup.meters) + vends):
        one(i)
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    database_cpu = _postgres_cpu_s() - database_cpu
    engine.dispose()
    print(
        f"  {name:<10} in-process: {statements / vends:.1f} statements/vend, "
        f"CPU {cpu / vends * 1000:.2f} ms/vend, wall {wall / vends * 1000:.2f} ms/vend"
        + (
            f", PostgreSQL's CPU {database_cpu / vends * 1000:.2f} ms/vend"
            if name == "postgresql"
            else ""
        ),
        flush=True,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Answer:
    """What the load generator keeps of an answer."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body


async def _drive(
    base: str, setup: Setup, vends: int, concurrency: int, client: str = "aiohttp"
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    tids: dict[str, set[int]] = {}
    duplicate_tids = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(vends):
        queue.put_nowait(i)
    run = uuid.uuid4().hex[:6]

    async def clerk(worker: int, post: Any) -> None:
        nonlocal duplicate_tids
        headers = {"Authorization": f"Bearer {setup.tokens[worker]}"}
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            meter = setup.meters[i % len(setup.meters)]
            body = {
                "meter_number": meter,
                "amount": f"{50 + i % 50}.00",
                "reference": f"{run}-{i}",
            }
            started = time.perf_counter()
            answer = await post(body, headers)
            latencies.append(time.perf_counter() - started)
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
            if answer.status >= 400:
                code = answer.body["detail"].get("code", "?")
                errors[code] = errors.get(code, 0) + 1
            if answer.status == 201:
                tid = answer.body["tid"]
                seen = tids.setdefault(meter, set())
                duplicate_tids += tid in seen
                seen.add(tid)

    async def httpx_clerk(worker: int) -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:

            async def post(body: dict[str, str], headers: dict[str, str]) -> _Answer:
                answer = await http.post("/api/vending/vends", json=body, headers=headers)
                return _Answer(answer.status_code, answer.json())

            await clerk(worker, post)

    async def aiohttp_clerk(worker: int) -> None:
        # One keep-alive connection a clerk, as with httpx; aiohttp's C parser makes the
        # client cheaper, leaving more of the two cores to the server.
        connector = aiohttp.TCPConnector(limit=1)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as http:

            async def post(body: dict[str, str], headers: dict[str, str]) -> _Answer:
                async with http.post("/api/vending/vends", json=body, headers=headers) as r:
                    return _Answer(r.status, await r.json())

            await clerk(worker, post)

    one = aiohttp_clerk if client == "aiohttp" else httpx_clerk
    started = time.perf_counter()
    cpu = time.process_time()
    await asyncio.gather(*(one(w) for w in range(concurrency)))
    cpu = time.process_time() - cpu
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "vends": vends,
        "seconds": elapsed,
        "rate": vends / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p95": latencies[int(len(latencies) * 0.95) - 1] * 1000,
        "client_cpu_ms": cpu / vends * 1000,
        "statuses": statuses,
        "errors": errors,
        "duplicate_tids": duplicate_tids,
    }


def _wait_listening(port: int, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError("the API server exited while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the API server did not start")


def bench(name: str, url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    setup = _setup(url, args.meters, max(args.concurrency), args.points)
    port = _free_port()
    root = Path(__file__).resolve().parents[1]
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.vend_api:app_factory",
            "--factory",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--workers={args.workers}",
            "--log-level=error",
            "--no-access-log",
            # uvicorn[standard]'s uvloop and httptools unless asked for the pure-Python pair.
            *(["--loop=asyncio", "--http=h11"] if args.plain_server else []),
        ],
        cwd=root,
        env={
            **os.environ,
            "BENCH_DATABASE_URL": url,
            "BENCH_KEK": setup.kek_b64,
            "BENCH_VEND_THREADS": str(args.vend_threads or 0),
            "PYTHONPATH": str(root),
        },
    )
    rows = []
    try:
        _wait_listening(port, child)
        base = f"http://127.0.0.1:{port}"
        warm_up = _drive(base, setup, min(200, args.vends), max(args.concurrency), args.client)
        asyncio.run(warm_up)
        for concurrency in args.concurrency:
            cpu, database_cpu = _server_cpu_s(child.pid), _postgres_cpu_s()
            result = asyncio.run(_drive(base, setup, args.vends, concurrency, args.client))
            result["server_cpu_ms"] = (_server_cpu_s(child.pid) - cpu) / args.vends * 1000
            database_cpu = _postgres_cpu_s() - database_cpu if name == "postgresql" else 0.0
            result["database_cpu_ms"] = database_cpu / args.vends * 1000
            rows.append(
                {"database": name, "workers": args.workers, "concurrency": concurrency, **result}
            )
            print(
                f"  {name:<10} c={concurrency:<3} {result['rate']:7.0f} vends/s "
                f"(p50 {result['p50']:.1f} ms, p95 {result['p95']:.1f} ms, "
                f"server CPU {result['server_cpu_ms']:.1f} ms/vend, "
                f"client CPU {result['client_cpu_ms']:.1f} ms/vend, "
                f"PostgreSQL CPU {result['database_cpu_ms']:.1f} ms/vend, "
                f"answers {result['statuses']} {result['errors'] or ''}, "
                f"duplicate TIDs {result['duplicate_tids']})",
                flush=True,
            )
    finally:
        child.terminate()
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
    return rows


def _postgres_url() -> str | None:
    url = os.environ.get("GRIDVEND_BENCH_DATABASE_URL") or LOCAL_POSTGRES
    engine = make_engine(url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect():
            return url
    except OperationalError:
        return None
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vends", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--meters", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument(
        "--points",
        type=int,
        default=1,
        help="vending points the clerks are spread over (1: every clerk at one counter)",
    )
    parser.add_argument(
        "--client",
        choices=("aiohttp", "httpx"),
        default="aiohttp",
        help="the load generator's HTTP client (httpx: the CPU-heavier one used before)",
    )
    parser.add_argument(
        "--plain-server",
        action="store_true",
        help="run uvicorn on asyncio's loop and h11 instead of uvloop and httptools",
    )
    parser.add_argument(
        "--vend-threads",
        type=int,
        help="worker threads a server process vends on (default: the API's, see vending.lanes)",
    )
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument(
        "--in-process",
        type=int,
        metavar="N",
        help="instead: N vends through vending.api.counter_vend (no HTTP), one thread",
    )
    args = parser.parse_args()
    if args.in_process:
        _in_process_runs(args)
        return
    print(
        f"vends through the REST API: {args.vends} per run, {args.meters} meters, "
        f"{args.points} vending point(s), {args.client} client, "
        f"Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
        f"machine speed {_machine_speed()}"
    )
    rows: list[dict[str, Any]] = []
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            rows += bench("sqlite", f"sqlite:///{tmp}/bench.db", args)
    pg = None if args.skip_postgres else _postgres_url()
    if pg is None:
        print("  postgresql: no server answers (set GRIDVEND_BENCH_DATABASE_URL)")
    else:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = make_engine(pg)
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        separator = "&" if "?" in pg else "?"
        try:
            rows += bench("postgresql", f"{pg}{separator}options=-csearch_path%3D{schema}", args)
        finally:
            with admin.begin() as connection:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    print()
    print(
        "| database | server workers | concurrent clients | vends | seconds | vends/s "
        "| p50 ms | p95 ms | server CPU ms/vend | client CPU ms/vend | PostgreSQL CPU ms/vend |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['database']} | {r['workers']} | {r['concurrency']} | {r['vends']} "
            f"| {r['seconds']:.1f} "
            f"| {r['rate']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['server_cpu_ms']:.1f} "
            f"| {r['client_cpu_ms']:.1f} | {r['database_cpu_ms']:.1f} |"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}, machine speed {_machine_speed()}")


def _machine_speed() -> str:
    """EA07 credit tokens a CPU second on one core, as sts_bench.py's first line (90,655
    on a quiet machine, 3 December). This machine's speed moves by a factor of two or
    more from one minute to the next; the figure tells a slow phase from a slower change."""
    from protocols.sts import CreditToken, CreditType, DecoderKey, encode_token

    key = DecoderKey.from_hex("e653341f9d5bf36f", "07")
    count = 5_000
    start = time.process_time()
    for i in range(count):
        encode_token(CreditToken(CreditType.ELECTRICITY, 5_871_715 + i, 100 + i, i & 15), key)
    return f"{count / (time.process_time() - start):,.0f} EA07 tokens/s"


def _in_process_runs(args: argparse.Namespace) -> None:
    print(f"vend transaction in-process: {args.in_process} vends, 50 meters")
    with tempfile.TemporaryDirectory() as tmp:
        in_process("sqlite", f"sqlite:///{tmp}/bench.db", args.in_process)
    pg = None if args.skip_postgres else _postgres_url()
    if pg is None:
        return
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(pg)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in pg else "?"
    try:
        in_process(
            "postgresql", f"{pg}{separator}options=-csearch_path%3D{schema}", args.in_process
        )
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
