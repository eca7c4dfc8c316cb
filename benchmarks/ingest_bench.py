"""Readings ingested per second: through ``Ingestor.ingest`` directly and over real MQTT.

Cases, each on a fresh database:

* ``direct``: batches of 500 telemetry messages (one per meter, in interval order) handed
  to ``Ingestor.ingest`` in this process, on SQLite and, when reachable, PostgreSQL
  (``--postgres-url``, default the local test database; a schema of its own, dropped
  afterwards). Each message carries four values (energy import, voltage, current,
  power), so a message is four readings.
* ``mqtt``: the same messages published at QoS 1 by a child process to a spawned
  Mosquitto, consumed by the head-end's ``MqttIngestWorker`` feeding an ``Ingestor`` on
  SQLite. Timed from the first publish to the last message stored.
* ``broker``: the broker's own loopback rate in the same run: the same publisher, and a
  subscriber (same aiomqtt client, QoS 1, MQTT 5) that only counts messages.
* ``mqtt xN`` (``--workers N``): the scale-out of issue 5: N head-end worker processes,
  each an ``MqttIngestWorker`` and an ``Ingestor`` with an engine of its own, on one MQTT 5
  shared subscription (``$share/<group>/...``), on SQLite and, when reachable, PostgreSQL.
  Timed from the first publish to the last message stored; the CPU column is the sum of
  the workers' CPU seconds over that time. Every reading must be stored exactly once.

The ratio ``mqtt / broker`` is the target of issue 5 (at least 0.5); the broker case is
one subscriber process, so against ``mqtt xN`` it compares N consumers with one. The
machine is shared, so each case runs ``--rounds`` times and the best is kept; CPU seconds
of this process are printed beside the wall time.

Usage: python benchmarks/ingest_bench.py [--meters 500] [--intervals 40] [--rounds 2]
       [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/test | --no-postgres]
       [--workers 2 [3 ...]] [--only-workers]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiomqtt
import paho.mqtt.client as paho_mqtt
from sqlalchemy import Engine, text

from gridvend.broker import BrokerEndpoint, provide_broker
from gridvend.collector import tune_for_service
from gridvend.db import make_engine, make_session_factory, upgrade
from headend.connectors.mqtt import MqttIngestWorker
from headend.ingest import InboundMessage, Ingestor, IngestStats
from headend.registry import MeterRegistration, register_meter
from protocols.mqtt import MeterChannel, TelemetryReport, TopicScheme
from protocols.quantities import Quantity

INTERVAL = timedelta(minutes=15)
VALUES_PER_MESSAGE = 4
BATCH = 500


@dataclass(frozen=True)
class Result:
    case: str
    database: str
    messages: int
    wall_s: float
    cpu_s: float

    @property
    def readings_per_s(self) -> float:
        return self.messages * VALUES_PER_MESSAGE / self.wall_s

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.wall_s


def _start_time(intervals: int) -> datetime:
    """The first interval boundary, far enough back that the last read is not in the future."""
    now = datetime.now(UTC)
    last = datetime.fromtimestamp(now.timestamp() // 900 * 900, UTC)
    return last - intervals * INTERVAL


def _payloads(meters: int, intervals: int, t0: datetime) -> list[tuple[str, bytes]]:
    """(serial, telemetry payload) in interval order, one message per meter per interval."""
    out = []
    for k in range(intervals + 1):
        for m in range(meters):
            energy = Decimal(1000 + m) + Decimal(k * (100 + m % 300)).scaleb(-3)
            report = TelemetryReport(
                seq=k,
                ts=t0 + k * INTERVAL,
                values={
                    Quantity.ENERGY_IMPORT_KWH: energy,
                    Quantity.VOLTAGE_V: Decimal("230.1") + Decimal(m % 7).scaleb(-1),
                    Quantity.CURRENT_A: Decimal("1.25") + Decimal(m % 5),
                    Quantity.ACTIVE_POWER_W: Decimal(287 + 230 * (m % 5)),
                },
            )
            out.append((f"BENCH-{m:05d}", report.to_bytes()))
    return out


def _register(engine: Engine, meters: int) -> None:
    factory = make_session_factory(engine)
    with factory() as session, session.begin():
        for m in range(meters):
            register_meter(session, MeterRegistration(serial=f"BENCH-{m:05d}"))


@contextmanager
def _database(kind: str, postgres_url: str | None) -> Iterator[Engine]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="gridvend-bench-") as tmp:
            engine = make_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
            upgrade(engine)
            try:
                yield engine
            finally:
                engine.dispose()
        return
    assert postgres_url is not None
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(postgres_url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in postgres_url else "?"
    engine = make_engine(f"{postgres_url}{separator}options=-csearch_path%3D{schema}")
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def bench_direct(kind: str, postgres_url: str | None, meters: int, intervals: int) -> Result:
    scheme = TopicScheme()
    t0 = _start_time(intervals)
    payloads = _payloads(meters, intervals, t0)
    received = t0 + (intervals + 1) * INTERVAL
    messages = [
        InboundMessage(scheme.meter_topic(serial, MeterChannel.TELEMETRY), payload, received)
        for serial, payload in payloads
    ]
    with _database(kind, postgres_url) as engine:
        _register(engine, meters)
        ingestor = Ingestor(make_session_factory(engine), scheme)
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(messages), BATCH):
            ingestor.ingest(messages[i : i + BATCH])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        stored = ingestor.stats.readings_stored
    expected = len(messages) * VALUES_PER_MESSAGE
    if stored != expected:
        raise SystemExit(f"direct/{kind}: stored {stored} of {expected} readings")
    return Result("direct", kind, len(messages), wall, cpu)


def _publish(host: str, port: int, topics_payloads: list[tuple[str, bytes]], go: mp.Event) -> None:  # type: ignore[type-arg]
    """Child process: publish everything at QoS 1, up to 200 messages in flight."""
    client = paho_mqtt.Client(
        paho_mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"bench-pub-{os.getpid()}",
        protocol=paho_mqtt.MQTTv5,
    )
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    go.wait()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in topics_payloads]
    for info in infos:
        info.wait_for_publish(timeout=120)
    client.disconnect()
    client.loop_stop()


def _publisher(
    broker: BrokerEndpoint, topics_payloads: list[tuple[str, bytes]]
) -> tuple[mp.process.BaseProcess, mp.Event]:  # type: ignore[type-arg]
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    process = ctx.Process(
        target=_publish, args=(broker.host, broker.port, topics_payloads, go), daemon=True
    )
    process.start()
    return process, go


async def bench_broker(broker: BrokerEndpoint, meters: int, intervals: int) -> Result:
    prefix = f"bench-{uuid.uuid4().hex[:8]}/"
    scheme = TopicScheme(prefix=prefix)
    payloads = _payloads(meters, intervals, _start_time(intervals))
    topics = [(scheme.meter_topic(s, MeterChannel.TELEMETRY), p) for s, p in payloads]
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(scheme.all_meters(MeterChannel.TELEMETRY), qos=1)
        process, go = _publisher(broker, topics)
        await asyncio.sleep(1.0)  # the child connects before the clock starts
        wall, cpu = time.perf_counter(), time.process_time()
        go.set()
        count = 0
        async for _ in client.messages:
            count += 1
            if count == len(topics):
                break
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await asyncio.to_thread(process.join, 30)
    return Result("broker", "-", count, wall, cpu)


async def bench_mqtt(broker: BrokerEndpoint, meters: int, intervals: int) -> Result:
    prefix = f"bench-{uuid.uuid4().hex[:8]}/"
    scheme = TopicScheme(prefix=prefix)
    payloads = _payloads(meters, intervals, _start_time(intervals))
    topics = [(scheme.meter_topic(s, MeterChannel.TELEMETRY), p) for s, p in payloads]
    with _database("sqlite", None) as engine:
        _register(engine, meters)
        ingestor = Ingestor(make_session_factory(engine), scheme)
        worker = MqttIngestWorker(
            broker.host,
            broker.port,
            scheme=scheme,
            ingest=ingestor.ingest,
            client_id=f"bench-{uuid.uuid4().hex[:8]}",
            mqtt_v5=broker.supports_v5,
        )
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.connected.wait(), 10)
        process, go = _publisher(broker, topics)
        await asyncio.sleep(1.0)
        wall, cpu = time.perf_counter(), time.process_time()
        go.set()
        while ingestor.stats.messages < len(topics):
            await asyncio.sleep(0.005)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(process.join, 30)
        stored = ingestor.stats.readings_stored
    expected = len(topics) * VALUES_PER_MESSAGE
    if stored != expected:
        raise SystemExit(f"mqtt: stored {stored} of {expected} readings")
    return Result("mqtt", "sqlite", len(topics), wall, cpu)


def _run_worker(
    url: str,
    broker: BrokerEndpoint,
    prefix: str,
    share_group: str,
    ready: Any,
    go: Any,
    stop: Any,
    stored: Any,
    results: Any,
    tune_gc: bool,
) -> None:
    """Child process: one head-end worker on the shared subscription until ``stop``."""
    if tune_gc:
        tune_for_service()  # as `gridvend serve` does
    asyncio.run(_worker_main(url, broker, prefix, share_group, ready, go, stop, stored, results))


async def _worker_main(
    url: str,
    broker: BrokerEndpoint,
    prefix: str,
    share_group: str,
    ready: Any,
    go: Any,
    stop: Any,
    stored: Any,
    results: Any,
) -> None:
    engine = make_engine(url)
    ingestor = Ingestor(make_session_factory(engine), TopicScheme(prefix=prefix))

    def ingest(messages: Sequence[InboundMessage]) -> IngestStats:
        batch = ingestor.ingest(messages)
        with stored.get_lock():
            stored.value += batch.messages
        return batch

    worker = MqttIngestWorker(
        broker.host,
        broker.port,
        scheme=TopicScheme(prefix=prefix),
        ingest=ingest,
        client_id=f"bench-{uuid.uuid4().hex[:8]}",
        mqtt_v5=True,
        share_group=share_group,
    )
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.connected.wait(), 10)
    ready.release()
    await asyncio.to_thread(go.wait)
    cpu = time.process_time()
    await asyncio.to_thread(stop.wait)
    cpu = time.process_time() - cpu
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    engine.dispose()
    results.put((cpu, ingestor.stats.readings_stored))


async def bench_workers(
    broker: BrokerEndpoint,
    kind: str,
    postgres_url: str | None,
    workers: int,
    meters: int,
    intervals: int,
    tune_gc: bool,
) -> Result:
    prefix = f"bench-{uuid.uuid4().hex[:8]}/"
    scheme = TopicScheme(prefix=prefix)
    payloads = _payloads(meters, intervals, _start_time(intervals))
    topics = [(scheme.meter_topic(s, MeterChannel.TELEMETRY), p) for s, p in payloads]
    ctx = mp.get_context("spawn")
    ready, stop, stored, results = ctx.Semaphore(0), ctx.Event(), ctx.Value("q", 0), ctx.Queue()
    with _database(kind, postgres_url) as engine:
        _register(engine, meters)
        url = engine.url.render_as_string(hide_password=False)
        group = prefix.strip("/")
        process, go = _publisher(broker, topics)
        children = [
            ctx.Process(
                target=_run_worker,
                args=(url, broker, prefix, group, ready, go, stop, stored, results, tune_gc),
                daemon=True,
            )
            for _ in range(workers)
        ]
        for child in children:
            child.start()
        for _ in children:
            if not await asyncio.to_thread(ready.acquire, True, 60):
                raise SystemExit(f"mqtt x{workers}/{kind}: a worker did not connect")
        await asyncio.sleep(1.0)
        wall = time.perf_counter()
        go.set()
        while stored.value < len(topics):
            await asyncio.sleep(0.005)
        wall = time.perf_counter() - wall
        stop.set()
        outcomes = [await asyncio.to_thread(results.get, True, 60) for _ in children]
        for child in children:
            await asyncio.to_thread(child.join, 30)
        await asyncio.to_thread(process.join, 30)
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT count(*) FROM readings")).scalar_one()
    expected = len(topics) * VALUES_PER_MESSAGE
    if sum(n for _, n in outcomes) != expected or rows != expected:
        raise SystemExit(f"mqtt x{workers}/{kind}: stored {rows} rows of {expected} readings")
    return Result(f"mqtt x{workers}", kind, len(topics), wall, sum(c for c, _ in outcomes))


def _best(results: list[Result]) -> Result:
    return min(results, key=lambda r: r.wall_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=500)
    parser.add_argument("--intervals", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--workers", type=int, nargs="*", default=[], help="also N worker processes, shared"
    )
    parser.add_argument(
        "--default-gc", action="store_true", help="keep CPython's collector settings"
    )
    parser.add_argument(
        "--only-workers", action="store_true", help="skip the direct and one-worker cases"
    )
    args = parser.parse_args()
    if not args.default_gc:
        tune_for_service()  # as `gridvend serve` does

    results: list[Result] = []
    databases = ["sqlite"] if args.no_postgres else ["sqlite", "postgresql"]
    for kind in [] if args.only_workers else databases:
        runs = [
            bench_direct(kind, args.postgres_url, args.meters, args.intervals)
            for _ in range(args.rounds)
        ]
        results.append(_best(runs))
    with provide_broker(None) as broker:
        if broker.kind != "mosquitto":
            print(f"note: no Mosquitto here, measuring the {broker.kind} broker")
        broker_runs, mqtt_runs = [], []
        scaled: dict[tuple[int, str], list[Result]] = {}
        for _ in range(args.rounds):
            broker_runs.append(asyncio.run(bench_broker(broker, args.meters, args.intervals)))
            if not args.only_workers:
                mqtt_runs.append(asyncio.run(bench_mqtt(broker, args.meters, args.intervals)))
            for n in args.workers:
                for kind in databases:
                    run = bench_workers(
                        broker,
                        kind,
                        args.postgres_url,
                        n,
                        args.meters,
                        args.intervals,
                        not args.default_gc,
                    )
                    scaled.setdefault((n, kind), []).append(asyncio.run(run))
        loopback = _best(broker_runs)
        results.append(loopback)
        if mqtt_runs:
            results.append(_best(mqtt_runs))
        results += [_best(runs) for runs in scaled.values()]

    print(
        f"{args.meters} meters x {args.intervals + 1} intervals, "
        f"{VALUES_PER_MESSAGE} readings per message, best of {args.rounds}"
    )
    print(
        f"{'case':<8} {'database':<11} {'messages':>9} {'wall s':>8} {'CPU s':>7} "
        f"{'msg/s':>9} {'readings/s':>11}"
    )
    for r in results:
        print(
            f"{r.case:<8} {r.database:<11} {r.messages:>9} {r.wall_s:>8.2f} {r.cpu_s:>7.2f} "
            f"{r.messages_per_s:>9.0f} {r.readings_per_s:>11.0f}"
        )
    for r in results:
        if r.case.startswith("mqtt"):
            ratio = r.messages_per_s / loopback.messages_per_s
            print(f"ratio {r.case} ({r.database}) / broker loopback: {ratio:.2f}")


if __name__ == "__main__":
    main()
