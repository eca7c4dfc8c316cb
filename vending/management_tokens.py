"""Engineering and management tokens (STS class 2) for technicians and supervisors.

A management token changes a token-mode meter's settings: its maximum power limit or
phase unbalance limit, a cleared credit register, a cleared tamper condition. It takes
the meter's next TID from the same cursor as credit tokens (a meter refuses a TID it has
seen) and is stored and audited with the token in one transaction. A retried request
(same issuer, same reference) answers the token already made.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from headend.audit import AuditSink
from headend.interface import MeterSummary, find_meter
from protocols.sts import (
    ClearCreditToken,
    ClearTamperToken,
    CreditType,
    SetMaximumPowerLimitToken,
    SetPhaseUnbalanceLimitToken,
    StsError,
    Token,
    round_up_amount,
)
from protocols.sts.fields import AMOUNT_MAX, is_exact_amount
from protocols.sts.tokens import CLEAR_ALL_REGISTERS
from vending.errors import VendingError
from vending.key_changes import current_key_ref
from vending.keystore import KeyStoreError
from vending.models_management import ManagementTokenRecord
from vending.security_module import MeterKeyRef, SecurityModule
from vending.tids import allocate_tid

# The largest value the STS amount field carries (watts here).
MAX_LIMIT_W = AMOUNT_MAX


class ManagementKind(enum.StrEnum):
    SET_POWER_LIMIT = "set_power_limit"
    SET_PHASE_UNBALANCE_LIMIT = "set_phase_unbalance_limit"
    CLEAR_CREDIT = "clear_credit"
    CLEAR_TAMPER = "clear_tamper"


LIMIT_KINDS = frozenset({ManagementKind.SET_POWER_LIMIT, ManagementKind.SET_PHASE_UNBALANCE_LIMIT})

# Credit registers a clear-credit token may name (STS register numbers).
CREDIT_REGISTERS: dict[str, int] = {
    **{credit.name.lower(): int(credit) for credit in CreditType},
    "all": CLEAR_ALL_REGISTERS,
}


@dataclass(frozen=True, slots=True)
class ManagementRequest:
    """What a technician or supervisor asks for. ``limit_w`` is for the two limit kinds,
    ``register`` (a CREDIT_REGISTERS name) for clear_credit; ``reference`` is chosen by
    the client, unique per issuer."""

    meter_number: str
    kind: ManagementKind
    reference: str
    reason: str
    limit_w: int | None = None
    register: str | None = None


@dataclass(frozen=True, slots=True)
class ManagementIssue:
    """The stored token, and whether this request made it (False: a retry)."""

    record: ManagementTokenRecord
    made_now: bool


def parameters_of(request: ManagementRequest) -> dict[str, Any]:
    """The kind's parameters as stored, or VendingError with a specific code:
    ``limit_required``, ``invalid_power_limit``, ``invalid_register``, ``unexpected_parameter``.
    """
    if request.kind in LIMIT_KINDS:
        if request.register is not None:
            raise VendingError("unexpected_parameter", f"{request.kind} takes no register")
        if request.limit_w is None:
            raise VendingError("limit_required", f"{request.kind} needs limit_w (watts)")
        if not 0 <= request.limit_w <= MAX_LIMIT_W:
            raise VendingError(
                "invalid_power_limit", f"limit_w must be in 0..{MAX_LIMIT_W}, not {request.limit_w}"
            )
        if not is_exact_amount(request.limit_w):
            # Never round silently: the meter would enforce a limit nobody asked for.
            raise VendingError(
                "invalid_power_limit",
                f"{request.limit_w} W cannot be carried exactly by a token; the nearest "
                f"above is {round_up_amount(request.limit_w)} W",
            )
        return {"limit_w": request.limit_w}
    if request.limit_w is not None:
        raise VendingError("unexpected_parameter", f"{request.kind} takes no limit_w")
    if request.kind is ManagementKind.CLEAR_CREDIT:
        register = request.register or "electricity"
        if register not in CREDIT_REGISTERS:
            raise VendingError(
                "invalid_register",
                f"register must be one of {', '.join(CREDIT_REGISTERS)}, not {register!r}",
            )
        return {"register": register}
    if request.register is not None:
        raise VendingError("unexpected_parameter", f"{request.kind} takes no register")
    return {}


def token_meter_key(session: Session, meter_number: str) -> tuple[MeterSummary, MeterKeyRef]:
    """The token-mode meter and its key reference, or VendingError: ``invalid_meter_number``,
    ``meter_not_found``, ``meter_not_token_mode``, ``meter_keys_unknown``."""
    try:
        meter = find_meter(session, meter_number=meter_number)
    except ValueError as exc:
        raise VendingError("invalid_meter_number", str(exc)) from None
    if meter is None:
        raise VendingError("meter_not_found", f"meter {meter_number} is unknown")
    if meter.prepaid_mode != "token":
        raise VendingError(
            "meter_not_token_mode",
            f"meter {meter.meter_number} keeps no credit of its own ({meter.prepaid_mode}): "
            "STS tokens are for token-mode meters; use the head-end's commands",
        )
    return meter, current_key_ref(meter)


def issue_management_token(
    session: Session,
    request: ManagementRequest,
    *,
    issuer: str,
    issuer_role: str,
    security_module: SecurityModule,
    audit: AuditSink,
    now: datetime,
) -> ManagementIssue:
    """Issue, store and audit (``token.management``) one management token, in the
    caller's transaction. VendingError as ``parameters_of`` and ``token_meter_key``, plus
    ``reference_conflict`` (the reference was used for another token), the key store's
    codes (``key_not_found``, ``key_retired``, ``key_undecryptable``) and
    ``token_refused`` (no TID left under the meter's key)."""
    parameters = parameters_of(request)
    earlier = session.scalar(
        select(ManagementTokenRecord).where(
            ManagementTokenRecord.issued_by == issuer,
            ManagementTokenRecord.reference == request.reference,
        )
    )
    meter, ref = token_meter_key(session, request.meter_number)
    if earlier is not None:
        if (earlier.meter_id, earlier.kind, earlier.parameters) != (
            meter.id,
            request.kind.value,
            parameters,
        ):
            raise VendingError(
                "reference_conflict",
                f"reference {request.reference!r} was used for another management token",
            )
        return ManagementIssue(earlier, made_now=False)
    try:
        attributes = security_module.key_attributes(ref)
        tid = allocate_tid(session, meter.id, ref, attributes, now)
        issued = security_module.management_token(ref, _token(request.kind, parameters, tid))
    except KeyStoreError as exc:
        raise VendingError(exc.code, str(exc)) from None
    except StsError as exc:
        raise VendingError("token_refused", str(exc)) from None
    record = ManagementTokenRecord(
        meter_id=meter.id,
        meter_number=ref.meter_number,
        kind=request.kind.value,
        parameters=parameters,
        supply_group_code=ref.supply_group_code,
        key_revision=ref.key_revision,
        tid=tid,
        token_digits=issued.digits,
        reference=request.reference,
        reason=request.reason,
        issued_by=issuer,
        issued_role=issuer_role,
        issued_at=now,
    )
    session.add(record)
    session.flush()
    audit.record(
        session,
        actor=issuer,
        action="token.management",
        subject=f"meter:{ref.meter_number}",
        detail={
            "kind": request.kind.value,
            **parameters,
            "tid": tid,
            "supply_group_code": ref.supply_group_code,
            "key_revision": ref.key_revision,
            "reference": request.reference,
            "reason": request.reason,
        },
    )
    return ManagementIssue(record, made_now=True)


def _token(kind: ManagementKind, parameters: dict[str, Any], tid: int) -> Token:
    if kind is ManagementKind.SET_POWER_LIMIT:
        return SetMaximumPowerLimitToken(tid=tid, watts=parameters["limit_w"])
    if kind is ManagementKind.SET_PHASE_UNBALANCE_LIMIT:
        return SetPhaseUnbalanceLimitToken(tid=tid, watts=parameters["limit_w"])
    if kind is ManagementKind.CLEAR_CREDIT:
        return ClearCreditToken(tid=tid, register=CREDIT_REGISTERS[parameters["register"]])
    return ClearTamperToken(tid=tid)
