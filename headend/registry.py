"""The meter registry: registering meters, editing them, and moving them through their lifecycle.

A meter's lifecycle runs ``in_stock -> installed -> commissioned -> active``, and from there
to ``suspended`` (and back) or ``decommissioned``. Every move is checked against
``ALLOWED_TRANSITIONS``, written to ``meter_lifecycle_changes`` (who, when, from, to, why)
and appended to the audit log when one is given. ``commissioned`` is reached only through
a passed commissioning run (``headend.commissioning``).

Every function here validates first and raises ``RegistryError`` (or pydantic's
``ValidationError`` for a malformed registration) before it changes anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from headend.audit import AuditSink
from headend.models import (
    CommissioningRun,
    Meter,
    MeterLifecycle,
    MeterLifecycleChange,
    MeterProtocol,
    PrepaidMode,
)
from protocols.modbus import PROFILES
from protocols.mqtt.topics import METER_ID_PATTERN
from protocols.sts import MeterNumberError, parse_meter_number
from protocols.sts.errors import StsError
from protocols.sts.fields import BaseDate
from protocols.sts.keys import (
    Dkga,
    EncryptionAlgorithm,
    KeyType,
    check_key_expiry_number,
    check_key_revision,
    check_supply_group_code,
    check_tariff_index,
)

L = MeterLifecycle

# Which lifecycle moves are allowed. Forward moves follow the installation; the backward
# ones are the field's real corrections (a meter taken down before commissioning goes back
# to the store; a commissioned meter that fails before going live is re-installed and
# commissioned again; a refurbished meter returns to stock).
ALLOWED_TRANSITIONS: Mapping[MeterLifecycle, frozenset[MeterLifecycle]] = {
    L.IN_STOCK: frozenset({L.INSTALLED, L.DECOMMISSIONED}),
    L.INSTALLED: frozenset({L.COMMISSIONED, L.IN_STOCK, L.DECOMMISSIONED}),
    L.COMMISSIONED: frozenset({L.ACTIVE, L.INSTALLED, L.DECOMMISSIONED}),
    L.ACTIVE: frozenset({L.SUSPENDED, L.DECOMMISSIONED}),
    L.SUSPENDED: frozenset({L.ACTIVE, L.DECOMMISSIONED}),
    L.DECOMMISSIONED: frozenset({L.IN_STOCK}),
}

_FORWARD = (L.IN_STOCK, L.INSTALLED, L.COMMISSIONED, L.ACTIVE)

# States a meter may be registered in: anything further needs the workflow or a transition.
REGISTRABLE_STATES = frozenset({L.IN_STOCK, L.INSTALLED})
# From commissioning on, the meter holds the key its registry fields describe.
KEY_HOLDING_STATES = frozenset({L.COMMISSIONED.value, L.ACTIVE.value, L.SUSPENDED.value})
KEY_FIELDS = frozenset(
    {
        "supply_group_code",
        "tariff_index",
        "key_revision",
        "key_type",
        "base_date",
        "key_expiry_number",
        "encryption_algorithm",
        "dkga",
    }
)

DEFAULT_MODBUS_TCP_PORT = 502
DEFAULT_RTU_BAUD = 9600
RTU_BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


class RegistryError(ValueError):
    """A registry request that cannot be carried out; ``code`` is machine-readable.

    Codes: ``meter_exists``, ``meter_not_found``, ``transition_not_allowed``,
    ``reason_required``, ``commissioning_required``, ``invalid_state``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def normalise_meter_number(text: str) -> str:
    """The meter number (DRN: 11 digits for IIN 600727, 13 for IIN 0000) of a typed meter
    number or 18-digit PAN, spaces and dashes removed.

    Raises:
        ValueError: not digits, a wrong length, an unknown IIN or a wrong check digit.
    """
    try:
        return parse_meter_number(text).drn
    except MeterNumberError as exc:
        raise ValueError(str(exc)) from None


def meter_pan(meter_number: str) -> str:
    """The 18-digit STS PAN (IIN + DRN + check digit) of a stored meter number.

    Raises:
        ValueError: the meter number is not valid.
    """
    try:
        return parse_meter_number(meter_number).digits
    except MeterNumberError as exc:
        raise ValueError(str(exc)) from None


def _sts_check(check: Any, value: Any) -> Any:
    try:
        return check(value)
    except StsError as exc:
        raise ValueError(str(exc)) from None


class _MeterFields(BaseModel):
    """Fields shared by a registration and an update; validators normalise them."""

    model_config = ConfigDict(extra="forbid")

    comm_id: Annotated[str | None, Field(pattern=METER_ID_PATTERN.pattern)] = None
    meter_number: str | None = Field(
        default=None, description="11/13-digit DRN or 18-digit PAN; stored as the DRN."
    )
    model: Annotated[str, Field(max_length=64)] = ""
    phases: Annotated[int, Field(ge=1, le=3)] = 1
    protocol: MeterProtocol = MeterProtocol.MQTT
    prepaid_mode: PrepaidMode = PrepaidMode.TOKEN

    supply_group_code: str | None = None
    tariff_index: str | None = None
    key_revision: int | None = None
    key_type: int | None = None
    base_date: int | None = None
    key_expiry_number: int | None = None
    encryption_algorithm: str | None = None
    dkga: str | None = None

    rated_max_current_a: Annotated[int | None, Field(ge=1, le=1000)] = None
    location: Annotated[str, Field(max_length=255)] = ""
    latitude: Annotated[Decimal | None, Field(ge=-90, le=90, decimal_places=7)] = None
    longitude: Annotated[Decimal | None, Field(ge=-180, le=180, decimal_places=7)] = None

    modbus_profile: str | None = None
    modbus_host: Annotated[str | None, Field(min_length=1, max_length=255)] = None
    modbus_port: Annotated[int | None, Field(ge=1, le=65535)] = None
    rtu_port: Annotated[str | None, Field(min_length=1, max_length=255)] = None
    rtu_baud: int | None = None
    rtu_parity: str | None = None
    modbus_unit: Annotated[int | None, Field(ge=1, le=247)] = None

    @field_validator("meter_number")
    @classmethod
    def _meter_number(cls, value: str | None) -> str | None:
        return None if value is None else normalise_meter_number(value)

    @field_validator("supply_group_code")
    @classmethod
    def _sgc(cls, value: str | None) -> str | None:
        return None if value is None else _sts_check(check_supply_group_code, value)

    @field_validator("tariff_index")
    @classmethod
    def _ti(cls, value: str | None) -> str | None:
        return None if value is None else _sts_check(check_tariff_index, value)

    @field_validator("key_revision")
    @classmethod
    def _krn(cls, value: int | None) -> int | None:
        return None if value is None else _sts_check(check_key_revision, value)

    @field_validator("key_type")
    @classmethod
    def _kt(cls, value: int | None) -> int | None:
        return None if value is None else int(_sts_check(KeyType.parse, value))

    @field_validator("base_date")
    @classmethod
    def _bd(cls, value: int | None) -> int | None:
        return None if value is None else int(_sts_check(BaseDate.parse, value))

    @field_validator("key_expiry_number")
    @classmethod
    def _ken(cls, value: int | None) -> int | None:
        return None if value is None else _sts_check(check_key_expiry_number, value)

    @field_validator("encryption_algorithm")
    @classmethod
    def _ea(cls, value: str | None) -> str | None:
        return None if value is None else str(_sts_check(EncryptionAlgorithm.parse, value).value)

    @field_validator("dkga")
    @classmethod
    def _dkga(cls, value: str | None) -> str | None:
        if value is None:
            return None
        dkga = _sts_check(Dkga.parse, value)
        if dkga not in (Dkga.DKGA02, Dkga.DKGA04):
            raise ValueError(f"key generation algorithm must be DKGA02 or DKGA04, got {value!r}")
        return str(dkga.value)

    @field_validator("modbus_profile")
    @classmethod
    def _profile(cls, value: str | None) -> str | None:
        if value is not None and value not in PROFILES:
            raise ValueError(
                f"unknown Modbus profile {value!r}; known: {', '.join(sorted(PROFILES))}"
            )
        return value

    @field_validator("rtu_baud")
    @classmethod
    def _baud(cls, value: int | None) -> int | None:
        if value is not None and value not in RTU_BAUDS:
            raise ValueError(f"baud rate must be one of {', '.join(map(str, RTU_BAUDS))}")
        return value

    @field_validator("rtu_parity")
    @classmethod
    def _parity(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parity = value.strip().upper()[:1]
        if parity not in ("N", "E", "O"):
            raise ValueError(f"parity must be N, E or O, got {value!r}")
        return parity


def _check_addressing(fields: _MeterFields) -> None:
    """The transport address must be complete for the meter's protocol."""
    if fields.protocol is MeterProtocol.MODBUS_TCP:
        missing = [
            n for n in ("modbus_profile", "modbus_host", "modbus_unit") if not getattr(fields, n)
        ]
        if missing:
            raise ValueError(f"a Modbus TCP meter needs {', '.join(missing)}")
    elif fields.protocol is MeterProtocol.MODBUS_RTU:
        missing = [
            n for n in ("modbus_profile", "rtu_port", "modbus_unit") if not getattr(fields, n)
        ]
        if missing:
            raise ValueError(f"a Modbus RTU meter needs {', '.join(missing)}")
    if fields.protocol is not MeterProtocol.MODBUS_TCP and (
        fields.modbus_host or fields.modbus_port
    ):
        raise ValueError("modbus_host/modbus_port are for Modbus TCP meters only")
    if fields.protocol is not MeterProtocol.MODBUS_RTU and (
        fields.rtu_port or fields.rtu_baud or fields.rtu_parity
    ):
        raise ValueError("rtu_port/rtu_baud/rtu_parity are for Modbus RTU meters only")
    profile = PROFILES.get(fields.modbus_profile or "")
    if profile is not None and profile.phases != fields.phases:
        raise ValueError(
            f"profile {profile.name} is a {profile.phases}-phase meter, not {fields.phases}-phase"
        )
    if (fields.latitude is None) != (fields.longitude is None):
        raise ValueError("give both latitude and longitude, or neither")


class MeterRegistration(_MeterFields):
    """A new meter. The serial is its permanent identity; ``comm_id`` defaults to it."""

    serial: Annotated[str, Field(pattern=METER_ID_PATTERN.pattern)]
    lifecycle: MeterLifecycle = MeterLifecycle.IN_STOCK

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.modbus_profile is not None and "phases" not in self.model_fields_set:
            # The profile knows the meter's phases; a registration need not repeat them.
            self.phases = PROFILES[self.modbus_profile].phases
        _check_addressing(self)
        if self.lifecycle not in REGISTRABLE_STATES:
            raise ValueError(
                f"a meter is registered in_stock or installed, not {self.lifecycle.value}; "
                "commissioning and activation come after"
            )
        return self


class MeterUpdate(_MeterFields):
    """A change to a registered meter: only the fields given are changed.

    The serial and the lifecycle cannot be changed here (lifecycle has its own call).
    """


def _clashes(
    session: Session,
    meter_id: int | None,
    serial: str | None,
    comm_id: str | None,
    meter_number: str | None,
) -> str | None:
    identities = []
    if serial is not None:
        identities.append(Meter.serial == serial)
    if comm_id is not None:
        identities.append(Meter.comm_id == comm_id)
    if meter_number:
        identities.append(Meter.meter_number == meter_number)
    if not identities:
        return None
    query = select(Meter.serial).where(or_(*identities))
    if meter_id is not None:
        query = query.where(Meter.id != meter_id)
    return session.scalar(query.limit(1))


_COPIED_FIELDS = tuple(name for name in _MeterFields.model_fields if name != "comm_id")


def register_meter(
    session: Session,
    registration: MeterRegistration,
    *,
    actor: str = "system",
    audit: AuditSink | None = None,
    now: datetime | None = None,
    check_identities: bool = True,
) -> Meter:
    """Add a meter in the caller's transaction and record its first lifecycle entry.

    ``check_identities=False`` is for callers that checked many registrations at once
    (bulk import); the unique constraints still refuse a clash, as ``IntegrityError``.

    Raises:
        RegistryError: ``meter_exists`` if its serial, comm id or meter number is taken.
    """
    now = now or datetime.now(UTC)
    comm_id = registration.comm_id or registration.serial
    if check_identities:
        clash = _clashes(session, None, registration.serial, comm_id, registration.meter_number)
        if clash is not None:
            raise RegistryError(
                "meter_exists", f"meter {clash} already has one of these identifiers"
            )
    values: dict[str, Any] = {name: getattr(registration, name) for name in _COPIED_FIELDS}
    values["protocol"] = registration.protocol.value
    values["prepaid_mode"] = registration.prepaid_mode.value
    meter = Meter(
        serial=registration.serial,
        comm_id=comm_id,
        lifecycle=registration.lifecycle.value,
        created_at=now,
        lifecycle_changed_at=now,
        **values,
    )
    _apply_default_ports(meter)
    session.add(meter)
    session.flush()
    session.add(
        MeterLifecycleChange(
            meter_id=meter.id,
            from_state=None,
            to_state=meter.lifecycle,
            changed_by=actor,
            changed_at=now,
            reason="registered",
        )
    )
    if audit is not None:
        audit.record(
            session,
            actor=actor,
            action="meter.register",
            subject=f"meter:{meter.serial}",
            detail={"lifecycle": meter.lifecycle, "protocol": meter.protocol},
        )
    return meter


def _apply_default_ports(meter: Meter) -> None:
    if meter.protocol == MeterProtocol.MODBUS_TCP.value and meter.modbus_port is None:
        meter.modbus_port = DEFAULT_MODBUS_TCP_PORT
    if meter.protocol == MeterProtocol.MODBUS_RTU.value:
        meter.rtu_baud = meter.rtu_baud or DEFAULT_RTU_BAUD
        meter.rtu_parity = meter.rtu_parity or "N"


def get_meter(session: Session, meter_id: int) -> Meter:
    """The meter with id ``meter_id``.

    Raises:
        RegistryError: ``meter_not_found``.
    """
    meter = session.get(Meter, meter_id)
    if meter is None:
        raise RegistryError("meter_not_found", f"no meter {meter_id}")
    return meter


def find_meter(session: Session, key: str) -> Meter:
    """The meter whose id, serial, comm id or meter number (DRN or PAN) is ``key``.

    Raises:
        RegistryError: ``meter_not_found``.
    """
    number: str | None = None
    # A key that is not a valid meter number still matches by the other identities.
    with suppress(ValueError):
        number = normalise_meter_number(key)
    conditions = [Meter.serial == key, Meter.comm_id == key]
    if number is not None:
        conditions.append(Meter.meter_number == number)
    if key.isdigit() and len(key) <= 18:
        conditions.append(Meter.id == int(key))
    candidates = session.scalars(select(Meter).where(or_(*conditions)).limit(4)).all()

    # One key may name two meters (serial "12" and id 12): the more specific name wins.
    def rank(meter: Meter) -> int:
        if meter.serial == key:
            return 0
        if meter.comm_id == key:
            return 1
        return 2 if number is not None and meter.meter_number == number else 3

    if not candidates:
        raise RegistryError("meter_not_found", f"no meter with id, serial or number {key!r}")
    return min(candidates, key=lambda m: (rank(m), m.id))


def update_meter(
    session: Session,
    meter_id: int,
    update: MeterUpdate,
    *,
    actor: str,
    audit: AuditSink | None = None,
) -> Meter:
    """Change the fields given in ``update`` (in the caller's transaction).

    Raises:
        RegistryError: ``meter_not_found``; ``meter_exists`` if the new comm id or meter
            number belongs to another meter; ``invalid_state`` if the result is
            inconsistent (e.g. a Modbus meter without an address) or the meter is
            decommissioned.
    """
    meter = get_meter(session, meter_id)
    if meter.lifecycle == L.DECOMMISSIONED.value:
        raise RegistryError("invalid_state", f"meter {meter.serial} is decommissioned")
    changes = update.model_dump(exclude_unset=True)
    if not changes:
        return meter
    current = {name: getattr(meter, name) for name in _MeterFields.model_fields}
    merged = {**current, **changes}
    try:
        checked = _MeterFields.model_validate(merged)
        _check_addressing(checked)
    except ValueError as exc:
        raise RegistryError("invalid_state", str(exc)) from None
    _refuse_key_move(meter, checked, changes, current)
    clash = _clashes(
        session,
        meter.id,
        None,
        changes.get("comm_id"),
        changes.get("meter_number"),
    )
    if clash is not None:
        raise RegistryError("meter_exists", f"meter {clash} already has one of these identifiers")
    before = {name: _jsonable(current[name]) for name in changes}
    for name in changes:
        value = getattr(checked, name)
        setattr(meter, name, value.value if hasattr(value, "value") else value)
    _apply_default_ports(meter)
    if audit is not None:
        audit.record(
            session,
            actor=actor,
            action="meter.update",
            subject=f"meter:{meter.serial}",
            detail={"before": before, "after": {n: _jsonable(getattr(meter, n)) for n in changes}},
        )
    session.flush()
    return meter


def _refuse_key_move(
    meter: Meter, checked: _MeterFields, changes: dict[str, Any], current: dict[str, Any]
) -> None:
    """A commissioned meter holds the registry's key: a new one needs key change tokens
    entered in the meter, so its key fields move only through vending's key change
    workflow (which moves them when the tokens are handed out). Editing them here would
    make every later token for a key the meter does not have."""
    if meter.lifecycle not in KEY_HOLDING_STATES:
        return  # not commissioned yet: commissioning loads whatever the registry says
    moved = [n for n in changes if n in KEY_FIELDS and getattr(checked, n) != current[n]]
    if moved:
        raise RegistryError(
            "key_change_required",
            f"meter {meter.serial} is {meter.lifecycle} and holds its key: "
            f"{', '.join(moved)} change through a key change "
            f"(POST /api/vending/meters/{meter.meter_number}/key-changes), which issues the "
            "tokens the meter needs",
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "value"):
        return value.value
    return value


def reason_required(current: MeterLifecycle, target: MeterLifecycle) -> bool:
    """Suspensions, decommissioning and every backward move must say why."""
    if target in (L.SUSPENDED, L.DECOMMISSIONED):
        return True
    if current in _FORWARD and target in _FORWARD:
        return _FORWARD.index(target) < _FORWARD.index(current)
    return current is L.DECOMMISSIONED


def transition_meter(
    session: Session,
    meter_id: int,
    target: MeterLifecycle,
    *,
    actor: str,
    reason: str = "",
    audit: AuditSink | None = None,
    now: datetime | None = None,
) -> MeterLifecycleChange:
    """Move a meter to ``target`` in the caller's transaction, with history and audit.

    Raises:
        RegistryError: ``meter_not_found``; ``transition_not_allowed`` (not in
            ``ALLOWED_TRANSITIONS``, or already there); ``reason_required``;
            ``commissioning_required`` when ``target`` is commissioned and the meter's
            latest commissioning run has not passed.
    """
    now = now or datetime.now(UTC)
    meter = get_meter(session, meter_id)
    current = MeterLifecycle(meter.lifecycle)
    if target not in ALLOWED_TRANSITIONS[current]:
        allowed = ", ".join(sorted(s.value for s in ALLOWED_TRANSITIONS[current]))
        raise RegistryError(
            "transition_not_allowed",
            f"meter {meter.serial} is {current.value}; it can move to {allowed}, "
            f"not {target.value}",
        )
    reason = reason.strip()
    if reason_required(current, target) and not reason:
        raise RegistryError(
            "reason_required", f"moving {current.value} -> {target.value} needs a reason"
        )
    if target is L.COMMISSIONED:
        latest = session.scalar(
            select(CommissioningRun)
            .where(CommissioningRun.meter_id == meter.id)
            .order_by(CommissioningRun.id.desc())
            .limit(1)
        )
        if latest is None or latest.status != "passed":
            raise RegistryError(
                "commissioning_required",
                f"meter {meter.serial} becomes commissioned by passing the commissioning workflow",
            )
    change = MeterLifecycleChange(
        meter_id=meter.id,
        from_state=current.value,
        to_state=target.value,
        changed_by=actor,
        changed_at=now,
        reason=reason,
    )
    meter.lifecycle = target.value
    meter.lifecycle_changed_at = now
    session.add(change)
    if audit is not None:
        audit.record(
            session,
            actor=actor,
            action="meter.lifecycle",
            subject=f"meter:{meter.serial}",
            detail={"from": current.value, "to": target.value, "reason": reason},
        )
    session.flush()
    return change


def lifecycle_history(session: Session, meter_id: int) -> list[MeterLifecycleChange]:
    """The meter's lifecycle moves in the order they were made (clocks of the machines
    that recorded them may disagree, so the record order is the truth).

    Raises:
        RegistryError: ``meter_not_found``.
    """
    get_meter(session, meter_id)
    return list(
        session.scalars(
            select(MeterLifecycleChange)
            .where(MeterLifecycleChange.meter_id == meter_id)
            .order_by(MeterLifecycleChange.id)
        )
    )


def installed_at(session: Session, meter_id: int) -> datetime | None:
    """When the meter was last installed (its latest move into ``installed``, or its
    registration as installed); None if it never was. Reads stamped earlier belong to
    before the installation (validation uses this).
    """
    return session.scalar(
        select(MeterLifecycleChange.changed_at)
        .where(
            MeterLifecycleChange.meter_id == meter_id,
            MeterLifecycleChange.to_state == MeterLifecycle.INSTALLED.value,
        )
        .order_by(MeterLifecycleChange.changed_at.desc(), MeterLifecycleChange.id.desc())
        .limit(1)
    )
