"""REST API of the balance engine's operator side under /api/vending.

Clerks may read an account's balance and ledger (a customer at the counter asks) and ask
for emergency credit on the customer's behalf; the operator's list and held consumption
are for supervisors and admins. Errors answer ``{"detail": {"code", "message"}}`` like
the counter's (docs/balance.md lists the codes); a refused request has stored nothing.

No `from __future__ import annotations` here: FastAPI resolves the route signatures.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from headend.audit import AuditSink
from headend.interface import CommandOutcome, find_meter
from vending.api import (
    COUNTER_STAFF,
    PREFIX,
    SUPERVISORS,
    body,
    http_status,
    read_session,
    write_session,
)
from vending.balance.emergency import grant_emergency_credit
from vending.balance.engine import balance_minor
from vending.balance.operator import (
    MAX_NOTE_CHARS,
    MAX_PAGE,
    DecisionView,
    HeldStatus,
    ListedAccount,
    ReviewAction,
    balance_view,
    held_consumption,
    ledger_page,
    operator_list,
    resolve_held,
    review_listed_account,
)
from vending.errors import VendingError
from vending.models import Account, HeldConsumption, LedgerEntry
from vending.models_balance import OperatorReview
from vending.shifts import currency_of

EMERGENCY_CREDIT_ROLES = ("supervisor", "clerk")
_NOT_FOUND = {"held_consumption_not_found"}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReviewBody(_Body):
    action: ReviewAction
    note: Annotated[str, Field(max_length=MAX_NOTE_CHARS)] = ""


class ResolutionBody(_Body):
    note: Annotated[str, Field(min_length=1, max_length=MAX_NOTE_CHARS)]


def _http(exc: VendingError) -> HTTPException:
    code = status.HTTP_404_NOT_FOUND if exc.code in _NOT_FOUND else http_status(exc.code)
    return HTTPException(code, detail={"code": exc.code, "message": str(exc)})


def _money(minor: int, currency: str) -> str:
    return str(Decimal(minor).scaleb(-currency_of(currency).minor_digits))


def _at(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _command_json(command: CommandOutcome | None) -> dict[str, Any] | None:
    if command is None:
        return None
    return {
        "id": command.id,
        "name": command.name,
        "state": command.state,
        "attempts": command.attempts,
        "requested_at": command.requested_at.isoformat(),
        "finished_at": _at(command.finished_at),
        "confirmation": command.confirmation,
        "last_error": command.last_error,
    }


def _decision_json(view: DecisionView, currency: str) -> dict[str, Any]:
    d = view.decision
    return {
        "id": d.id,
        "decided_at": d.decided_at.isoformat(),
        "action": d.action,
        "reason": d.reason,
        "balance": _money(d.balance_minor, currency),
        "not_before": _at(d.not_before),
        "command": _command_json(view.command),
    }


def _entry_json(entry: LedgerEntry, currency: str) -> dict[str, Any]:
    return {
        "id": entry.id,
        "kind": entry.kind,
        "amount": _money(entry.amount_minor, currency),
        "reference": entry.reference,
        "detail": entry.detail,
        "created_at": entry.created_at.isoformat(),
    }


def _review_json(review: OperatorReview) -> dict[str, Any]:
    return {
        "id": review.id,
        "action": review.action,
        "note": review.note,
        "actor": review.actor,
        "created_at": review.created_at.isoformat(),
    }


def _listed_json(entry: ListedAccount) -> dict[str, Any]:
    currency = entry.account.currency
    return {
        "account_number": entry.account.account_number,
        "customer": {
            "id": entry.customer.id,
            "name": entry.customer.name,
            "phone": entry.customer.phone,
            "protection": entry.customer.protection,
        },
        "balance": _money(entry.balance_minor, currency),
        "reason": entry.decision.reason,
        "listed_since": entry.decision.decided_at.isoformat(),
        "exhausted_since": _at(entry.exhausted_since),
        "decision_id": entry.decision.id,
        "acknowledged": entry.acknowledged,
        "reviews": [_review_json(r) for r in entry.reviews],
    }


def _held_json(session: Session, held: HeldConsumption) -> dict[str, Any]:
    meter = find_meter(session, meter_id=held.meter_id)
    return {
        "id": held.id,
        "meter_id": held.meter_id,
        "meter_number": meter.meter_number if meter else None,
        "source_offset": held.source_offset,
        "t_start": held.t_start.isoformat(),
        "t_end": held.t_end.isoformat(),
        "energy_kwh": str(held.energy_kwh),
        "reason": held.reason,
        "held_at": held.held_at.isoformat(),
        "resolved_at": _at(held.resolved_at),
        "resolved_by": held.resolved_by,
        "resolution_note": held.resolution_note,
    }


def make_balance_router(
    session_factory: sessionmaker[Session],
    *,
    require: Callable[..., Any],
    audit: AuditSink,
    emergency_credit_minor: int = 0,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> APIRouter:
    """The operator routes; ``require(*roles)`` as for ``vending.api.make_router``.
    ``emergency_credit_minor`` is the amount lent on request (0: not offered)."""
    router = APIRouter(prefix=PREFIX, tags=["balance"])

    def reading() -> AbstractContextManager[Session]:
        return read_session(session_factory, _http)

    def writing() -> AbstractContextManager[Session]:
        return write_session(session_factory, _http)

    def account_by_number(session: Session, number: str) -> Account:
        account = session.scalar(select(Account).where(Account.account_number == number))
        if account is None:
            raise VendingError("account_not_found", f"no account {number!r}")
        return account

    @router.get("/accounts/{account_number}/balance")
    def show_balance(
        account_number: str,
        _: Any = require(*COUNTER_STAFF),
        decisions: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 10,
    ) -> dict[str, Any]:
        """The central balance (the ledger's sum), last top-up, alerts sent, emergency
        credit outstanding, the supply as decided and the latest decisions with the state
        and outcome of the head-end command each asked for."""
        with reading() as session:
            view = balance_view(
                session, account_by_number(session, account_number), decisions=decisions
            )
            currency = view.account.currency
            state = view.state
            return {
                "account_number": view.account.account_number,
                "currency": currency,
                "meters": view.meter_numbers,
                "balance": _money(view.balance_minor, currency),
                "last_top_up": _money(state.last_top_up_minor, currency) if state else None,
                "last_top_up_at": _at(state.last_top_up_at) if state else None,
                "alerts_sent_percent": list(state.alerts_sent) if state else [],
                "emergency_credit_outstanding": _money(
                    state.emergency_credit_outstanding_minor if state else 0, currency
                ),
                "emergency_credit_taken_at": _at(state.emergency_credit_taken_at)
                if state
                else None,
                "exhausted_since": _at(state.exhausted_since) if state else None,
                "supply_as_decided": state.supply_requested if state else "connected",
                "decisions": [_decision_json(d, currency) for d in view.decisions],
                "notifications": [
                    {
                        "kind": n.kind,
                        "message": n.message,
                        "created_at": n.created_at.isoformat(),
                        "delivered_at": _at(n.delivered_at),
                    }
                    for n in view.notifications
                ],
            }

    @router.get("/accounts/{account_number}/ledger")
    def show_ledger(
        account_number: str,
        _: Any = require(*COUNTER_STAFF),
        before_id: Annotated[int | None, Query(ge=1)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    ) -> dict[str, Any]:
        """The ledger newest first; pass ``next_before_id`` back as ``before_id``."""
        with reading() as session:
            account = account_by_number(session, account_number)
            page = ledger_page(session, account.id, before_id=before_id, limit=limit)
            return {
                "account_number": account.account_number,
                "currency": account.currency,
                "entries": [_entry_json(e, account.currency) for e in page.entries],
                "next_before_id": page.next_before_id,
            }

    @router.post("/accounts/{account_number}/emergency-credit", status_code=201)
    def emergency_credit(
        account_number: str, principal: Any = require(*EMERGENCY_CREDIT_ROLES)
    ) -> dict[str, Any]:
        """Lend the configured emergency credit to a central-balance account whose balance
        is low; it is repaid first from the next top-up. Refusals: not_central_balance,
        balance_not_low, emergency_credit_outstanding, emergency_credit_disabled."""
        with writing() as session:
            account = account_by_number(session, account_number)
            entry = grant_emergency_credit(
                session,
                account,
                emergency_credit_minor,
                actor=principal.username,
                now=clock(),
                audit=audit,
            )
            return {
                "account_number": account.account_number,
                "amount": _money(entry.amount_minor, account.currency),
                "balance": _money(balance_minor(session, account.id), account.currency),
                "ledger_entry": _entry_json(entry, account.currency),
            }

    @router.get("/balance/operator-list")
    def show_operator_list(
        _: Any = require(*SUPERVISORS), unacknowledged: bool = False
    ) -> list[dict[str, Any]]:
        """Protected customers with an exhausted balance the engine did not disconnect,
        longest-listed first, with why, since when and the operators' reviews."""
        with reading() as session:
            return [
                _listed_json(e)
                for e in operator_list(session)
                if not (unacknowledged and e.acknowledged)
            ]

    @router.post("/balance/operator-list/{account_number}/reviews", status_code=201)
    def review_listed(
        account_number: str,
        principal: Any = require(*SUPERVISORS),
        review: ReviewBody = body(ReviewBody),
    ) -> dict[str, Any]:
        """Acknowledge a listed account (the supply stays on) or add a note; audited."""
        with writing() as session:
            account = account_by_number(session, account_number)
            made = review_listed_account(
                session, account, review.action, review.note, actor=principal.username, now=clock()
            )
            audit.record(
                session,
                actor=principal.username,
                action=f"balance.operator_list.{made.action}",
                subject=f"account:{account.account_number}",
                detail={"decision": made.decision_id, "note": made.note},
            )
            return _review_json(made)

    @router.get("/balance/held-consumption")
    def show_held(
        _: Any = require(*SUPERVISORS),
        status_: Annotated[HeldStatus, Query(alias="status")] = HeldStatus.OPEN,
        before_id: Annotated[int | None, Query(ge=1)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    ) -> list[dict[str, Any]]:
        """Consumption the engine would not charge, newest first (default: unresolved)."""
        with reading() as session:
            return [
                _held_json(session, h)
                for h in held_consumption(session, status=status_, before_id=before_id, limit=limit)
            ]

    @router.post("/balance/held-consumption/{held_id}/resolution")
    def resolve(
        held_id: int,
        principal: Any = require(*SUPERVISORS),
        resolution: ResolutionBody = body(ResolutionBody),
    ) -> dict[str, Any]:
        """Mark a held interval resolved with a note; audited. Books nothing."""
        with writing() as session:
            held = resolve_held(
                session, held_id, resolution.note, actor=principal.username, now=clock()
            )
            audit.record(
                session,
                actor=principal.username,
                action="balance.held_consumption.resolve",
                subject=f"held_consumption:{held.id}",
                detail={"meter_id": held.meter_id, "note": held.resolution_note},
            )
            return _held_json(session, held)

    return router
