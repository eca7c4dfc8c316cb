"""Commissioning against simulated meters served over real Modbus TCP (meter_sim)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditEntry, AuditLog, verify_chain
from headend.commissioning import (
    STALE_RUN_AFTER,
    Commissioning,
    CommissioningError,
    RunStatus,
    Step,
    StepStatus,
)
from headend.models import CommissioningRun, Meter, Reading
from headend.registry import MeterRegistration, lifecycle_history, meter_pan, register_meter
from meter_sim.modbus_server import (
    ModbusMeter,
    ModbusSimServer,
    serve_modbus_rtu,
    serve_modbus_tcp,
)
from meter_sim.model import MeterConfig, MeterModel, PrepaidMode
from protocols.modbus import get_profile
from protocols.sts import luhn_check_digit

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def drn(serial8: str, manufacturer: str = "01") -> str:
    payload = manufacturer + serial8
    return payload + str(luhn_check_digit(payload))


@dataclass(frozen=True)
class SimMeter:
    unit: int
    serial: str
    number: str  # the DRN printed on the meter
    profile: str
    mode: PrepaidMode = PrepaidMode.TOKEN
    credit_kwh: str = "50"


FLEET = (
    SimMeter(1, "SIM-000001", drn("00000001"), "eastron-sdm120-prepaid"),
    SimMeter(2, "SIM-000002", drn("00000002"), "eastron-sdm120-prepaid", credit_kwh="0"),
    SimMeter(3, "SIM-000003", drn("00000003"), "dds238-zn", mode=PrepaidMode.CENTRAL),
    SimMeter(4, "SIM-000042", drn("00000042"), "eastron-sdm120"),
)


@pytest.fixture
async def sim() -> AsyncIterator[ModbusSimServer]:
    meters = [
        ModbusMeter(
            m.unit,
            MeterModel(
                MeterConfig(
                    serial=m.serial,
                    meter_number=meter_pan(m.number),
                    prepaid_mode=m.mode,
                    initial_energy_kwh=Decimal("1234.5"),
                    initial_credit_kwh=Decimal(m.credit_kwh),
                ),
                T0,
            ),
            get_profile(m.profile),
        )
        for m in FLEET
    ]
    async with serve_modbus_tcp(meters, now=lambda: T0, port=0) as server:
        yield server


def register(
    session_factory: sessionmaker[Session],
    sim: ModbusSimServer,
    meter: SimMeter,
    **overrides: Any,
) -> int:
    host, port = sim.address
    fields: dict[str, Any] = {
        "serial": meter.serial,
        "meter_number": meter.number,
        "protocol": "modbus_tcp",
        "modbus_profile": meter.profile,
        "modbus_host": host,
        "modbus_port": port,
        "modbus_unit": meter.unit,
        "prepaid_mode": meter.mode.value,
        "supply_group_code": "123456",
        "tariff_index": "01",
        "key_revision": 1,
        "lifecycle": "installed",
        **overrides,
    }
    with session_factory() as session, session.begin():
        # Registered before the run's fixed clock, as in the field (the history is by time).
        return register_meter(
            session, MeterRegistration(**fields), actor="tech", now=T0 - timedelta(hours=1)
        ).id


def lifecycle(session_factory: sessionmaker[Session], meter_id: int) -> str:
    with session_factory() as session:
        meter = session.get(Meter, meter_id)
        assert meter is not None
        return meter.lifecycle


def statuses(view: Any) -> dict[str, str]:
    return {s.step.value: s.status.value for s in view.steps}


@pytest.fixture
def service(session_factory: sessionmaker[Session]) -> Commissioning:
    return Commissioning(session_factory, audit=AuditLog(), clock=lambda: T0)


async def test_an_installed_meter_passes_every_step_and_becomes_commissioned(
    session_factory: sessionmaker[Session], sim: ModbusSimServer, service: Commissioning
) -> None:
    meter_id = register(session_factory, sim, FLEET[0])
    sim.model(1).set_clock(T0 - timedelta(minutes=7))  # the meter's clock runs 7 min late
    view = await service.commission(meter_id, technician="thabo")
    assert view.status is RunStatus.PASSED, view.as_dict()
    assert statuses(view) == {
        "verify_communication": "passed",
        "nameplate": "passed",
        "install_reading": "passed",
        "relay_test": "passed",
        "set_clock": "passed",
        "load_keys": "pending",
        "report": "passed",
    }
    steps = {s.step: s for s in view.steps}
    assert steps[Step.INSTALL_READING].detail["energy_import_kwh"] == "1234.500000"
    assert steps[Step.RELAY_TEST].detail == {
        "initially_closed": True,
        "after_open_closed": False,
        "after_close_closed": True,
    }
    assert steps[Step.SET_CLOCK].message == "clock set; it was -420 s off"
    assert steps[Step.SET_CLOCK].detail["error_after_s"] == 0
    assert sim.model(1).meter_time == T0
    assert steps[Step.LOAD_KEYS].message == "pending: vending key change"
    assert sim.model(1).relay_closed
    assert view.report is not None
    assert view.report["install_reading_kwh"] == "1234.500000"
    assert view.report["pending"] == ["load_keys"]
    assert view.report["technician"] == "thabo"
    assert lifecycle(session_factory, meter_id) == "commissioned"
    with session_factory() as session:
        reading = session.scalars(select(Reading)).one()
        assert (reading.quantity, reading.value, reading.source) == (
            "energy_import_kwh",
            Decimal("1234.5"),
            "commissioning",
        )
        history = lifecycle_history(session, meter_id)
        assert (history[-1].to_state, history[-1].changed_by) == ("commissioned", "thabo")
        actions = session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)).all()
        assert actions == ["meter.lifecycle", "meter.commission"]
        assert verify_chain(session).intact


async def test_a_nameplate_that_differs_from_the_registry_fails_the_run_with_the_reason(
    session_factory: sessionmaker[Session], sim: ModbusSimServer, service: Commissioning
) -> None:
    meter_id = register(session_factory, sim, FLEET[0], meter_number=drn("99999999"))
    view = await service.commission(meter_id, technician="thabo")
    assert view.status is RunStatus.FAILED
    assert view.failed_step == "nameplate"
    assert "meter number: meter reports 600727" in view.failure_reason
    assert f"registry has {drn('99999999')}" in view.failure_reason
    assert statuses(view) == {"verify_communication": "passed", "nameplate": "failed"}
    assert lifecycle(session_factory, meter_id) == "installed"
    assert sim.model(1).relay_closed  # later steps never ran


async def test_a_relay_that_will_not_close_fails_the_relay_test(
    session_factory: sessionmaker[Session], sim: ModbusSimServer, service: Commissioning
) -> None:
    meter_id = register(session_factory, sim, FLEET[1])  # token meter without credit
    view = await service.commission(meter_id, technician="thabo")
    assert view.failed_step == "relay_test"
    assert "did not close" in view.failure_reason
    assert "Modbus exception 4" in view.failure_reason
    assert lifecycle(session_factory, meter_id) == "installed"


async def test_a_meter_without_relay_skips_the_relay_test_and_matches_by_numeric_serial(
    session_factory: sessionmaker[Session], sim: ModbusSimServer, service: Commissioning
) -> None:
    meter_id = register(session_factory, sim, FLEET[3])
    view = await service.commission(meter_id, technician="thabo")
    assert view.status is RunStatus.PASSED, view.as_dict()
    steps = {s.step: s for s in view.steps}
    assert steps[Step.NAMEPLATE].detail["meter"]["numeric_serial"] == 42
    assert steps[Step.RELAY_TEST].status is StepStatus.SKIPPED
    assert "has no relay" in steps[Step.RELAY_TEST].message
    assert steps[Step.SET_CLOCK].status is StepStatus.SKIPPED
    assert steps[Step.SET_CLOCK].message == "profile eastron-sdm120 has no clock register"


async def test_a_central_balance_meter_has_no_keys_to_load(
    session_factory: sessionmaker[Session], sim: ModbusSimServer, service: Commissioning
) -> None:
    meter_id = register(session_factory, sim, FLEET[2])
    view = await service.commission(meter_id, technician="thabo")
    assert view.status is RunStatus.PASSED, view.as_dict()
    assert statuses(view)["load_keys"] == "skipped"
    assert statuses(view)["relay_test"] == "passed"
    assert sim.model(3).relay_closed


async def test_an_unreachable_meter_fails_verification_and_stays_installed(
    session_factory: sessionmaker[Session], sim: ModbusSimServer, service: Commissioning
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    meter_id = register(session_factory, sim, FLEET[0], modbus_port=closed_port)
    view = await service.commission(meter_id, technician="thabo")
    assert view.status is RunStatus.FAILED
    assert view.failed_step == "verify_communication"
    assert "cannot connect" in view.failure_reason
    assert lifecycle(session_factory, meter_id) == "installed"


async def test_the_guided_run_is_stored_step_by_step(
    session_factory: sessionmaker[Session], sim: ModbusSimServer, service: Commissioning
) -> None:
    meter_id = register(session_factory, sim, FLEET[0])
    run_id = service.start(meter_id, technician="thabo")
    assert service.get_run(run_id).next_step is Step.VERIFY_COMMUNICATION
    view = await service.run_next_step(run_id)
    assert [s.step for s in view.steps] == [Step.VERIFY_COMMUNICATION]
    assert service.get_run(run_id).next_step is Step.NAMEPLATE
    while view.next_step is not None:
        view = await service.run_next_step(run_id)
    assert view.status is RunStatus.PASSED
    assert [s.position for s in service.get_run(run_id).steps] == list(range(1, 8))
    with pytest.raises(CommissioningError) as caught:
        await service.run_next_step(run_id)
    assert caught.value.code == "run_finished"


async def test_only_an_installed_meter_without_a_running_run_can_start(
    session_factory: sessionmaker[Session], sim: ModbusSimServer, service: Commissioning
) -> None:
    in_stock = register(session_factory, sim, FLEET[1], lifecycle="in_stock")
    with pytest.raises(CommissioningError) as caught:
        service.start(in_stock, technician="thabo")
    assert caught.value.code == "meter_not_installed"
    with pytest.raises(CommissioningError) as caught:
        service.start(9999, technician="thabo")
    assert caught.value.code == "meter_not_found"

    meter_id = register(session_factory, sim, FLEET[0])
    first = service.start(meter_id, technician="thabo")
    with pytest.raises(CommissioningError) as caught:
        service.start(meter_id, technician="lerato")
    assert caught.value.code == "commissioning_in_progress"
    later = Commissioning(session_factory, clock=lambda: T0 + STALE_RUN_AFTER + timedelta(1))
    second = later.start(meter_id, technician="lerato")
    assert service.get_run(first).status is RunStatus.FAILED
    assert service.get_run(first).failure_reason.startswith("abandoned")
    assert service.get_run(second).status is RunStatus.RUNNING
    with session_factory() as session:
        assert len(session.scalars(select(CommissioningRun)).all()) == 2


async def test_a_meter_on_an_rtu_line_is_commissioned_over_modbus_rtu(
    session_factory: sessionmaker[Session], service: Commissioning
) -> None:
    # pymodbus serves a serial port named socket://... as RTU frames over a TCP socket,
    # and pyserial opens the same URL on the client side: RTU framing without hardware.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        line = f"socket://127.0.0.1:{probe.getsockname()[1]}"
    meter = FLEET[2]
    model = MeterModel(
        MeterConfig(
            serial=meter.serial,
            meter_number=meter_pan(meter.number),
            prepaid_mode=meter.mode,
            initial_energy_kwh=Decimal("88.01"),
        ),
        T0,
    )
    async with serve_modbus_rtu(
        [ModbusMeter(7, model, get_profile(meter.profile))], now=lambda: T0, device=line
    ):
        with session_factory() as session, session.begin():
            meter_id = register_meter(
                session,
                MeterRegistration(
                    serial=meter.serial,
                    meter_number=meter.number,
                    protocol="modbus_rtu",  # type: ignore[arg-type]
                    modbus_profile=meter.profile,
                    rtu_port=line,
                    modbus_unit=7,
                    prepaid_mode="central",  # type: ignore[arg-type]
                    lifecycle="installed",  # type: ignore[arg-type]
                ),
                actor="tech",
            ).id
        view = await service.commission(meter_id, technician="thabo")
    assert view.status is RunStatus.PASSED, view.as_dict()
    assert view.report is not None
    assert view.report["install_reading_kwh"] == "88.010000"
    assert statuses(view)["relay_test"] == "passed"


async def test_two_requests_running_the_same_step_store_it_once(
    session_factory: sessionmaker[Session], sim: ModbusSimServer, service: Commissioning
) -> None:
    meter_id = register(session_factory, sim, FLEET[0])
    run_id = service.start(meter_id, technician="thabo")
    results = await asyncio.gather(
        service.run_next_step(run_id), service.run_next_step(run_id), return_exceptions=True
    )
    conflicts = [r for r in results if isinstance(r, CommissioningError)]
    assert len(conflicts) == 1
    assert conflicts[0].code == "step_conflict"
    assert [s.step for s in service.get_run(run_id).steps] == [Step.VERIFY_COMMUNICATION]
    with session_factory() as session:
        meter = session.get(Meter, meter_id)
        assert meter is not None
        assert meter.last_seen_at == T0  # a meter that answered has been heard from


async def test_a_second_run_at_the_same_instant_keeps_one_install_reading(
    session_factory: sessionmaker[Session], sim: ModbusSimServer, service: Commissioning
) -> None:
    meter_id = register(session_factory, sim, FLEET[0])
    first = await service.commission(meter_id, technician="thabo")
    assert first.status is RunStatus.PASSED
    with session_factory() as session, session.begin():
        meter = session.get(Meter, meter_id)
        assert meter is not None
        meter.lifecycle = "installed"  # re-installed, say after a fault
    second = await service.commission(meter_id, technician="thabo")
    assert second.status is RunStatus.PASSED, second.as_dict()
    with session_factory() as session:
        assert len(session.scalars(select(Reading)).all()) == 1


async def test_the_modbus_only_default_link_refuses_an_mqtt_meter_and_says_why(
    session_factory: sessionmaker[Session], service: Commissioning
) -> None:
    with session_factory() as session, session.begin():
        meter_id = register_meter(
            session,
            MeterRegistration(serial="MQ-1", lifecycle="installed"),  # type: ignore[arg-type]
            actor="tech",
        ).id
    view = await service.commission(meter_id, technician="thabo")
    assert view.failed_step == "verify_communication"
    assert "this link opens Modbus only" in view.failure_reason
    assert lifecycle(session_factory, meter_id) == "installed"
