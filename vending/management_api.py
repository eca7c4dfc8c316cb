"""REST routes of management tokens under /api/vending/meters/{meter_number}/management-tokens,
for technicians and supervisors only (a clerk answers 403 ``forbidden_role``).

Errors answer ``{"detail": {"code", "message"}}`` like the rest of /api/vending; a
refused request stores nothing.

No `from __future__ import annotations` here: FastAPI resolves the route signatures.
"""

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from headend.audit import AuditSink
from protocols.sts import group_digits
from vending.api import PREFIX, http_status
from vending.errors import VendingError
from vending.management_tokens import (
    ManagementKind,
    ManagementRequest,
    issue_management_token,
    token_meter_key,
)
from vending.models_management import ManagementTokenRecord
from vending.security_module import SecurityModule

# Role names as gridvend.auth knows them: the issue's "technicians and supervisors only".
MANAGEMENT_ISSUERS = ("supervisor", "technician")

_UNPROCESSABLE = {
    "invalid_request",
    "invalid_json",
    "invalid_management_kind",
    "invalid_power_limit",
    "invalid_register",
    "invalid_meter_number",
    "limit_required",
    "unexpected_parameter",
    "reason_required",
}

_FIELD_CODES = {
    "kind": "invalid_management_kind",
    "limit_w": "invalid_power_limit",
    "register": "invalid_register",
    "reason": "reason_required",
}


class ManagementTokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: ManagementKind
    limit_w: Annotated[int | None, Field(strict=True, description="Watts, limit kinds only.")] = (
        None
    )
    # "register" in JSON; renamed here because BaseModel has an attribute of that name.
    credit_register: Annotated[
        str | None,
        Field(
            alias="register",
            max_length=16,
            description="clear_credit: electricity (default), water, gas, time or all.",
        ),
    ] = None
    reference: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9._:-]{1,40}$",
            description="Chosen by the client, unique per user: a retry with the same "
            "reference answers the token already issued.",
        ),
    ]
    reason: Annotated[str, Field(min_length=3, max_length=500)]


def _refusal(exc: VendingError) -> HTTPException:
    code = status.HTTP_422_UNPROCESSABLE_CONTENT if exc.code in _UNPROCESSABLE else None
    return HTTPException(
        code or http_status(exc.code), detail={"code": exc.code, "message": str(exc)}
    )


async def _body(request: Request) -> ManagementTokenBody:
    try:
        data = json.loads(await request.body())
    except ValueError:
        raise _refusal(VendingError("invalid_json", "the body is not JSON")) from None
    try:
        return ManagementTokenBody.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        where = ".".join(str(p) for p in first["loc"]) or "body"
        code = _FIELD_CODES.get(field, "invalid_request")
        raise _refusal(VendingError(code, f"{where}: {first['msg']}")) from None


def _token_json(record: ManagementTokenRecord) -> dict[str, Any]:
    return {
        "meter_number": record.meter_number,
        "kind": record.kind,
        "parameters": record.parameters,
        "tid": record.tid,
        "token": record.token_digits,
        "token_grouped": group_digits(record.token_digits),
        "supply_group_code": record.supply_group_code,
        "key_revision": record.key_revision,
        "reference": record.reference,
        "reason": record.reason,
        "issued_by": record.issued_by,
        "issued_role": record.issued_role,
        "issued_at": record.issued_at.isoformat(),
    }


def make_management_router(
    session_factory: sessionmaker[Session],
    *,
    require: Callable[..., Any],
    security_module: SecurityModule,
    audit: AuditSink,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> APIRouter:
    """The management-token routes; ``require(*roles)`` is the caller-check dependency
    giving a principal with ``username`` and ``role``."""
    router = APIRouter(prefix=PREFIX, tags=["vending"])

    @contextmanager
    def refusals() -> Iterator[None]:
        try:
            yield
        except VendingError as exc:
            raise _refusal(exc) from None
        except IntegrityError:
            # Two requests with one reference raced; the loser's retry answers the winner's.
            raise _refusal(
                VendingError("conflict", "a concurrent request conflicted; retry it")
            ) from None

    @router.post("/meters/{meter_number}/management-tokens", status_code=status.HTTP_201_CREATED)
    def issue(
        meter_number: str,
        response: Response,
        principal: Any = require(*MANAGEMENT_ISSUERS),
        request: ManagementTokenBody = Depends(_body),
    ) -> dict[str, Any]:
        """Issue a management token (set_power_limit / set_phase_unbalance_limit with
        ``limit_w``, clear_credit with ``register``, clear_tamper) for a token-mode meter.
        A retry with the same reference answers 200 with the token already issued."""
        with refusals(), session_factory() as session, session.begin():
            issued = issue_management_token(
                session,
                ManagementRequest(
                    meter_number=meter_number,
                    kind=request.kind,
                    reference=request.reference,
                    reason=request.reason,
                    limit_w=request.limit_w,
                    register=request.credit_register,
                ),
                issuer=principal.username,
                issuer_role=str(principal.role),
                security_module=security_module,
                audit=audit,
                now=clock(),
            )
            answer = _token_json(issued.record)
        if not issued.made_now:
            response.status_code = status.HTTP_200_OK
        return answer

    @router.get("/meters/{meter_number}/management-tokens")
    def history(meter_number: str, _: Any = require(*MANAGEMENT_ISSUERS)) -> list[dict[str, Any]]:
        """The meter's management tokens, newest first (at most 100)."""
        with refusals(), session_factory() as session:
            meter, _ref = token_meter_key(session, meter_number)
            rows = session.scalars(
                select(ManagementTokenRecord)
                .where(ManagementTokenRecord.meter_id == meter.id)
                .order_by(ManagementTokenRecord.id.desc())
                .limit(100)
            )
            return [_token_json(r) for r in rows]

    return router
