"""The load-keys step: key change tokens entered over Modbus into a simulated STS meter."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy.orm import Session, sessionmaker

from headend.commissioning import (
    Commissioning,
    KeyLoadRequest,
    KeyLoadUnavailable,
    RunStatus,
    Step,
    StepStatus,
)
from headend.meter_link import modbus_tcp_link
from headend.registry import MeterRegistration, meter_pan, register_meter
from meter_sim.modbus_server import ModbusSimServer, serve_modbus_tcp
from meter_sim.model import DecoderSettings, MeterConfig, MeterModel
from protocols.sts import (
    BaseDate,
    CreditToken,
    CreditType,
    KeyConfig,
    build_key_change,
    derive_decoder_key,
    encode_token,
    parse_meter_number,
    tid_from_datetime,
)

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
DRN = "01234567897"
# The key the simulated meter leaves the factory with (public STS test vending key).
DELIVERY_KEY = DecoderSettings().key_config()


def registry_key(request: KeyLoadRequest) -> KeyConfig:
    return dataclasses.replace(
        DELIVERY_KEY,
        supply_group_code=request.supply_group_code,
        tariff_index=request.tariff_index,
        key_revision=request.key_revision,
    )


class StsKeyLoader:
    """What the composition root's adapter does with vending's security module, here on
    ``protocols.sts`` directly: from the delivery key to the registry's key."""

    def __init__(self, assumed_current: KeyConfig = DELIVERY_KEY) -> None:
        self.assumed_current = assumed_current
        self.requests: list[KeyLoadRequest] = []
        self.loaded: list[tuple[int, int, str]] = []  # meter id, tokens, technician

    def key_change_tokens(self, request: KeyLoadRequest) -> Sequence[str]:
        self.requests.append(request)
        pan = parse_meter_number(request.meter_number)
        return build_key_change(self.assumed_current, registry_key(request), pan).tokens

    def keys_loaded(
        self, request: KeyLoadRequest, tokens: Sequence[str], *, technician: str
    ) -> None:
        self.loaded.append((request.meter_id, len(tokens), technician))


class UnavailableLoader:
    def key_change_tokens(self, request: KeyLoadRequest) -> Sequence[str]:
        raise KeyLoadUnavailable("no vending key for SGC 123456 KRN 2 in the key store")

    def keys_loaded(
        self, request: KeyLoadRequest, tokens: Sequence[str], *, technician: str
    ) -> None:
        raise AssertionError("nothing was loaded")


@pytest.fixture
async def sim() -> AsyncIterator[ModbusSimServer]:
    model = MeterModel(
        MeterConfig(
            serial="SIM-000001",
            meter_number=meter_pan(DRN),
            initial_energy_kwh=Decimal(5),
            initial_credit_kwh=Decimal(10),
        ),
        T0,
    )
    async with serve_modbus_tcp([model], now=lambda: T0, port=0) as server:
        yield server


def register(session_factory: sessionmaker[Session], sim: ModbusSimServer) -> int:
    host, port = sim.address
    with session_factory() as session, session.begin():
        return register_meter(
            session,
            MeterRegistration(
                serial="SIM-000001",
                meter_number=DRN,
                protocol="modbus_tcp",  # type: ignore[arg-type]
                modbus_profile="eastron-sdm120-prepaid",
                modbus_host=host,
                modbus_port=port,
                modbus_unit=1,
                supply_group_code="123456",
                tariff_index="01",
                key_revision=2,
                lifecycle="installed",  # type: ignore[arg-type]
            ),
        ).id


async def test_key_change_tokens_are_entered_and_the_meter_then_takes_new_key_tokens(
    session_factory: sessionmaker[Session], sim: ModbusSimServer
) -> None:
    meter_id = register(session_factory, sim)
    loader = StsKeyLoader()
    service = Commissioning(session_factory, key_loader=loader, clock=lambda: T0)
    view = await service.commission(meter_id, technician="thabo")
    assert view.status is RunStatus.PASSED, view.as_dict()
    keys = {s.step: s for s in view.steps}[Step.LOAD_KEYS]
    assert keys.status is StepStatus.PASSED
    assert keys.detail["answers"] == ["key_change_1st", "accept"]
    assert keys.message.startswith("2 key change tokens accepted")
    assert loader.requests[0].key_revision == 2
    assert loader.loaded == [(meter_id, 2, "thabo")]
    assert view.report is not None and view.report["pending"] == []

    # Proof over the wire: a credit token made with the new key is accepted.
    new_key = derive_decoder_key(
        registry_key(loader.requests[0]), parse_meter_number(meter_pan(DRN))
    )
    token = CreditToken(
        credit_type=CreditType.ELECTRICITY,
        tid=tid_from_datetime(T0, BaseDate.Y2014),
        amount=50,  # 5.0 kWh
    )
    host, port = sim.address
    async with modbus_tcp_link(host, port, 1, "eastron-sdm120-prepaid") as link:
        assert await link.enter_token(encode_token(token, new_key)) == "accept"
    assert sim.model(1).credit_kwh == Decimal(15)


async def test_tokens_for_the_wrong_current_key_fail_the_step(
    session_factory: sessionmaker[Session], sim: ModbusSimServer
) -> None:
    meter_id = register(session_factory, sim)
    wrong = StsKeyLoader(dataclasses.replace(DELIVERY_KEY, key_revision=3))
    service = Commissioning(session_factory, key_loader=wrong, clock=lambda: T0)
    view = await service.commission(meter_id, technician="thabo")
    assert view.status is RunStatus.FAILED
    assert view.failed_step == "load_keys"
    assert "key change token 1 of 2 answered reject" in view.failure_reason


async def test_keys_that_cannot_be_issued_leave_the_step_pending_with_the_reason(
    session_factory: sessionmaker[Session], sim: ModbusSimServer
) -> None:
    meter_id = register(session_factory, sim)
    service = Commissioning(session_factory, key_loader=UnavailableLoader(), clock=lambda: T0)
    view = await service.commission(meter_id, technician="thabo")
    assert view.status is RunStatus.PASSED
    keys = {s.step: s for s in view.steps}[Step.LOAD_KEYS]
    assert keys.status is StepStatus.PENDING
    assert keys.message == (
        "pending: vending key change: no vending key for SGC 123456 KRN 2 in the key store"
    )
