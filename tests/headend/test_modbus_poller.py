"""The Modbus poller against the simulator over real transports (TCP loopback, pty RTU)."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from headend.connectors.modbus import (
    ENERGY_GROUP,
    BreakerState,
    ChannelBusyError,
    FailureReason,
    ModbusPoller,
    PollerConfig,
    PollFailure,
    PollTarget,
    RetryPolicy,
    ScaledClock,
    TcpTransport,
    UnknownMeterError,
)
from headend.connectors.modbus_models import ModbusCommHealth, ModbusPollOutcome
from headend.ingest import Ingestor
from headend.models import Meter, Reading, RejectedMessage
from meter_sim.faults import FaultConfig
from meter_sim.modbus_server import ModbusSimServer
from protocols.mqtt import TopicScheme
from protocols.quantities import Quantity
from tests.headend.modbus_poll_fixtures import START, StepClock, register_meters, sim_fleet

FAST_RETRY = RetryPolicy(attempts=3, base_delay_s=0.005, max_delay_s=0.02)


def make_poller(
    session_factory: sessionmaker[Session],
    targets,
    clock,
    *,
    worker_id: str = "worker-a",
    **config,
) -> ModbusPoller:
    settings = {"timeout_s": 0.15, "retry": FAST_RETRY, **config}
    return ModbusPoller(
        session_factory,
        Ingestor(session_factory, TopicScheme()),
        targets,
        config=PollerConfig(**settings),
        clock=clock,
        rng=random.Random(7),
        worker_id=worker_id,
    )


def outcomes(session_factory: sessionmaker[Session]) -> list[ModbusPollOutcome]:
    with session_factory() as session:
        return list(session.scalars(select(ModbusPollOutcome).order_by(ModbusPollOutcome.id)))


def reading_keys(session_factory: sessionmaker[Session]) -> Counter:
    with session_factory() as session:
        return Counter(session.execute(select(Reading.meter_id, Reading.ts)).all())


async def test_a_clean_pass_stores_one_energy_reading_per_meter_at_the_interval_boundary(
    session_factory: sessionmaker[Session],
):
    clock = StepClock()
    async with sim_fleet(session_factory, now=clock, gateways=(3, 2), rtu_meters=2) as fleet:
        poller = make_poller(session_factory, fleet.targets, clock)
        clock.forward(minutes=20)
        report = await poller.poll_interval("energy", START + timedelta(minutes=15))
        await poller.close()
    assert (report.stored, report.failed) == (7, 0)
    with session_factory() as session:
        rows = session.execute(select(Reading.meter_id, Reading.quantity, Reading.ts)).all()
    ts = START + timedelta(minutes=15)
    assert {r.ts for r in rows} == {ts}
    energy = {r.meter_id for r in rows if r.quantity == Quantity.ENERGY_IMPORT_KWH}
    assert energy == {t.meter_id for t in fleet.targets}
    with session_factory() as session:
        meters = session.scalars(select(Meter)).all()
    assert all(m.online and m.last_seen_at is not None for m in meters)


TCP_FAULTS = FaultConfig(
    drop_rate=0.03,
    latency_s=0.001,
    latency_jitter_s=0.004,
    modbus_exception_rate=0.03,
    modbus_exception_code=6,
)
RTU_FAULTS = FaultConfig(
    drop_rate=0.03,
    latency_jitter_s=0.003,
    modbus_exception_rate=0.03,
    modbus_exception_code=4,
    corrupt_frame_rate=0.05,
)


async def test_fifty_tcp_and_eight_rtu_meters_with_faults_lose_and_double_no_reading(
    session_factory: sessionmaker[Session],
):
    # 15-minute intervals at 450x: one simulated interval per 2 real seconds. The clock
    # starts once the fleet is up, so the first interval gets its full second too.
    clock: list[ScaledClock] = []

    def now():
        return clock[0].now() if clock else START

    async with sim_fleet(
        session_factory,
        now=now,
        gateways=(13, 13, 12, 12),
        rtu_meters=8,
        tcp_faults=TCP_FAULTS,
        rtu_faults=RTU_FAULTS,
        seed=11,
    ) as fleet:
        assert len(fleet.targets) == 58
        clock.append(ScaledClock(START, speed=450))
        poller = make_poller(session_factory, fleet.targets, clock[0])
        stop = asyncio.Event()
        runner = asyncio.create_task(poller.run(stop))
        await clock[0].sleep_until(START + timedelta(minutes=50))
        stop.set()
        await runner
    rows = [o for o in outcomes(session_factory) if o.poll_group == "energy"]
    intervals = sorted({o.interval_ts for o in rows})
    assert intervals[0] == START
    assert len(intervals) >= 4
    assert all(b - a == timedelta(minutes=15) for a, b in itertools.pairwise(intervals))
    # Every meter has exactly one outcome per interval: stored, or failed with a reason.
    per_key = Counter((o.meter_id, o.interval_ts) for o in rows)
    meter_ids = {t.meter_id for t in fleet.targets}
    assert set(per_key) == {(m, ts) for m in meter_ids for ts in intervals}
    assert set(per_key.values()) == {1}
    failed = [o for o in rows if not o.ok]
    assert all(o.reason and o.detail for o in failed)
    # Readings exist exactly for the stored polls, once per quantity.
    stored = {(o.meter_id, o.interval_ts) for o in rows if o.ok}
    keys = reading_keys(session_factory)
    assert set(keys) == stored
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(RejectedMessage)) == 0
        health = session.scalars(select(ModbusCommHealth)).all()
    # The faults happened and were retried: most polls still succeed.
    assert sum(h.timeouts for h in health) > 0
    assert sum(h.modbus_exceptions for h in health) > 0
    assert sum(h.frame_errors for h in health) > 0
    assert sum(h.polls_ok for h in health) == len(stored)
    assert sum(h.polls_failed for h in health) == len(failed)
    assert len(stored) > 0.6 * len(rows)


async def test_failures_are_recorded_with_their_reason_and_modbus_exception_code(
    session_factory: sessionmaker[Session],
):
    clock = StepClock()
    async with (
        sim_fleet(
            session_factory,
            now=clock,
            gateways=(1,),
            tcp_faults=FaultConfig(drop_rate=1.0),
            name="s",
        ) as silent,
        sim_fleet(
            session_factory,
            now=clock,
            gateways=(1,),
            tcp_faults=FaultConfig(modbus_exception_rate=1.0, modbus_exception_code=6),
            name="b",
        ) as busy,
        sim_fleet(
            session_factory,
            now=clock,
            gateways=(1,),
            tcp_faults=FaultConfig(modbus_exception_rate=1.0, modbus_exception_code=2),
            name="i",
        ) as illegal,
        sim_fleet(
            session_factory,
            now=clock,
            rtu_meters=1,
            rtu_faults=FaultConfig(corrupt_frame_rate=1.0),
            name="g",
        ) as garbled,
    ):
        (refused_id,) = register_meters(session_factory, 1, prefix="DOWN", protocol="modbus_tcp")
        refused = PollTarget(refused_id, "eastron-sdm120-prepaid", 1, TcpTransport("127.0.0.1", 9))
        targets = [*silent.targets, *busy.targets, *illegal.targets, *garbled.targets, refused]
        poller = make_poller(session_factory, targets, clock)
        await poller.poll_interval("energy", START)
        await poller.close()
    by_meter = {o.meter_id: o for o in outcomes(session_factory)}
    expect = {
        silent.targets[0].meter_id: (FailureReason.TIMEOUT, None, 3),
        busy.targets[0].meter_id: (FailureReason.MODBUS_EXCEPTION, 6, 3),
        # Illegal address is the request's fault: retrying cannot help.
        illegal.targets[0].meter_id: (FailureReason.MODBUS_EXCEPTION, 2, 1),
        garbled.targets[0].meter_id: (FailureReason.FRAME_ERROR, None, 3),
        refused_id: (FailureReason.CONNECTION_REFUSED, None, 3),
    }
    got = {m: (o.reason, o.exception_code, o.attempts) for m, o in by_meter.items()}
    assert got == {m: (r.value, c, a) for m, (r, c, a) in expect.items()}
    assert reading_keys(session_factory) == Counter()
    with session_factory() as session:
        health = {h.meter_id: h for h in session.scalars(select(ModbusCommHealth))}
    assert health[silent.targets[0].meter_id].timeouts == 3
    assert health[garbled.targets[0].meter_id].frame_errors == 3
    assert health[refused_id].connection_errors == 3
    assert health[busy.targets[0].meter_id].modbus_exceptions == 3


async def test_circuit_breaker_opens_after_consecutive_failures_and_a_probe_closes_it(
    session_factory: sessionmaker[Session],
):
    clock = StepClock()
    async with sim_fleet(session_factory, now=clock, gateways=(2,)) as fleet:
        target = fleet.targets[0]
        sim: ModbusSimServer = fleet.server_of(target.meter_id)
        poller = make_poller(
            session_factory,
            fleet.targets,
            clock,
            breaker_threshold=2,
            breaker_cooldown=timedelta(minutes=30),
        )
        sim.set_offline(fleet.units[target.meter_id][1])
        interval = START
        for _ in range(2):
            await poller.poll_interval("energy", interval)
            interval += timedelta(minutes=15)
            clock.current = interval
        assert poller.breaker_state(target.meter_id) is BreakerState.OPEN
        requests_seen = sim.dropped_requests
        await poller.poll_interval("energy", interval)  # inside the cool-down: skipped
        assert sim.dropped_requests == requests_seen  # nothing was sent to the meter
        sim.set_offline(fleet.units[target.meter_id][1], False)
        interval += timedelta(minutes=30)
        clock.current = interval
        await poller.poll_interval("energy", interval)  # the half-open probe
        assert poller.breaker_state(target.meter_id) is BreakerState.CLOSED
        await poller.close()
    mine = [o for o in outcomes(session_factory) if o.meter_id == target.meter_id]
    assert [(o.ok, o.reason, o.attempts) for o in mine] == [
        (False, "timeout", 3),
        (False, "timeout", 3),
        (False, "circuit_open", 0),
        (True, None, 1),
    ]
    other = [o for o in outcomes(session_factory) if o.meter_id != target.meter_id]
    assert all(o.ok for o in other)


async def test_the_serial_line_never_carries_two_requests_at_once(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
):
    in_flight = 0
    peak = 0
    served = 0
    original = ModbusSimServer.trace_pdu

    def counting_trace_pdu(self: ModbusSimServer, sending: bool, pdu):
        # Instrument the meter side of the line: a request arriving while another is
        # still unanswered would push ``in_flight`` above one.
        nonlocal in_flight, peak, served
        result = original(self, sending, pdu)
        if sending:
            in_flight -= 1
        elif result is not None:
            in_flight += 1
            served += 1
            peak = max(peak, in_flight)
        return result

    monkeypatch.setattr(ModbusSimServer, "trace_pdu", counting_trace_pdu)
    clock = StepClock()
    async with sim_fleet(
        session_factory, now=clock, rtu_meters=8, rtu_faults=FaultConfig(latency_s=0.004)
    ) as fleet:
        poller = make_poller(session_factory, fleet.targets, clock)
        ids = [t.meter_id for t in fleet.targets]
        # A scheduled pass and on-demand reads of every meter, all at once.
        results = await asyncio.gather(
            poller.poll_interval("energy", START),
            *(poller.read_now(m) for m in ids),
            *(poller.read_now(m, "energy") for m in ids[:3]),
        )
        await poller.close()
    assert results[0].stored == 8
    assert all(r.values for r in results[1:])
    assert served >= 8 * 2 + 8 + 3
    assert peak == 1


async def test_the_instrumentation_does_see_parallel_requests_on_a_shared_endpoint(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
):
    """The control for the serial-line test: two masters without the poller overlap."""
    from pymodbus.client import AsyncModbusTcpClient

    in_flight = 0
    peak = 0
    original = ModbusSimServer.trace_pdu

    def counting_trace_pdu(self: ModbusSimServer, sending: bool, pdu):
        nonlocal in_flight, peak
        result = original(self, sending, pdu)
        if sending:
            in_flight -= 1
        elif result is not None:
            in_flight += 1
            peak = max(peak, in_flight)
        return result

    monkeypatch.setattr(ModbusSimServer, "trace_pdu", counting_trace_pdu)
    clock = StepClock()
    async with sim_fleet(
        session_factory, now=clock, gateways=(2,), tcp_faults=FaultConfig(latency_s=0.05)
    ) as fleet:
        port = fleet.targets[0].transport.port  # type: ignore[union-attr]
        clients = [AsyncModbusTcpClient("127.0.0.1", port=port) for _ in range(2)]
        for client in clients:
            assert await client.connect()
        await asyncio.gather(*(c.read_input_registers(0x48, count=2, device_id=1) for c in clients))
        for client in clients:
            client.close()
    assert peak == 2


async def test_two_pollers_on_one_database_split_the_channels_and_poll_each_meter_once(
    session_factory: sessionmaker[Session],
):
    clock = StepClock()
    async with sim_fleet(session_factory, now=clock, gateways=(5, 5, 5, 5), rtu_meters=4) as fleet:
        first = make_poller(session_factory, fleet.targets, clock, worker_id="worker-a")
        second = make_poller(session_factory, fleet.targets, clock, worker_id="worker-b")
        for interval in (START, START + timedelta(minutes=15)):
            clock.current = interval
            reports = await asyncio.gather(
                first.poll_interval("energy", interval), second.poll_interval("energy", interval)
            )
            assert sum(r.stored for r in reports) == 24
            polled = [set(r.channels_polled) for r in reports]
            assert not polled[0] & polled[1]
        await first.close()
        await second.close()
    rows = outcomes(session_factory)
    assert Counter((o.meter_id, o.interval_ts) for o in rows).most_common(1)[0][1] == 1
    assert len(rows) == 48 and all(o.ok for o in rows)
    # A channel stays with the worker that leased it.
    workers_per_channel: dict[str, set[str]] = {}
    for o in rows:
        workers_per_channel.setdefault(o.channel, set()).add(o.worker)
    assert all(len(w) == 1 for w in workers_per_channel.values())
    assert set(reading_keys(session_factory)) == {(o.meter_id, o.interval_ts) for o in rows}


async def test_read_now_returns_and_stores_instantaneous_values_and_refuses_unknown_meters(
    session_factory: sessionmaker[Session],
):
    clock = StepClock()
    async with sim_fleet(session_factory, now=clock, gateways=(2,)) as fleet:
        poller = make_poller(session_factory, fleet.targets, clock)
        clock.forward(minutes=7, seconds=3)
        reading = await poller.read_now(fleet.targets[0].meter_id)
        with pytest.raises(UnknownMeterError):
            await poller.read_now(999_999)
        other = make_poller(session_factory, fleet.targets, clock, worker_id="worker-b")
        with pytest.raises(ChannelBusyError):
            await other.read_now(fleet.targets[1].meter_id)
        await poller.close()
        await other.close()
    assert reading.ts == clock.current
    assert Quantity.VOLTAGE_V in reading.values
    assert Quantity.ENERGY_IMPORT_KWH not in reading.values
    with session_factory() as session:
        stored = session.scalars(select(Reading).where(Reading.ts == clock.current)).all()
    assert {r.quantity for r in stored} == {q.value for q in reading.values}


async def test_a_failed_read_now_raises_its_failure_and_records_it(
    session_factory: sessionmaker[Session],
):
    clock = StepClock()
    async with sim_fleet(
        session_factory, now=clock, gateways=(1,), tcp_faults=FaultConfig(drop_rate=1.0)
    ) as fleet:
        poller = make_poller(session_factory, fleet.targets, clock)
        with pytest.raises(PollFailure) as caught:
            await poller.read_now(fleet.targets[0].meter_id)
        await poller.close()
    assert caught.value.reason is FailureReason.TIMEOUT
    (row,) = outcomes(session_factory)
    assert (row.poll_group, row.ok, row.reason) == ("instantaneous", False, "timeout")


def test_energy_group_is_aligned_to_quarter_hours():
    assert ENERGY_GROUP.interval == timedelta(minutes=15)


async def test_a_lease_cap_spreads_the_channels_over_two_workers(
    session_factory: sessionmaker[Session],
):
    clock = StepClock()
    async with sim_fleet(session_factory, now=clock, gateways=(2, 2, 2, 2)) as fleet:
        workers = [
            make_poller(
                session_factory, fleet.targets, clock, worker_id=name, max_leased_channels=2
            )
            for name in ("worker-a", "worker-b")
        ]
        first = await workers[0].poll_interval("energy", START)
        second = await workers[1].poll_interval("energy", START)
        # The next interval: each keeps its own channels.
        clock.forward(minutes=15)
        again = await workers[0].poll_interval("energy", START + timedelta(minutes=15))
        for worker in workers:
            await worker.close()
    assert len(first.channels_polled) == len(second.channels_polled) == 2
    assert set(first.channels_polled).isdisjoint(second.channels_polled)
    assert sorted(again.channels_polled) == sorted(first.channels_polled)
    assert (first.stored, second.stored, again.stored) == (4, 4, 4)


async def test_a_pass_that_starts_after_its_interval_records_deadline_failures_not_gaps(
    session_factory: sessionmaker[Session],
):
    clock = StepClock()
    async with sim_fleet(session_factory, now=clock, gateways=(3,)) as fleet:
        # Threshold 1: one counted failure would open a breaker.
        poller = make_poller(session_factory, fleet.targets, clock, breaker_threshold=1)
        clock.current = START + timedelta(minutes=20)
        report = await poller.poll_interval("energy", START)
        await poller.close()
    assert report.reasons == Counter({"deadline": 3})
    assert [(o.reason, o.attempts) for o in outcomes(session_factory)] == [("deadline", 0)] * 3
    # Nothing was sent, so nothing counts against the meters.
    assert {poller.breaker_state(t.meter_id) for t in fleet.targets} == {BreakerState.CLOSED}
    assert reading_keys(session_factory) == Counter()


def test_one_channel_configured_two_ways_or_a_unit_id_used_twice_is_refused(
    session_factory: sessionmaker[Session],
):
    from headend.connectors.modbus import RtuTransport, TargetError

    def make(targets):
        return ModbusPoller(session_factory, Ingestor(session_factory, TopicScheme()), targets)

    profile = "dds238-zn"
    with pytest.raises(TargetError, match="two ways"):
        make(
            [
                PollTarget(1, profile, 1, RtuTransport("/dev/ttyS0", 9600)),
                PollTarget(2, profile, 2, RtuTransport("/dev/ttyS0", 19200)),
            ]
        )
    with pytest.raises(TargetError, match="used twice"):
        make(
            [
                PollTarget(1, profile, 5, TcpTransport("gw", 502)),
                PollTarget(2, profile, 5, TcpTransport("gw", 502)),
            ]
        )
    with pytest.raises(TargetError, match="two targets"):
        make(
            [
                PollTarget(1, profile, 5, TcpTransport("gw", 502)),
                PollTarget(1, profile, 6, TcpTransport("gw", 502)),
            ]
        )


async def test_readings_the_database_refuses_are_recorded_as_store_failed(
    session_factory: sessionmaker[Session],
):
    from sqlalchemy import text

    clock = StepClock()
    async with sim_fleet(session_factory, now=clock, gateways=(2,)) as fleet:
        poller = make_poller(session_factory, fleet.targets, clock)
        with session_factory() as session, session.begin():
            session.execute(text("DROP TABLE readings"))
        report = await poller.poll_interval("energy", START)
        await poller.close()
    assert (report.stored, report.failed, report.reasons) == (0, 2, {"store_failed": 2})
    rows = outcomes(session_factory)
    assert [(o.ok, o.reason, o.attempts) for o in rows] == [(False, "store_failed", 1)] * 2
    assert all("readings" in o.detail for o in rows)
