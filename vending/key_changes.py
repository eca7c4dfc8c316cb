"""Key changes as a workflow: requested by a supervisor, handed out with the next vend.

A supervisor asks to move a token meter to a new supply group, tariff index or key
revision (a new key revision with a later base date is the TID rollover, 1993 -> 2014).
The security module issues the key change tokens at once; they are stored with the
request, which stays ``pending`` until one of:

- a vend for the meter with the clerk's (or channel's) acknowledgement: the tokens are
  printed on the receipt before the credit token, which is made under the new key; a vend
  without the acknowledgement is refused with ``key_change_required`` and the tokens;
- a technician or supervisor reports that the tokens were entered on site;
- a supervisor cancels it, with a reason.

Completing moves the meter's key fields in the head-end registry (through
``headend.interface.move_meter_key``). Every step is audited. Every function runs in
the caller's transaction and raises :class:`VendingError` having written nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from headend.audit import AuditSink
from headend.interface import SUMMARY_COLUMNS, MeterSummary, find_meter, move_meter_key
from protocols.sts import StsError
from protocols.sts.keys import check_key_revision, check_supply_group_code, check_tariff_index
from vending.driver_statements import DriverStatement
from vending.errors import VendingError
from vending.keystore import KeyStoreError
from vending.models_keychange import (
    KEY_CHANGE_CANCELLED,
    KEY_CHANGE_COMPLETED,
    KEY_CHANGE_PENDING,
    KeyChangeRecord,
)
from vending.security_module import KeyAttributes, MeterKeyRef, SecurityModule


@dataclass(frozen=True, slots=True)
class KeyTarget:
    """The key a meter should move to; a field left None keeps the meter's current value.

    ``base_date`` is not chosen freely: it belongs to the vending key of the target
    supply group and key revision. Given, it is checked against that key (so a 2014
    rollover request cannot silently land on a 1993 key).
    """

    supply_group_code: str | None = None
    tariff_index: str | None = None
    key_revision: int | None = None
    base_date: int | None = None


def request_key_change(
    session: Session,
    meter_number: str,
    target: KeyTarget,
    *,
    security_module: SecurityModule,
    audit: AuditSink,
    actor: str,
    reason: str,
    now: datetime,
) -> KeyChangeRecord:
    """Issue the key change tokens moving the meter to ``target`` and store them pending.

    VendingError: invalid_meter_number, meter_not_found, meter_not_token (a central-balance
    meter holds no vending key), meter_keys_unknown, key_change_pending (one is already
    pending: cancel it first), invalid_key_change (a malformed field, or none given),
    key_revision_required (a base date without the key revision issued for it),
    no_key_change (the target is the current key), target_key_not_found,
    target_key_retired, base_date_mismatch, current_key_unavailable, key_change_refused
    (the STS rules forbid it: the base date moving back, a 64 <-> 128-bit key change...).
    """
    meter = _token_meter(session, meter_number)
    pending = pending_key_change(session, meter.id)
    if pending is not None:
        raise VendingError(
            "key_change_pending",
            f"meter {meter.meter_number} already has key change {pending.id} pending: "
            "cancel it first",
            key_change_id=pending.id,
        )
    current = current_key_ref(meter)
    new = _target_ref(current, target)
    if new == current:
        raise VendingError("no_key_change", "the meter already holds that key")
    current_attributes = _current_attributes(security_module, current)
    new_attributes = _target_attributes(security_module, new)
    if target.base_date is not None and int(new_attributes.base_date) != target.base_date:
        raise VendingError(
            "base_date_mismatch",
            f"the key of supply group {new.supply_group_code} revision {new.key_revision} "
            f"has base date {int(new_attributes.base_date)}, not {target.base_date}",
        )
    try:
        issued = security_module.key_change_tokens(current, new)
    except StsError as exc:
        raise VendingError("key_change_refused", str(exc)) from None
    except KeyStoreError as exc:
        raise VendingError("current_key_unavailable", str(exc)) from None
    record = _new_record(
        meter.id,
        (current, current_attributes),
        (new, new_attributes),
        [token.digits for token in issued],
        reason=reason,
        actor=actor,
        now=now,
    )
    session.add(record)
    session.flush()
    _audit(session, audit, record, meter, actor, "key_change.request", reason=reason)
    return record


def record_loaded_key_change(
    session: Session,
    meter_id: int,
    current: MeterKeyRef,
    new: MeterKeyRef,
    tokens: Sequence[str],
    *,
    security_module: SecurityModule,
    audit: AuditSink,
    actor: str,
    reason: str,
    now: datetime,
) -> KeyChangeRecord:
    """Keep a key change the meter has already taken outside this workflow (commissioning
    loading the registry's key over a delivery key) in the meter's key change history,
    completed by ``actor``. The registry already names the new key: nothing moves.

    Raises:
        KeyStoreError: either key is not in the key store (the tokens were just issued
            from both, so only a key retired in between).
    """
    record = _new_record(
        meter_id,
        (current, security_module.key_attributes(current)),
        (new, security_module.key_attributes(new)),
        list(tokens),
        reason=reason,
        actor=actor,
        now=now,
    )
    record.status = KEY_CHANGE_COMPLETED
    record.completed_by = actor
    record.completed_at = now
    session.add(record)
    session.flush()
    _audit(
        session, audit, record, find_meter(session, meter_id=meter_id), actor, "key_change.loaded"
    )
    return record


def _new_record(
    meter_id: int,
    before: tuple[MeterKeyRef, KeyAttributes],
    after: tuple[MeterKeyRef, KeyAttributes],
    tokens: list[str],
    *,
    reason: str,
    actor: str,
    now: datetime,
) -> KeyChangeRecord:
    """A pending record of the change from ``before`` to ``after`` by ``tokens``."""
    (current, current_attributes), (new, new_attributes) = before, after
    return KeyChangeRecord(
        meter_id=meter_id,
        status=KEY_CHANGE_PENDING,
        from_supply_group_code=current.supply_group_code,
        from_tariff_index=current.tariff_index,
        from_key_revision=current.key_revision,
        from_base_date=int(current_attributes.base_date),
        to_supply_group_code=new.supply_group_code,
        to_tariff_index=new.tariff_index,
        to_key_revision=new.key_revision,
        to_base_date=int(new_attributes.base_date),
        to_key_expiry_number=new_attributes.key_expiry_number,
        # build_key_change sets the RO bit exactly when the base date moves.
        rollover=new_attributes.base_date != current_attributes.base_date,
        tokens=tokens,
        reason=reason,
        requested_by=actor,
        requested_at=now,
    )


def pending_key_change(
    session: Session, meter_id: int, *, lock: bool = False
) -> KeyChangeRecord | None:
    """The meter's pending key change, if any (``lock``: locked until commit)."""
    if not lock:
        return session.scalar(
            select(KeyChangeRecord).where(
                KeyChangeRecord.meter_id == meter_id, KeyChangeRecord.status == KEY_CHANGE_PENDING
            )
        )
    # Every token vend asks this, and almost always there is none: the id alone (the row
    # locked), the record loaded only when there is one.
    found = session.scalar(_LOCK_PENDING_ID, {"pending_meter_id": meter_id})
    if found is None:
        return None
    return session.get(KeyChangeRecord, found, populate_existing=True)


_LOCK_PENDING_ID = (
    select(KeyChangeRecord.id)
    .where(
        KeyChangeRecord.meter_id == bindparam("pending_meter_id"),
        KeyChangeRecord.status == KEY_CHANGE_PENDING,
    )
    .with_for_update()
)


_METER_AND_PENDING = DriverStatement(
    select(
        select(KeyChangeRecord.id)
        .where(
            KeyChangeRecord.meter_id == SUMMARY_COLUMNS[0],
            KeyChangeRecord.status == KEY_CHANGE_PENDING,
        )
        .scalar_subquery(),
        *SUMMARY_COLUMNS,
    ).where(SUMMARY_COLUMNS[0] == bindparam("vend_meter_id"))
)


def hand_out_with_vend(
    session: Session,
    meter: MeterSummary,
    *,
    acknowledged: bool,
    operator: str,
    channel: str,
    reference: str,
    audit: AuditSink,
    now: datetime,
) -> tuple[MeterSummary, list[str]]:
    """The vend's check: the meter as the credit token must be made for it, and the key
    change tokens to print before that token (none when no key change is pending).

    VendingError key_change_required (detail: ``key_change_id`` and ``tokens`` in entry
    order) when one is pending and the seller has not acknowledged it; with the
    acknowledgement the key change is completed and the meter moved to its new key.
    """
    # Almost always nothing is pending: the meter as it is now (the key the token is made
    # under) and whether a key change is pending, in one query. A key change requested
    # after it orders after this vend; a pending one is locked before it is acted on.
    row = _METER_AND_PENDING.first(session, {"vend_meter_id": meter.id})
    if row is None or row[0] is None:
        return (meter if row is None else MeterSummary(*row[1:])), []
    pending = pending_key_change(session, meter.id, lock=True)
    if pending is None:
        # A technician completed it while this vend waited for the pending row's lock.
        current = find_meter(session, meter_id=meter.id, fresh=True)
        return (current or meter), []
    if not acknowledged:
        raise VendingError(
            "key_change_required",
            f"meter {meter.meter_number} needs a key change: give the customer these "
            f"{len(pending.tokens)} tokens to enter first, then vend again acknowledging them",
            key_change_id=pending.id,
            tokens=list(pending.tokens),
        )
    moved = _complete(session, pending, meter, actor=operator, now=now, audit=audit)
    pending.completed_vend_channel = channel
    pending.completed_vend_reference = reference
    return moved, list(pending.tokens)


def complete_key_change(
    session: Session, key_change_id: int, *, actor: str, audit: AuditSink, now: datetime
) -> KeyChangeRecord:
    """Record that the key change tokens were entered in the meter (a technician on site).

    VendingError key_change_not_found, key_change_not_pending.
    """
    record = _pending_by_id(session, key_change_id)
    meter = find_meter(session, meter_id=record.meter_id)
    if meter is None:
        raise VendingError("meter_not_found", f"meter {record.meter_id} is not registered")
    _complete(session, record, meter, actor=actor, now=now, audit=audit)
    return record


def cancel_key_change(
    session: Session,
    key_change_id: int,
    *,
    actor: str,
    reason: str,
    audit: AuditSink,
    now: datetime,
) -> KeyChangeRecord:
    """Cancel a pending key change; the meter keeps its key and vends as before.

    VendingError key_change_not_found, key_change_not_pending, reason_required.
    """
    if len(reason.strip()) < 3:
        raise VendingError("reason_required", "say why the key change is cancelled")
    record = _pending_by_id(session, key_change_id)
    record.status = KEY_CHANGE_CANCELLED
    record.cancelled_by = actor
    record.cancelled_at = now
    record.cancel_reason = reason
    meter = find_meter(session, meter_id=record.meter_id)
    session.flush()
    _audit(session, audit, record, meter, actor, "key_change.cancel", reason=reason)
    return record


def get_key_change(session: Session, key_change_id: int) -> KeyChangeRecord:
    """VendingError key_change_not_found."""
    record = session.get(KeyChangeRecord, key_change_id)
    if record is None:
        raise VendingError("key_change_not_found", f"no key change {key_change_id}")
    return record


# Helpers -----------------------------------------------------------------------------------


def _token_meter(session: Session, meter_number: str) -> MeterSummary:
    try:
        meter = find_meter(session, meter_number=meter_number)
    except ValueError as exc:
        raise VendingError("invalid_meter_number", str(exc)) from None
    if meter is None:
        raise VendingError("meter_not_found", f"meter {meter_number} is not registered")
    if meter.prepaid_mode != "token":
        raise VendingError(
            "meter_not_token", f"meter {meter_number} keeps its credit centrally: it has no key"
        )
    return meter


def current_key_ref(meter: MeterSummary) -> MeterKeyRef:
    """The key the registry says the meter holds. VendingError meter_keys_unknown."""
    if meter.supply_group_code is None or meter.tariff_index is None or meter.key_revision is None:
        raise VendingError(
            "meter_keys_unknown",
            f"meter {meter.meter_number} has no supply group, tariff index or key revision",
        )
    return MeterKeyRef(
        meter_number=meter.meter_number or "",
        supply_group_code=meter.supply_group_code,
        tariff_index=meter.tariff_index,
        key_revision=meter.key_revision,
    )


def _target_ref(current: MeterKeyRef, target: KeyTarget) -> MeterKeyRef:
    given = (target.supply_group_code, target.tariff_index, target.key_revision)
    if all(value is None for value in given) and target.base_date is None:
        raise VendingError(
            "invalid_key_change", "name the new supply group, tariff index or key revision"
        )
    if target.base_date is not None and target.key_revision is None:
        raise VendingError(
            "key_revision_required",
            "a new base date comes with a new key: name the key revision issued with it",
        )
    try:
        sgc = (
            current.supply_group_code
            if target.supply_group_code is None
            else check_supply_group_code(target.supply_group_code)
        )
        ti = (
            current.tariff_index
            if target.tariff_index is None
            else check_tariff_index(target.tariff_index)
        )
        krn = (
            current.key_revision
            if target.key_revision is None
            else check_key_revision(target.key_revision)
        )
    except StsError as exc:
        raise VendingError("invalid_key_change", str(exc)) from None
    return MeterKeyRef(current.meter_number, sgc, ti, krn)


def _current_attributes(security_module: SecurityModule, ref: MeterKeyRef) -> KeyAttributes:
    try:
        return security_module.key_attributes(ref)
    except KeyStoreError as exc:
        raise VendingError(
            "current_key_unavailable", f"the meter's current key cannot be used: {exc}"
        ) from None


def _target_attributes(security_module: SecurityModule, ref: MeterKeyRef) -> KeyAttributes:
    try:
        return security_module.key_attributes(ref)
    except KeyStoreError as exc:
        code = {"key_not_found": "target_key_not_found", "key_retired": "target_key_retired"}
        raise VendingError(code.get(exc.code, "current_key_unavailable"), str(exc)) from None


def _pending_by_id(session: Session, key_change_id: int) -> KeyChangeRecord:
    record = session.scalar(
        select(KeyChangeRecord)
        .where(KeyChangeRecord.id == key_change_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if record is None:
        raise VendingError("key_change_not_found", f"no key change {key_change_id}")
    if record.status != KEY_CHANGE_PENDING:
        raise VendingError(
            "key_change_not_pending", f"key change {key_change_id} is already {record.status}"
        )
    return record


def _complete(
    session: Session,
    record: KeyChangeRecord,
    meter: MeterSummary,
    *,
    actor: str,
    now: datetime,
    audit: AuditSink,
) -> MeterSummary:
    record.status = KEY_CHANGE_COMPLETED
    record.completed_by = actor
    record.completed_at = now
    moved = move_meter_key(
        session,
        record.meter_id,
        supply_group_code=record.to_supply_group_code,
        tariff_index=record.to_tariff_index,
        key_revision=record.to_key_revision,
        base_date=record.to_base_date,
        key_expiry_number=record.to_key_expiry_number,
    )
    _audit(session, audit, record, meter, actor, "key_change.complete")
    return moved


def _audit(
    session: Session,
    audit: AuditSink,
    record: KeyChangeRecord,
    meter: MeterSummary | None,
    actor: str,
    action: str,
    **extra: object,
) -> None:
    # The tokens themselves stay out of the log: they are on the record and the receipt.
    audit.record(
        session,
        actor=actor,
        action=action,
        subject=f"meter:{meter.meter_number if meter else record.meter_id}",
        detail={
            "key_change_id": record.id,
            "from": _key_label(
                record.from_supply_group_code,
                record.from_tariff_index,
                record.from_key_revision,
                record.from_base_date,
            ),
            "to": _key_label(
                record.to_supply_group_code,
                record.to_tariff_index,
                record.to_key_revision,
                record.to_base_date,
            ),
            "rollover": record.rollover,
            "tokens": len(record.tokens),
            **extra,
        },
    )


def _key_label(sgc: str, ti: str, krn: int, base_date: int) -> str:
    return f"SGC {sgc} TI {ti} KRN {krn} base {base_date}"
