"""Modbus reads per second through the head-end poller, next to a bare pymodbus client.

The simulated gateways run in a child process (so neither client shares its event loop
with the servers): ``--gateways`` Modbus TCP endpoints on free loopback ports, each with
``--meters`` simulated Eastron SDM120 prepaid meters (unit ids 1..N). Both clients read
the same requests (the poller's plan for the energy group) in the same pattern: one
connection per gateway, one request in flight on it, gateways in parallel.

* ``bare pymodbus``: ``AsyncModbusTcpClient`` reads, nothing else;
* ``poller``: ``ModbusPoller.poll_interval`` for successive intervals: leases, locks,
  decoding, ingestion of the readings, outcomes and health counters in the database.

The two alternate (bare, poller, bare, poller, ...) for ``--rounds`` rounds; the table
shows each round, its wall-clock rate and the process CPU time per read (all threads:
the poller's database writes included), then the medians, the ratio taken per pair of
neighbouring rounds (the machine's load drifts less within a pair). ``--latency-ms``
adds a meter turnaround per request in the simulator (default: runs at 0 and 5 ms).
Run ``--database-url postgresql+psycopg://...`` for
PostgreSQL (each run gets its own schema); the default is a SQLite file in a temp dir.

Usage: python benchmarks/modbus_poll.py [--gateways 8] [--meters 32] [--intervals 2] [--rounds 3]
       [--tamper-per-day 0]
       [--latency-ms 0 5] [--database-url postgresql+psycopg://...] [--default-gc]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pymodbus.client import AsyncModbusTcpClient
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from gridvend.collector import tune_for_service
from gridvend.db import make_engine, make_session_factory, upgrade
from headend.connectors.modbus import (
    ENERGY_GROUP,
    ModbusPoller,
    PollerConfig,
    PollTarget,
    TcpTransport,
    group_points,
)
from headend.connectors.modbus_models import ModbusPollOutcome
from headend.connectors.modbus_poll.events import event_points
from headend.ingest import Ingestor
from headend.models import Meter
from meter_sim.faults import FaultConfig
from meter_sim.modbus_server import serve_modbus_tcp
from meter_sim.model import MeterConfig, MeterModel, PrepaidMode
from protocols.modbus import Block, ReadRequest, get_profile, plan_reads
from protocols.mqtt import TopicScheme

PROFILE = get_profile("eastron-sdm120-prepaid")
START = datetime(2026, 11, 24, tzinfo=UTC)


def _models(
    gateway: int, count: int, latency_s: float = 0.0, tamper_per_day: float = 0.0
) -> list[MeterModel]:
    return [
        MeterModel(
            MeterConfig(
                serial=f"PB{gateway:02d}-{i:04d}",
                meter_number=f"600727{gateway * 1000 + i:011d}0",
                seed=i,
                prepaid_mode=PrepaidMode.CENTRAL,
                initial_credit_kwh=Decimal(0),
                faults=FaultConfig(latency_s=latency_s, tamper_per_day=tamper_per_day),
            ),
            START,
        )
        for i in range(1, count + 1)
    ]


async def _serve(
    gateways: int,
    meters: int,
    latency_s: float,
    tamper_per_day: float,
    ready: mp.Queue,  # type: ignore[type-arg]
    stop: mp.Event,
) -> None:
    from contextlib import AsyncExitStack

    loop = asyncio.get_running_loop()
    origin = loop.time()

    def now() -> datetime:
        return START + timedelta(seconds=(loop.time() - origin) * 60)

    async with AsyncExitStack() as stack:
        ports = []
        for g in range(gateways):
            sim = await stack.enter_async_context(
                serve_modbus_tcp(
                    _models(g, meters, latency_s, tamper_per_day), now=now, port=0, profile=PROFILE
                )
            )
            assert sim.address is not None
            ports.append(sim.address[1])
        ready.put(ports)
        while not stop.is_set():
            await asyncio.sleep(0.05)


def _server_process(
    gateways: int,
    meters: int,
    latency_s: float,
    tamper_per_day: float,
    ready: mp.Queue,  # type: ignore[type-arg]
    stop: mp.Event,
) -> None:
    asyncio.run(_serve(gateways, meters, latency_s, tamper_per_day, ready, stop))


def _energy_plan() -> tuple[ReadRequest, ...]:
    """The poller's plan for the energy group: its quantities and the event count beside
    the credit register (the event log itself is read only when the count moves, which
    it does not between the measured passes)."""
    return plan_reads(PROFILE, (*group_points(PROFILE, ENERGY_GROUP), *event_points(PROFILE)))


async def _bare_pass(clients: list[AsyncModbusTcpClient], meters: int) -> int:
    plan = _energy_plan()

    async def one(client: AsyncModbusTcpClient) -> int:
        reads = 0
        for unit in range(1, meters + 1):
            for request in plan:
                if request.block is Block.INPUT:
                    reply = await client.read_input_registers(
                        request.address, count=request.count, device_id=unit
                    )
                else:
                    reply = await client.read_holding_registers(
                        request.address, count=request.count, device_id=unit
                    )
                if reply.isError():
                    raise RuntimeError(reply)
                reads += 1
        return reads

    return sum(await asyncio.gather(*(one(c) for c in clients)))


class _TimedIngestor(Ingestor):
    """Counts the time spent in the head-end's ingestion path (not the poller's)."""

    seconds = 0.0
    polls = 0
    events = 0

    def ingest_polled(self, polls, events=()):  # type: ignore[no-untyped-def]
        began = time.perf_counter()
        try:
            return super().ingest_polled(polls, events)
        finally:
            _TimedIngestor.seconds += time.perf_counter() - began
            _TimedIngestor.polls += len(polls)
            _TimedIngestor.events += sum(len(e.events) for e in events)


def _requests_sent(factory: sessionmaker[Session], interval_ts: datetime) -> int:
    """The poller's requests in the pass for ``interval_ts``, event log reads included."""
    with factory() as session:
        total = session.scalar(
            select(func.sum(ModbusPollOutcome.requests)).where(
                ModbusPollOutcome.interval_ts == interval_ts
            )
        )
    return int(total or 0)


class _FixedClock:
    def __init__(self) -> None:
        self.current = START

    def now(self) -> datetime:
        return self.current

    async def sleep_until(self, moment: datetime) -> None:
        self.current = max(self.current, moment)


def _database(url: str | None) -> tuple[str, object]:
    if url is None:
        path = os.path.join(tempfile.mkdtemp(prefix="gridvend-bench-"), "bench.db")
        return f"sqlite:///{path}", None
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}", (admin, schema)


async def _run(
    args: argparse.Namespace, ports: list[int]
) -> list[tuple[str, int, int, float, float]]:
    url, cleanup = _database(args.database_url)
    engine = make_engine(url)
    upgrade(engine)
    factory = make_session_factory(engine)
    targets = []
    with factory() as session, session.begin():
        for g, port in enumerate(ports):
            for unit in range(1, args.meters + 1):
                meter = Meter(
                    serial=f"PB{g:02d}-{unit:04d}",
                    comm_id=f"PB{g:02d}-{unit:04d}",
                    protocol="modbus_tcp",
                    created_at=START,
                )
                session.add(meter)
                session.flush()
                targets.append(
                    PollTarget(meter.id, PROFILE.name, unit, TcpTransport("127.0.0.1", port))
                )
    clock = _FixedClock()
    poller = ModbusPoller(
        factory,
        _TimedIngestor(factory, TopicScheme()),
        targets,
        config=PollerConfig(timeout_s=3, write_batch=args.write_batch),
        clock=clock,
        worker_id="bench",
    )
    clients = [AsyncModbusTcpClient("127.0.0.1", port=p, timeout=3, retries=0) for p in ports]
    for client in clients:
        assert await client.connect()
    # Warm-up: connections, statement caches, the simulator's first reads.
    await _bare_pass(clients, args.meters)
    await poller.poll_interval("energy", clock.current)
    rows: list[tuple[str, int, int, float, float]] = []
    for round_ in range(1, args.rounds + 1):
        began, cpu = time.perf_counter(), time.process_time()
        reads = 0
        for _ in range(args.intervals):
            reads += await _bare_pass(clients, args.meters)
        rows.append(
            (
                "bare pymodbus",
                round_,
                reads,
                time.perf_counter() - began,
                time.process_time() - cpu,
            )
        )
        passes: list[datetime] = []
        began, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.intervals):
            clock.current += timedelta(minutes=15)
            report = await poller.poll_interval("energy", clock.current)
            if report.failed:
                raise RuntimeError(f"poll failures in the benchmark: {report.reasons}")
            passes.append(clock.current)
        seconds, cpu_s = time.perf_counter() - began, time.process_time() - cpu
        # Counted after the timing: event log reads make the requests vary per pass.
        reads = sum(_requests_sent(factory, interval_ts) for interval_ts in passes)
        rows.append(("poller", round_, reads, seconds, cpu_s))
    for client in clients:
        client.close()
    await poller.close()
    engine.dispose()
    if cleanup is not None:
        admin, schema = cleanup  # type: ignore[misc]
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    return rows


def _measure(
    args: argparse.Namespace, latency_ms: float
) -> list[tuple[str, int, int, float, float]]:
    ready: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    stop = mp.Event()
    server = mp.Process(
        target=_server_process,
        args=(args.gateways, args.meters, latency_ms / 1000, args.tamper_per_day, ready, stop),
        daemon=True,
    )
    server.start()
    try:
        ports = ready.get(timeout=30)
        return asyncio.run(_run(args, ports))
    finally:
        stop.set()
        server.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=8)
    parser.add_argument("--meters", type=int, default=32, help="meters per gateway")
    parser.add_argument("--intervals", type=int, default=2, help="passes per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--latency-ms",
        type=float,
        nargs="+",
        default=[0.0, 5.0],
        help="meter turnaround per request added by the simulator (one run each)",
    )
    parser.add_argument(
        "--tamper-per-day",
        type=float,
        default=0.0,
        help="simulated tamper events per meter per simulated day (sim time runs 60x): "
        "with 1440, most meters log a new event between two passes, so most polls read the "
        "event log too",
    )
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--write-batch", type=int, default=PollerConfig().write_batch)
    parser.add_argument(
        "--default-gc", action="store_true", help="keep CPython's collector settings"
    )
    args = parser.parse_args()
    if not args.default_gc:
        tune_for_service()  # as `gridvend serve` does
    database = "SQLite" if args.database_url is None else "PostgreSQL"
    table = Table(
        title=f"Modbus polling: {args.gateways} gateways x {args.meters} meters, {database}"
    )
    for column in (
        "meter latency",
        "client",
        "round",
        "reads",
        "seconds",
        "reads/s",
        "CPU µs/read",
    ):
        table.add_column(column, justify="left" if column == "client" else "right")
    summary: list[tuple[float, float, float, float, float, float]] = []
    for latency_ms in args.latency_ms:
        rates: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        for client, round_, reads, seconds, cpu_s in _measure(args, latency_ms):
            rates.setdefault(client, []).append(reads / seconds)
            cpu.setdefault(client, []).append(cpu_s / reads * 1e6)
            table.add_row(
                f"{latency_ms:g} ms",
                client,
                str(round_),
                str(reads),
                f"{seconds:.3f}",
                f"{reads / seconds:,.0f}",
                f"{cpu_s / reads * 1e6:,.0f}",
            )
        # Each poller round against the bare round just before it: the machine's load
        # drifts less within a pair than across the run.
        pairs = [p / b for b, p in zip(rates["bare pymodbus"], rates["poller"], strict=True)]
        summary.append(
            (
                latency_ms,
                statistics.median(rates["bare pymodbus"]),
                statistics.median(rates["poller"]),
                statistics.median(pairs),
                statistics.median(cpu["bare pymodbus"]),
                statistics.median(cpu["poller"]),
            )
        )
    console = Console()
    console.print(table)
    if _TimedIngestor.polls:
        per_poll_ms = _TimedIngestor.seconds / _TimedIngestor.polls * 1000
        print(
            f"Ingestor.ingest_polled: {per_poll_ms:.2f} ms per polled meter "
            f"({_TimedIngestor.polls} polls, {_TimedIngestor.events} events read)"
        )
    result = Table(title="Medians: poller reads/s as a share of the bare pymodbus client's")
    columns = (
        "meter latency",
        "bare reads/s",
        "poller reads/s",
        "poller / bare (paired rounds)",
        "bare CPU µs/read",
        "poller CPU µs/read",
    )
    for column in columns:
        result.add_column(column, justify="right")
    for latency_ms, bare, polled, ratio, bare_cpu, poller_cpu in summary:
        result.add_row(
            f"{latency_ms:g} ms",
            f"{bare:,.0f}",
            f"{polled:,.0f}",
            f"{ratio:.0%}",
            f"{bare_cpu:,.0f}",
            f"{poller_cpu:,.0f}",
        )
    console.print(result)
    print("target: poller >= 80% of bare pymodbus")


if __name__ == "__main__":
    main()
