"""Commissioning loads keys in the running system: the API's key loader issues key change
tokens from the delivery key to the registry's key with vending's security module, and a
simulated STS meter over Modbus TCP takes them."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.app import create_app
from gridvend.audit import AuditEntry, AuditLog
from gridvend.db import make_read_only_session_factory
from gridvend.key_loading import DeliveryKey, SecurityModuleKeyLoader
from headend.commissioning import KeyLoadRequest, KeyLoadUnavailable
from headend.meter_link import modbus_tcp_link
from headend.registry import MeterRegistration, meter_pan, register_meter
from meter_sim.modbus_server import ModbusSimServer, serve_modbus_tcp
from meter_sim.model import DecoderSettings, MeterConfig, MeterModel
from protocols.sts import BaseDate, CreditType, KeyConfig, tid_from_datetime
from tests.conftest import bearer_headers
from vending.keystore import KeyEncryptionKey, KeyStore
from vending.models_keychange import KeyChangeRecord
from vending.security_module import MeterKeyRef, SoftwareSecurityModule

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
DRN = "01234567897"
# The simulated meter leaves the factory on this key (public STS test vending key).
FACTORY_KEY = DecoderSettings().key_config()
DELIVERY = DeliveryKey(
    FACTORY_KEY.supply_group_code, FACTORY_KEY.tariff_index, FACTORY_KEY.key_revision
)
# The utility's key the registry assigns: same supply group, next key revision.
UTILITY_KEY = dataclasses.replace(FACTORY_KEY, vending_key=secrets.token_bytes(20), key_revision=2)


@pytest.fixture
def security_module(engine: Engine, session_factory: sessionmaker[Session]) -> Any:
    keystore = KeyStore(KeyEncryptionKey.generate())
    with session_factory() as session, session.begin():
        for config in (FACTORY_KEY, UTILITY_KEY):
            keystore.add_key(session, config, now=T0)
    return SoftwareSecurityModule(keystore, make_read_only_session_factory(engine))


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


def _register(
    session_factory: sessionmaker[Session], sim: ModbusSimServer, key: KeyConfig = UTILITY_KEY
) -> int:
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
                supply_group_code=key.supply_group_code,
                tariff_index=key.tariff_index,
                key_revision=key.key_revision,
                lifecycle="installed",  # type: ignore[arg-type]
            ),
        ).id


async def _commission(
    session_factory: sessionmaker[Session],
    security_module: Any,
    meter_id: int,
    delivery_key: DeliveryKey | None,
) -> dict[str, Any]:
    app = create_app(session_factory, security_module=security_module, delivery_key=delivery_key)
    headers = bearer_headers(session_factory, "technician")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gridvend", headers=headers
    ) as api:
        response = await api.post(f"/api/meters/{meter_id}/commissioning", json={})
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    return run


def _load_keys(run: dict[str, Any]) -> dict[str, Any]:
    step: dict[str, Any] = {s["step"]: s for s in run["steps"]}["load_keys"]
    return step


def _audited(session_factory: sessionmaker[Session], action: str) -> list[AuditEntry]:
    with session_factory() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


async def test_commissioning_over_the_api_moves_the_meter_from_the_delivery_key_to_the_registry_key(
    session_factory: sessionmaker[Session], security_module: Any, sim: ModbusSimServer
) -> None:
    meter_id = _register(session_factory, sim)
    run = await _commission(session_factory, security_module, meter_id, DELIVERY)

    assert run["status"] == "passed", run
    keys = _load_keys(run)
    assert keys["status"] == "passed"
    assert keys["detail"]["answers"] == ["key_change_1st", "accept"]
    (issued,) = _audited(session_factory, "sts.key_change_issued")
    assert (issued.actor, issued.subject) == ("commissioning", "meter:SIM-000001")
    assert issued.detail == {"from": "123456/01/1", "to": "123456/01/2", "tokens": 2}
    # The meter's key history has the change, completed by the technician who ran it.
    with session_factory() as session:
        (history,) = session.scalars(select(KeyChangeRecord)).all()
    assert (history.meter_id, history.status) == (meter_id, "completed")
    assert history.completed_by is not None and history.completed_by.startswith("technician-")
    assert (history.from_key_revision, history.to_key_revision) == (1, 2)
    assert len(history.tokens) == 2
    (loaded,) = _audited(session_factory, "key_change.loaded")
    assert loaded.detail["key_change_id"] == history.id

    # The proof: a credit token vending issues for the registry's key is accepted.
    token = security_module.credit_token(
        MeterKeyRef(DRN, "123456", "01", 2),
        credit_type=CreditType.ELECTRICITY,
        amount=50,  # 5.0 kWh
        tid=tid_from_datetime(T0, BaseDate.Y2014),
    )
    host, port = sim.address
    async with modbus_tcp_link(host, port, 1, "eastron-sdm120-prepaid") as link:
        assert await link.enter_token(token.digits) == "accept"
    assert sim.model(1).credit_kwh == Decimal(15)


async def test_without_a_delivery_key_loading_stays_pending_and_says_what_to_set(
    session_factory: sessionmaker[Session], security_module: Any, sim: ModbusSimServer
) -> None:
    meter_id = _register(session_factory, sim)
    run = await _commission(session_factory, security_module, meter_id, None)

    assert run["status"] == "passed", run
    keys = _load_keys(run)
    assert keys["status"] == "pending"
    assert "GRIDVEND_COMMISSIONING_DELIVERY_KEY" in keys["message"]
    assert _audited(session_factory, "sts.key_change_issued") == []


async def test_a_registry_key_missing_from_the_key_store_leaves_loading_pending_with_the_reason(
    session_factory: sessionmaker[Session], security_module: Any, sim: ModbusSimServer
) -> None:
    unknown = dataclasses.replace(UTILITY_KEY, key_revision=3)
    meter_id = _register(session_factory, sim, unknown)
    run = await _commission(session_factory, security_module, meter_id, DELIVERY)

    keys = _load_keys(run)
    assert keys["status"] == "pending"
    assert keys["message"] == (
        "pending: vending key change: no vending key for supply group 123456 revision 3"
    )
    assert _audited(session_factory, "sts.key_change_issued") == []


def _request(**fields: Any) -> KeyLoadRequest:
    base: dict[str, Any] = {
        "meter_id": 1,
        "serial": "SIM-000001",
        "meter_number": DRN,
        "supply_group_code": "123456",
        "tariff_index": "01",
        "key_revision": 2,
    }
    return KeyLoadRequest(**{**base, **fields})


def test_a_meter_registered_on_the_delivery_key_needs_no_tokens(
    session_factory: sessionmaker[Session], security_module: Any
) -> None:
    loader = SecurityModuleKeyLoader(security_module, DELIVERY, session_factory, AuditLog())
    assert loader.key_change_tokens(_request(key_revision=1)) == []


def test_registry_key_attributes_that_disagree_with_the_key_store_are_refused(
    session_factory: sessionmaker[Session], security_module: Any
) -> None:
    loader = SecurityModuleKeyLoader(security_module, DELIVERY, session_factory, AuditLog())
    with pytest.raises(KeyLoadUnavailable, match="base_date 1993 \\(key store: 2014\\)"):
        loader.key_change_tokens(_request(base_date=1993))
    assert len(loader.key_change_tokens(_request(base_date=2014, encryption_algorithm="07"))) == 2


def test_a_delivery_key_is_written_sgc_ti_krn() -> None:
    assert DeliveryKey.parse("600727/01/1") == DeliveryKey("600727", "01", 1)
    assert str(DeliveryKey("600727", "01", 1)) == "600727/01/1"
    for bad in ("600727/1/1", "600727/01/0", "60072/01/1", "600727-01-1"):
        with pytest.raises(ValueError, match="SGC/TI/KRN"):
            DeliveryKey.parse(bad)
