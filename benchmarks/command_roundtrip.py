"""Command round-trip latency: request -> sent -> meter reply -> read-back -> confirmed.

The simulated meters (``meter_sim.MqttFleet``) run in a child process so they do not share
the head-end's event loop; a Mosquitto broker is spawned on a free port (or the embedded
broker when Mosquitto is missing). The head-end side is the real ``CommandQueue`` on a
database (SQLite file by default, ``--database-url`` for PostgreSQL) and a real
``CommandDispatcher``.

Every figure comes from the timestamps the queue itself stores, on one clock:

* ``round trip``: ``finished_at - requested_at`` (queued, sent, answered, read back,
  confirmed): what a caller such as the balance engine waits for;
* ``to wire``: ``first_sent_at - requested_at`` (claiming and committing "sent");
* ``command``: ``acknowledged_at - first_sent_at`` (publish, meter, reply, stored);
* ``read-back``: ``finished_at - acknowledged_at`` (read_now out and back, confirmed).

Cases: ``sequential`` (one command at a time, relays toggled on random meters) and
``burst`` (one disconnect or connect for every meter at once).

``--tcp-nodelay`` runs the same against a Mosquitto with ``set_tcp_nodelay true`` and
meters whose connections disable Nagle's algorithm: the dispatcher always does; the
broker helper and the simulator do not (yet), and the difference is most of the latency.

Usage: python benchmarks/command_roundtrip.py [--meters 50] [--sequential 200]
       [--bursts 3] [--database-url URL] [--tcp-nodelay]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditLog
from gridvend.broker import BrokerEndpoint, find_mosquitto, free_port, provide_broker
from gridvend.db import make_engine, make_session_factory, upgrade
from headend.commands import CommandQueue, CommandState, CommandStatus, RetryPolicy
from headend.commands.dispatcher import CommandDispatcher
from headend.models import Meter, MeterLifecycle
from meter_sim import MqttFleet, describe_fleet
from protocols.mqtt import TopicScheme

SEED = 11
PREFIX = "bench/"


def _run_fleet(
    host: str,
    port: int,
    v5: bool,
    count: int,
    nodelay: bool,
    ready: EventType,
    stop: EventType,
) -> None:
    if nodelay:
        _patch_meters_nodelay()

    async def main() -> None:
        configs = describe_fleet(count, SEED)
        async with MqttFleet(host, port, configs, topic_prefix=PREFIX, speed=1.0, mqtt_v5=v5):
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)

    asyncio.run(main())


def _patch_meters_nodelay() -> None:
    """Turn Nagle's algorithm off on every aiomqtt connection of this (the fleet's) process.

    Only for ``--tcp-nodelay``: it shows what the round trip becomes once the simulated
    meters' transport sets TCP_NODELAY itself (meter_sim is not changed by this script).
    """
    import aiomqtt

    enter = aiomqtt.Client.__aenter__

    async def enter_without_nagle(self: aiomqtt.Client) -> aiomqtt.Client:
        client = await enter(self)
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client

    aiomqtt.Client.__aenter__ = enter_without_nagle  # type: ignore[method-assign,assignment]


@contextlib.contextmanager
def _mosquitto_without_nagle() -> Iterator[BrokerEndpoint]:
    """A Mosquitto like gridvend.broker's, plus ``set_tcp_nodelay true``."""
    binary = find_mosquitto()
    if binary is None:
        raise SystemExit("--tcp-nodelay needs mosquitto installed")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gridvend-bench-broker-") as tmp:
        config = Path(tmp) / "mosquitto.conf"
        config.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 100000\nmax_inflight_messages 0\nset_tcp_nodelay true\n"
        )
        process = subprocess.Popen(
            [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield BrokerEndpoint("127.0.0.1", port, True, "mosquitto+nodelay")
        finally:
            process.terminate()
            process.wait(5)


def _register(session_factory: sessionmaker[Session], count: int) -> list[int]:
    now = datetime.now(UTC)
    with session_factory() as session, session.begin():
        meters = [
            Meter(
                serial=c.serial,
                comm_id=c.serial,
                meter_number=c.meter_number,
                lifecycle=MeterLifecycle.ACTIVE.value,
                created_at=now,
            )
            for c in describe_fleet(count, SEED)
        ]
        session.add_all(meters)
        session.flush()
        return [m.id for m in meters]


async def _wait_final(queue: CommandQueue, ids: list[int]) -> list[CommandStatus]:
    done: dict[int, CommandStatus] = {}
    while len(done) < len(ids):
        pending = [i for i in ids if i not in done]
        current = await asyncio.to_thread(queue.statuses, pending)
        done.update({i: s for i, s in current.items() if s.final})
        if len(done) < len(ids):
            await asyncio.sleep(0.01)
    return [done[i] for i in ids]


def _ms(delta: timedelta | None) -> float:
    return float("nan") if delta is None else delta.total_seconds() * 1000


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _report(title: str, statuses: list[CommandStatus], wall_s: float) -> None:
    confirmed = [s for s in statuses if s.state is CommandState.CONFIRMED]
    parts = {
        "round trip": [_ms(s.finished_at - s.requested_at) for s in confirmed if s.finished_at],
        "to wire": [_ms(s.first_sent_at - s.requested_at) for s in confirmed if s.first_sent_at],
        "command": [
            _ms(s.acknowledged_at - s.first_sent_at)
            for s in confirmed
            if s.acknowledged_at and s.first_sent_at
        ],
        "read-back": [
            _ms(s.finished_at - s.acknowledged_at)
            for s in confirmed
            if s.finished_at and s.acknowledged_at
        ],
    }
    print(
        f"\n{title}: {len(confirmed)}/{len(statuses)} confirmed in {wall_s:.2f} s "
        f"({len(confirmed) / wall_s:.0f} commands/s)"
    )
    print(f"  {'ms':<11} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'mean':>8}")
    for name, values in parts.items():
        if not values:
            continue
        print(
            f"  {name:<11} {_percentile(values, 50):8.1f} {_percentile(values, 90):8.1f} "
            f"{_percentile(values, 99):8.1f} {max(values):8.1f} {statistics.fmean(values):8.1f}"
        )
    other = [s for s in statuses if s.state is not CommandState.CONFIRMED]
    for s in other[:5]:
        print(f"  not confirmed: {s.id} {s.state.value}: {s.last_error}")


async def _bench(args: argparse.Namespace, broker: BrokerEndpoint, url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    session_factory = make_session_factory(engine)
    meter_ids = _register(session_factory, args.meters)
    queue = CommandQueue(
        session_factory,
        audit=AuditLog(),
        policy=RetryPolicy(reply_timeout=timedelta(seconds=5)),
        rng=random.Random(SEED),
    )
    dispatcher = CommandDispatcher(
        queue,
        broker.host,
        broker.port,
        scheme=TopicScheme(PREFIX),
        instance="bench-headend",
        mqtt_v5=broker.supports_v5,
        poll_interval_s=args.poll,
    )
    queue.set_notify(dispatcher.wake)

    ready, stop = mp.Event(), mp.Event()
    fleet = mp.Process(
        target=_run_fleet,
        args=(
            broker.host,
            broker.port,
            broker.supports_v5,
            args.meters,
            args.tcp_nodelay,
            ready,
            stop,
        ),
        daemon=True,
    )
    fleet.start()
    task = asyncio.create_task(dispatcher.run())
    try:
        if not await asyncio.to_thread(ready.wait, 120):
            raise SystemExit("the simulated fleet did not come up")
        await asyncio.wait_for(dispatcher.connected.wait(), 10)
        print(
            f"broker {broker.kind} (MQTT {'5' if broker.supports_v5 else '3.1.1'}), "
            f"database {engine.dialect.name}, {args.meters} simulated meters, "
            f"dispatcher poll {args.poll * 1000:.0f} ms"
        )
        rng = random.Random(SEED)
        relay_closed = dict.fromkeys(meter_ids, True)

        # Warm-up: one command per meter, not reported.
        await _burst(queue, meter_ids, relay_closed)

        statuses = []
        started = time.perf_counter()
        for _ in range(args.sequential):
            meter = rng.choice(meter_ids)
            name = "connect" if not relay_closed[meter] else "disconnect"
            relay_closed[meter] = name == "connect"
            command_id = await asyncio.to_thread(
                queue.request, meter, name, requested_by="bench", reason="benchmark"
            )
            statuses.extend(await _wait_final(queue, [command_id]))
        _report("sequential", statuses, time.perf_counter() - started)

        for round_number in range(1, args.bursts + 1):
            started = time.perf_counter()
            statuses = await _burst(queue, meter_ids, relay_closed)
            _report(f"burst {round_number}", statuses, time.perf_counter() - started)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        stop.set()
        fleet.join(15)
        engine.dispose()


async def _burst(
    queue: CommandQueue, meter_ids: list[int], relay_closed: dict[int, bool]
) -> list[CommandStatus]:
    def request_all() -> list[int]:
        # As a caller would: from its own thread, while the dispatcher keeps working.
        ids = []
        for meter in meter_ids:
            name = "connect" if not relay_closed[meter] else "disconnect"
            relay_closed[meter] = name == "connect"
            ids.append(queue.request(meter, name, requested_by="bench", reason="benchmark"))
        return ids

    return await _wait_final(queue, await asyncio.to_thread(request_all))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meters", type=int, default=50)
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--poll", type=float, default=0.2, help="dispatcher poll interval, s")
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--tcp-nodelay",
        action="store_true",
        help="also disable Nagle in the broker and the simulated meters (what-if)",
    )
    args = parser.parse_args()
    broker_context = (
        _mosquitto_without_nagle()
        if args.tcp_nodelay
        else provide_broker(os.environ.get("GRIDVEND_MQTT_URL"))
    )
    with broker_context as broker:
        if args.database_url:
            asyncio.run(_bench(args, broker, args.database_url))
            return
        with tempfile.TemporaryDirectory(prefix="gridvend-bench-") as tmp:
            asyncio.run(_bench(args, broker, f"sqlite:///{tmp}/bench.db"))


if __name__ == "__main__":
    main()
