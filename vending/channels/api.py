"""The channel REST API (/channel/v1) and the admin routes that create channels.

Every /channel/v1 request is signed (vending.channels.signing). The handler reads the raw
body, checks the timestamp, then in one database transaction authenticates the channel,
records its nonce and does the work; the answer is the bytes the service produced (for a
purchase: the stored bytes, so a retry gets exactly the first answer).

No `from __future__ import annotations` here: FastAPI resolves the route signatures.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from headend.audit import AuditSink
from vending.channels.models import Channel
from vending.channels.reconciliation import find_run, reconcile, run_document, statement_csv
from vending.channels.schemas import (
    AdviceAnswer,
    AdviceRequest,
    ChannelOut,
    CreatedChannel,
    LookupAnswer,
    LookupRequest,
    NewChannel,
    PurchaseRequest,
    Receipt,
    ReconciliationAnswer,
    Refusal,
    StatusAnswer,
)
from vending.channels.service import (
    ChannelError,
    NewChannelTerms,
    PurchaseOrder,
    SecretCache,
    StoredAnswer,
    TokenAccepted,
    advise,
    authenticate,
    canonical_json,
    create_channel,
    forget_expired_nonces,
    lookup_customer,
    no_acceptance_known,
    purchase,
    purchase_status,
    record_nonce,
    refusal_body,
)
from vending.channels.signing import SignatureError, check_timestamp, parse_headers
from vending.counter import PaymentMethod
from vending.keystore import KeyEncryptionKey
from vending.lanes import ThreadLane, lane_size_for
from vending.money import Currency, Money
from vending.security_module import SecurityModule

PREFIX = "/channel/v1"
JSON = "application/json"
# How often (in signed requests per process) expired nonces are deleted.
NONCE_SWEEP_EVERY = 1000
# A purchase that lost a race on its own reference is retried this many times: the
# winner has committed by then, and the retry returns the winner's stored answer.
DUPLICATE_RETRIES = 3


class RateLimiter:
    """A token bucket per channel: ``rate_limit_per_minute`` requests, refilled evenly.

    Per API process: with several processes, each allows the channel's rate.
    """

    def __init__(self) -> None:
        self._buckets: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, channel: Channel, now: datetime) -> None:
        """ChannelError rate_limited when the channel's bucket is empty."""
        capacity = float(channel.rate_limit_per_minute)
        at = now.timestamp()
        with self._lock:
            tokens, last = self._buckets.get(channel.id, (capacity, at))
            tokens = min(capacity, tokens + max(0.0, at - last) * capacity / 60.0)
            if tokens < 1.0:
                self._buckets[channel.id] = (tokens, at)
                raise ChannelError(
                    "rate_limited",
                    f"more than {channel.rate_limit_per_minute} requests a minute: slow down",
                    retry_after_s=round((1.0 - tokens) * 60.0 / capacity, 3),
                )
            self._buckets[channel.id] = (tokens - 1.0, at)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    media_type: str = JSON


def _refusal(exc: ChannelError) -> _Answer:
    return _Answer(exc.status, refusal_body(exc))


def _documented(model: type[BaseModel], *codes: int) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {200: {"model": model}}
    for code in codes:
        responses[code] = {"model": Refusal}
    return responses


def _request_body(model: type[BaseModel], media_type: str = JSON) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {media_type: {"schema": schema}}}}


_SIGNED_HEADERS_DOC = {
    "parameters": [
        {"name": name, "in": "header", "required": True, "schema": {"type": "string"}}
        for name in ("X-GV-Key-Id", "X-GV-Timestamp", "X-GV-Nonce", "X-GV-Signature")
    ]
}


def _parse(model: type[BaseModel], body: bytes) -> Any:
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors()
        ]
        raise ChannelError("invalid_request", "; ".join(problems)) from None


def make_router(
    session_factory: sessionmaker[Session],
    *,
    security_module: SecurityModule,
    audit: AuditSink,
    kek: KeyEncryptionKey,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    token_accepted: TokenAccepted = no_acceptance_known,
) -> APIRouter:
    """The signed channel API under /channel/v1.

    ``security_module`` issues the tokens (vending.security_module); ``kek`` decrypts the
    channels' signing secrets; ``token_accepted(session, meter_id, tid)`` says whether a
    meter is known to have accepted a token (such a vend is not reversed).
    """
    router = APIRouter(prefix=PREFIX, tags=["channel"])
    secrets_cache = SecretCache(kek)
    limiter = RateLimiter()
    counter = {"requests": 0}
    counter_lock = threading.Lock()
    # One thread on SQLite, which runs write transactions one at a time anyway (see
    # vending.lanes); requests beyond the lane wait on the event loop.
    lane = ThreadLane(lane_size_for(session_factory))

    def sweep_due() -> bool:
        with counter_lock:
            counter["requests"] += 1
            return counter["requests"] % NONCE_SWEEP_EVERY == 0

    def run_signed(
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str | None],
        work: Callable[[Session, Channel, datetime], _Answer],
    ) -> _Answer:
        now = clock()
        try:
            signed = parse_headers(headers)
            check_timestamp(signed.timestamp, now.timestamp())
        except SignatureError as exc:
            return _refusal(ChannelError(exc.code, str(exc)))
        refused: ChannelError | None = None
        channel_id: int | None = None
        for _attempt in range(DUPLICATE_RETRIES):
            channel_id = None
            with session_factory() as session:
                try:
                    with session.begin():
                        caller = authenticate(
                            session,
                            signed,
                            method=method,
                            path=path,
                            body=body,
                            secrets_cache=secrets_cache,
                            now=now,
                        )
                        channel_id = caller.channel.id
                        limiter.take(caller.channel, now)
                        if sweep_due():
                            forget_expired_nonces(session, now)
                        return work(session, caller.channel, now)
                except ChannelError as exc:
                    refused = exc
            if refused.code != "concurrent_duplicate":
                break
        assert refused is not None
        if channel_id is not None and refused.code != "replayed_nonce":
            # The request was genuine but refused: its nonce is still spent.
            with session_factory() as session:
                try:
                    with session.begin():
                        record_nonce(session, channel_id, signed.nonce, now)
                except ChannelError:
                    pass
        return _refusal(refused)

    async def signed(
        request: Request, work: Callable[[Session, Channel, datetime], _Answer]
    ) -> Response:
        body = await request.body()
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers: dict[str, str | None] = dict(request.headers)
        answer = await lane.run(run_signed, request.method, path, body, headers, work)
        return Response(answer.body, status_code=answer.status, media_type=answer.media_type)

    def json_answer(document: Any) -> _Answer:
        return _Answer(200, canonical_json(document))

    @router.post(
        "/lookup",
        responses=_documented(LookupAnswer, 401, 404, 409, 422, 429),
        openapi_extra={**_request_body(LookupRequest), **_SIGNED_HEADERS_DOC},
        summary="Who and what a meter or account is, before money is taken",
    )
    async def lookup_route(request: Request) -> Response:
        """The masked customer name, the meter, the amounts the channel may sell and the
        arrears. No side effect (beyond spending the request's nonce)."""
        raw = await request.body()

        def work(session: Session, channel: Channel, now: datetime) -> _Answer:
            body = _parse(LookupRequest, raw)
            return json_answer(
                lookup_customer(
                    session,
                    channel,
                    meter_number=body.meter_number,
                    account_number=body.account_number,
                    now=now,
                )
            )

        return await signed(request, work)

    @router.post(
        "/purchases",
        responses=_documented(Receipt, 401, 404, 409, 422, 429, 503),
        openapi_extra={**_request_body(PurchaseRequest), **_SIGNED_HEADERS_DOC},
        summary="Buy credit; idempotent on the channel's reference",
    )
    async def purchase_route(request: Request) -> Response:
        """A receipt with the breakdown and the token (token meters) or the new balance
        (central meters). The same reference with the same content returns the first
        answer byte for byte; with other content, 409 reference_conflict. On a time-out
        the outcome is unknown: retry with the same reference, or ask its status."""
        raw = await request.body()

        def work(session: Session, channel: Channel, now: datetime) -> _Answer:
            body = _parse(PurchaseRequest, raw)
            answer: StoredAnswer = purchase(
                session,
                channel,
                PurchaseOrder(
                    reference=body.reference,
                    amount=body.amount,
                    currency=body.currency,
                    meter_number=body.meter_number,
                    account_number=body.account_number,
                    key_change_acknowledged=body.key_change_acknowledged,
                ),
                security_module=security_module,
                audit=audit,
                now=now,
            )
            return _Answer(answer.status, answer.body)

        return await signed(request, work)

    @router.get(
        "/purchases/{reference}",
        responses=_documented(StatusAnswer, 401, 429),
        openapi_extra=_SIGNED_HEADERS_DOC,
        summary="The status of a reference: unknown, completed or reversed",
    )
    async def status_route(request: Request, reference: str) -> Response:
        """For a channel that lost our answer: unknown means nothing was sold (retry the
        purchase with the same reference); completed means retry to get the receipt."""

        def work(session: Session, channel: Channel, now: datetime) -> _Answer:
            return json_answer(purchase_status(session, channel, reference))

        return await signed(request, work)

    def advice_route(kind: str) -> Callable[..., Any]:
        async def route(request: Request, reference: str) -> Response:
            raw = await request.body()

            def work(session: Session, channel: Channel, now: datetime) -> _Answer:
                body = _parse(AdviceRequest, raw)
                return json_answer(
                    advise(
                        session,
                        channel,
                        reference,
                        kind,
                        audit=audit,
                        now=now,
                        token_accepted=token_accepted,
                        reason=body.reason,
                    )
                )

            return await signed(request, work)

        return route

    router.add_api_route(
        "/purchases/{reference}/confirm",
        advice_route("confirm"),
        methods=["POST"],
        responses=_documented(AdviceAnswer, 401, 422, 429),
        openapi_extra={**_request_body(AdviceRequest), **_SIGNED_HEADERS_DOC},
        summary="Confirmation advice: the customer has the receipt (idempotent, any order)",
        description="Re-send until a 200 answer. A confirmation for a reference not yet "
        "known is kept (outcome pending) and applied when the purchase arrives. A confirmed "
        "purchase can no longer be reversed.",
    )
    router.add_api_route(
        "/purchases/{reference}/reverse",
        advice_route("reverse"),
        methods=["POST"],
        responses=_documented(AdviceAnswer, 401, 422, 429),
        openapi_extra={**_request_body(AdviceRequest), **_SIGNED_HEADERS_DOC},
        summary="Reversal advice: undo a purchase (idempotent, any order)",
        description="Re-send until a 200 answer. Applied within the channel's reversal "
        "window unless the purchase was confirmed, its token is known to be accepted by the "
        "meter, or a later purchase on the account stands (outcome refused with that code). "
        "A central-balance credit is taken back even into a negative balance "
        "(negative_balance: true). A reversal for a reference not yet known is kept and "
        "refuses the purchase when it arrives (409 purchase_reversed).",
    )

    @router.get(
        "/statements/{business_date}",
        responses={
            200: {"content": {"text/csv": {"example": "reference,amount,time\n"}}},
            401: {"model": Refusal},
        },
        openapi_extra=_SIGNED_HEADERS_DOC,
        summary="Our statement of the channel's completed purchases of a UTC day (CSV)",
    )
    async def statement_route(request: Request, business_date: date) -> Response:
        def work(session: Session, channel: Channel, now: datetime) -> _Answer:
            return _Answer(200, statement_csv(session, channel, business_date).encode(), "text/csv")

        return await signed(request, work)

    @router.post(
        "/reconciliations/{business_date}",
        responses=_documented(ReconciliationAnswer, 401, 422, 429),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "text/csv": {
                        "schema": {"type": "string"},
                        "example": "reference,amount,time\nACME-1,150.00,2026-11-24T09:30:12Z\n",
                    }
                },
            },
            **_SIGNED_HEADERS_DOC,
        },
        summary="Upload the channel's settlement file of a day; get and keep the differences",
    )
    async def reconcile_route(request: Request, business_date: date) -> Response:
        raw = await request.body()

        def work(session: Session, channel: Channel, now: datetime) -> _Answer:
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise ChannelError("invalid_settlement_file", "the file is not UTF-8") from None
            run = reconcile(session, channel, business_date, text, now)
            return json_answer(run_document(session, channel, run))

        return await signed(request, work)

    @router.get(
        "/reconciliations/by-id/{run_id}",
        responses=_documented(ReconciliationAnswer, 401, 404),
        openapi_extra=_SIGNED_HEADERS_DOC,
        summary="A stored reconciliation run",
    )
    async def reconciliation_route(request: Request, run_id: int, all: bool = False) -> Response:
        def work(session: Session, channel: Channel, now: datetime) -> _Answer:
            run = find_run(session, channel, run_id)
            return json_answer(run_document(session, channel, run, include_matched=all))

        return await signed(request, work)

    return router


def channel_out(channel: Channel) -> dict[str, Any]:
    currency = Currency.of(channel.currency)

    def major(minor: int) -> str:
        return str(Money(minor, currency).to_decimal())

    return {
        "code": channel.code,
        "name": channel.name,
        "key_id": channel.key_id,
        "currency": channel.currency,
        "payment_method": channel.payment_method,
        "min_amount": major(channel.min_amount_minor),
        "max_amount": major(channel.max_amount_minor),
        "daily_limit": major(channel.daily_limit_minor),
        "rate_limit_per_minute": channel.rate_limit_per_minute,
        "reversal_window_minutes": channel.reversal_window_s // 60,
        "active": channel.active,
        "created_at": channel.created_at.isoformat(),
    }


def terms_from(body: NewChannel) -> NewChannelTerms:
    return NewChannelTerms(
        code=body.code,
        name=body.name,
        currency=body.currency,
        payment_method=PaymentMethod(body.payment_method),
        min_amount=Decimal(body.min_amount),
        max_amount=Decimal(body.max_amount),
        daily_limit=Decimal(body.daily_limit),
        rate_limit_per_minute=body.rate_limit_per_minute,
        reversal_window=timedelta(minutes=body.reversal_window_minutes),
    )


def make_admin_router(
    session_factory: sessionmaker[Session],
    *,
    require: Callable[..., Any],
    kek: KeyEncryptionKey,
    audit: AuditSink,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> APIRouter:
    """Staff routes under /api/channels: an admin creates a channel (its secret is in that
    answer only) and lists them; ``require(*roles)`` is the caller-check dependency."""
    router = APIRouter(prefix="/api/channels", tags=["channel admin"])

    @router.post("", response_model=CreatedChannel, status_code=status.HTTP_201_CREATED)
    def create_route(body: NewChannel, principal: Any = require("admin")) -> Any:
        """Create a channel; the answer holds its signing secret, shown this once."""
        try:
            with session_factory() as session, session.begin():
                channel, secret = create_channel(
                    session,
                    terms_from(body),
                    kek=kek,
                    audit=audit,
                    actor=str(getattr(principal, "username", "api")),
                    now=clock(),
                )
                return {**channel_out(channel), "secret": secret}
        except ChannelError as exc:
            raise HTTPException(
                exc.status, detail={"code": exc.code, "message": str(exc)}
            ) from None

    @router.get("", response_model=list[ChannelOut])
    def list_route(_: Any = require("admin", "supervisor")) -> Any:
        with session_factory() as session:
            return [channel_out(c) for c in session.scalars(select(Channel).order_by(Channel.id))]

    return router
