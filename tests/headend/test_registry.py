"""Registration validation and the lifecycle state machine of the meter registry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditEntry, AuditLog, verify_chain
from headend.models import CommissioningRun, Meter, MeterLifecycle
from headend.registry import (
    ALLOWED_TRANSITIONS,
    MeterRegistration,
    MeterUpdate,
    RegistryError,
    find_meter,
    installed_at,
    lifecycle_history,
    meter_pan,
    normalise_meter_number,
    register_meter,
    transition_meter,
    update_meter,
)
from protocols.sts import luhn_check_digit

L = MeterLifecycle
T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
VALID_DRN = "01234567897"  # manufacturer 01, serial 23456789, Luhn digit 7


def registration(serial: str = "M-1", **fields: Any) -> MeterRegistration:
    return MeterRegistration(serial=serial, **fields)


def add(session_factory: sessionmaker[Session], serial: str = "M-1", **fields: Any) -> int:
    with session_factory() as session, session.begin():
        return register_meter(session, registration(serial, **fields), actor="tech", now=T0).id


def pass_commissioning(session_factory: sessionmaker[Session], meter_id: int) -> None:
    with session_factory() as session, session.begin():
        session.add(
            CommissioningRun(
                meter_id=meter_id,
                technician="tech",
                status="passed",
                started_at=T0,
                finished_at=T0,
                failure_reason="",
            )
        )


def lifecycle_of(session_factory: sessionmaker[Session], meter_id: int) -> str:
    with session_factory() as session:
        meter = session.get(Meter, meter_id)
        assert meter is not None
        return meter.lifecycle


def test_valid_drn_is_checked_with_luhn() -> None:
    assert luhn_check_digit(VALID_DRN[:-1]) == int(VALID_DRN[-1])
    assert normalise_meter_number(VALID_DRN) == VALID_DRN


def test_an_18_digit_pan_is_stored_as_its_drn() -> None:
    pan = meter_pan(VALID_DRN)
    assert pan.startswith("600727") and len(pan) == 18
    assert registration(meter_number=pan).meter_number == VALID_DRN
    assert registration(meter_number="0123 4567 897").meter_number == VALID_DRN


def test_a_13_digit_drn_uses_iin_0000() -> None:
    payload = "123412345678"
    drn = payload + str(luhn_check_digit(payload))
    assert meter_pan(drn).startswith("0000" + drn)


@pytest.mark.parametrize(
    ("number", "fragment"),
    [
        ("01234567890", "check digit"),
        ("0123456789", "11 or 13 digits"),
        ("12345678901234567X", "digits"),
        ("999999012345678970", "must start with"),
    ],
)
def test_a_bad_meter_number_is_refused_with_the_reason(number: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        registration(meter_number=number)


@given(st.text(alphabet="0123456789", min_size=10, max_size=10), st.integers(1, 9))
def test_every_wrong_check_digit_is_caught(payload: str, shift: int) -> None:
    good = payload + str(luhn_check_digit(payload))
    assert normalise_meter_number(good) == good
    bad = payload + str((int(good[-1]) + shift) % 10)
    with pytest.raises(ValueError, match="check digit"):
        normalise_meter_number(bad)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"serial": "has space"}, "pattern"),
        ({"serial": "M-1", "supply_group_code": "12345"}, "6 digits"),
        ({"serial": "M-1", "tariff_index": "123"}, "2 digits"),
        ({"serial": "M-1", "key_revision": 0}, "1..9"),
        ({"serial": "M-1", "base_date": 2000}, "base"),
        ({"serial": "M-1", "protocol": "modbus_tcp"}, "needs modbus_profile, modbus_host"),
        (
            {"serial": "M-1", "protocol": "modbus_rtu", "modbus_profile": "dds238-zn"},
            "needs rtu_port, modbus_unit",
        ),
        ({"serial": "M-1", "modbus_profile": "no-such-meter"}, "unknown Modbus profile"),
        (
            {"serial": "M-1", "phases": 1, "modbus_profile": "eastron-sdm630-prepaid"},
            "is a 3-phase meter, not 1-phase",
        ),
        ({"serial": "M-1", "rtu_port": "/dev/ttyUSB0"}, "Modbus RTU meters only"),
        ({"serial": "M-1", "latitude": "-26.2"}, "both latitude and longitude"),
        ({"serial": "M-1", "lifecycle": "active"}, "registered in_stock or installed"),
        ({"serial": "M-1", "colour": "grey"}, "Extra inputs"),
    ],
)
def test_an_invalid_registration_says_what_is_wrong(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        MeterRegistration.model_validate(fields)


def test_a_modbus_tcp_meter_gets_the_default_port(session_factory: sessionmaker[Session]) -> None:
    meter_id = add(
        session_factory,
        protocol="modbus_tcp",
        modbus_profile="eastron-sdm120-prepaid",
        modbus_host="10.0.0.7",
        modbus_unit=3,
        latitude="-26.2041028",
        longitude="28.0473051",
    )
    with session_factory() as session:
        meter = session.get(Meter, meter_id)
        assert meter is not None
        assert (meter.modbus_host, meter.modbus_port, meter.modbus_unit) == ("10.0.0.7", 502, 3)
        assert str(meter.latitude) == "-26.2041028"


@pytest.mark.parametrize(
    "second",
    [
        {"serial": "M-1"},
        {"serial": "M-2", "comm_id": "M-1"},
        {"serial": "M-2", "meter_number": meter_pan(VALID_DRN)},
    ],
)
def test_a_second_meter_with_a_taken_identity_is_refused(
    session_factory: sessionmaker[Session], second: dict[str, Any]
) -> None:
    add(session_factory, meter_number=VALID_DRN)
    with session_factory() as session, session.begin():
        with pytest.raises(RegistryError) as caught:
            register_meter(session, MeterRegistration.model_validate(second), actor="tech")
        assert caught.value.code == "meter_exists"
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Meter)) == 1


def test_find_meter_by_serial_id_or_meter_number(session_factory: sessionmaker[Session]) -> None:
    meter_id = add(session_factory, meter_number=VALID_DRN)
    with session_factory() as session:
        for key in ("M-1", str(meter_id), VALID_DRN, meter_pan(VALID_DRN)):
            assert find_meter(session, key).id == meter_id
        with pytest.raises(RegistryError, match="no meter"):
            find_meter(session, "M-404")


def test_find_meter_prefers_a_serial_over_an_id(session_factory: sessionmaker[Session]) -> None:
    first = add(session_factory, "M-1")
    second = add(session_factory, str(first))  # a meter whose serial is the first one's id
    with session_factory() as session:
        assert find_meter(session, str(first)).id == second


def test_the_whole_lifecycle_is_recorded_with_who_when_and_why(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id = add(session_factory)
    audit = AuditLog()
    steps = [
        (L.INSTALLED, "", T0 + timedelta(hours=1)),
        (L.COMMISSIONED, "", T0 + timedelta(hours=2)),
        (L.ACTIVE, "", T0 + timedelta(hours=3)),
        (L.SUSPENDED, "tamper reported", T0 + timedelta(days=3)),
        (L.ACTIVE, "", T0 + timedelta(days=4)),
        (L.DECOMMISSIONED, "house demolished", T0 + timedelta(days=9)),
    ]
    for target, reason, at in steps:
        if target is L.COMMISSIONED:
            pass_commissioning(session_factory, meter_id)
        with session_factory() as session, session.begin():
            transition_meter(
                session, meter_id, target, actor="sup", reason=reason, audit=audit, now=at
            )
    with session_factory() as session:
        history = lifecycle_history(session, meter_id)
        assert [(h.from_state, h.to_state) for h in history] == [
            (None, "in_stock"),
            ("in_stock", "installed"),
            ("installed", "commissioned"),
            ("commissioned", "active"),
            ("active", "suspended"),
            ("suspended", "active"),
            ("active", "decommissioned"),
        ]
        assert history[4].reason == "tamper reported"
        assert history[4].changed_by == "sup"
        assert history[4].changed_at == T0 + timedelta(days=3)
        entries = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert [e.action for e in entries] == ["meter.lifecycle"] * len(steps)
        assert entries[-1].detail == {
            "from": "active",
            "to": "decommissioned",
            "reason": "house demolished",
        }
        assert verify_chain(session).intact


def test_commissioned_needs_a_passed_commissioning_run(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id = add(session_factory, lifecycle="installed")
    with session_factory() as session, session.begin():
        with pytest.raises(RegistryError) as caught:
            transition_meter(session, meter_id, L.COMMISSIONED, actor="tech")
        assert caught.value.code == "commissioning_required"
    assert lifecycle_of(session_factory, meter_id) == "installed"


@pytest.mark.parametrize("current", list(L))
def test_every_move_outside_the_table_is_refused_and_changes_nothing(
    session_factory: sessionmaker[Session], current: MeterLifecycle
) -> None:
    meter_id = add(session_factory)
    with session_factory() as session, session.begin():
        meter = session.get(Meter, meter_id)
        assert meter is not None
        meter.lifecycle = current.value
    for target in set(L) - ALLOWED_TRANSITIONS[current]:
        with session_factory() as session, session.begin():
            with pytest.raises(RegistryError) as caught:
                transition_meter(session, meter_id, target, actor="tech", reason="because")
            assert caught.value.code == "transition_not_allowed"
    assert lifecycle_of(session_factory, meter_id) == current.value
    with session_factory() as session:
        assert len(lifecycle_history(session, meter_id)) == 1


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (L.ACTIVE, L.SUSPENDED),
        (L.ACTIVE, L.DECOMMISSIONED),
        (L.INSTALLED, L.IN_STOCK),
        (L.DECOMMISSIONED, L.IN_STOCK),
    ],
)
def test_suspensions_and_backward_moves_need_a_reason(
    session_factory: sessionmaker[Session], start: MeterLifecycle, target: MeterLifecycle
) -> None:
    meter_id = add(session_factory)
    with session_factory() as session, session.begin():
        meter = session.get(Meter, meter_id)
        assert meter is not None
        meter.lifecycle = start.value
    with session_factory() as session, session.begin():
        with pytest.raises(RegistryError) as caught:
            transition_meter(session, meter_id, target, actor="tech", reason="  ")
        assert caught.value.code == "reason_required"
    assert lifecycle_of(session_factory, meter_id) == start.value


def test_update_changes_only_the_given_fields_and_is_audited(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id = add(session_factory, model="SDM120", tariff_index="01")
    with session_factory() as session, session.begin():
        update_meter(
            session,
            meter_id,
            MeterUpdate(tariff_index="02", location="12 Main Rd"),
            actor="sup",
            audit=AuditLog(),
        )
    with session_factory() as session:
        meter = session.get(Meter, meter_id)
        assert meter is not None
        assert (meter.model, meter.tariff_index, meter.location) == ("SDM120", "02", "12 Main Rd")
        entry = session.scalars(select(AuditEntry)).one()
        assert entry.action == "meter.update"
        assert entry.detail["before"]["tariff_index"] == "01"
        assert entry.detail["after"]["tariff_index"] == "02"


def test_an_update_that_leaves_the_meter_inconsistent_is_refused(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id = add(session_factory)
    add(session_factory, "M-2")
    for update, code in [
        (MeterUpdate(protocol="modbus_tcp"), "invalid_state"),  # type: ignore[arg-type]
        (MeterUpdate(comm_id="M-2"), "meter_exists"),
    ]:
        with session_factory() as session, session.begin():
            with pytest.raises(RegistryError) as caught:
                update_meter(session, meter_id, update, actor="sup")
            assert caught.value.code == code
    with session_factory() as session:
        meter = session.get(Meter, meter_id)
        assert meter is not None
        assert (meter.protocol, meter.comm_id) == ("mqtt", "M-1")


def test_a_modbus_profile_gives_the_phases_when_they_are_not_stated() -> None:
    three = registration(modbus_profile="eastron-sdm630-prepaid")
    assert three.phases == 3
    assert registration(modbus_profile="dds238-zn").phases == 1


def test_installed_at_is_the_latest_move_into_installed(
    session_factory: sessionmaker[Session],
) -> None:
    meter_id = add(session_factory)
    with session_factory() as session:
        assert installed_at(session, meter_id) is None
    for target, reason, hours in [
        (L.INSTALLED, "", 1),
        (L.IN_STOCK, "wrong address", 2),
        (L.INSTALLED, "", 5),
    ]:
        with session_factory() as session, session.begin():
            transition_meter(
                session, meter_id, target, actor="t", reason=reason, now=T0 + timedelta(hours=hours)
            )
    with session_factory() as session:
        assert installed_at(session, meter_id) == T0 + timedelta(hours=5)
    registered_installed = add(session_factory, "M-2", lifecycle="installed")
    with session_factory() as session:
        assert installed_at(session, registered_installed) == T0
