"""The channel API's rules: authentication, lookup, idempotent purchase, advices, status.

Every function runs inside the caller's transaction and raises :class:`ChannelError`
(a stable ``code`` and the HTTP status it is answered with) having written nothing the
caller must keep: the caller rolls the transaction back on any error.

Idempotency, the way banks and switches expect it (Electrum PUSI, XMLVend 2.1):

- A purchase is keyed by the channel's own reference. Its answer is stored, as bytes, in
  the same transaction as the vend; a retry with the same content gets those bytes
  whatever happened in between (a crash after the commit included), and a retry with
  other content gets ``reference_conflict``.
- Confirm and reverse advices are kept per (reference, kind) and may arrive before their
  purchase: a reversal that comes first refuses the purchase when it arrives.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from headend.audit import AuditSink
from headend.interface import find_meter
from vending.channels.models import Channel, ChannelAdvice, ChannelNonce, ChannelPurchase
from vending.channels.signing import WINDOW_S, SignatureError, SignedHeaders, verify
from vending.counter import PaymentMethod, VendLimits, VendRequest, lock_for_vend, lookup, vend
from vending.errors import VendingError
from vending.key_changes import pending_key_change
from vending.keystore import KeyEncryptionKey, KeyStoreError
from vending.models import Account, AccountMeter, Customer, LedgerEntry, Vend
from vending.money import Currency, Money, MoneyError
from vending.security_module import SecurityModule

# Whether a meter is known to have accepted the token with this TID (the clerk counter's
# record of token_accepted events); the channel API refuses to reverse such a vend.
TokenAccepted = Callable[[Session, int, int], bool]

REFERENCE_PATTERN = r"^[A-Za-z0-9._:/-]{1,64}$"
_REFERENCE = re.compile(REFERENCE_PATTERN)

# HTTP status of each refusal; codes not listed are answered 409.
HTTP_STATUS: dict[str, int] = {
    "missing_signature": 401,
    "malformed_signature": 401,
    "unknown_key": 401,
    "bad_signature": 401,
    "stale_timestamp": 401,
    "replayed_nonce": 401,
    "channel_inactive": 403,
    "rate_limited": 429,
    "invalid_request": 422,
    "invalid_reference": 422,
    "invalid_amount": 422,
    "invalid_meter_number": 422,
    "currency_mismatch": 422,
    "amount_below_minimum": 422,
    "amount_above_maximum": 422,
    "invalid_settlement_file": 422,
    "meter_not_found": 404,
    "account_not_found": 404,
    "reference_not_found": 404,
    "reconciliation_not_found": 404,
    "channel_exists": 409,
    "channel_secret_undecryptable": 500,
    "daily_limit_exceeded": 409,
    "reference_conflict": 409,
    "purchase_reversed": 409,
    "concurrent_duplicate": 409,
    "token_refused": 503,
    "meter_keys_unknown": 503,
    "key_not_found": 503,
    "key_retired": 503,
    "key_undecryptable": 503,
}


class ChannelError(Exception):
    """A refused channel request: ``code`` is stable, ``status`` is the HTTP status."""

    def __init__(self, code: str, message: str, **detail: object) -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail

    @property
    def status(self) -> int:
        return HTTP_STATUS.get(self.code, 409)

    @classmethod
    def from_vending(cls, exc: VendingError) -> ChannelError:
        return cls(exc.code, str(exc), **exc.detail)


def refusal_body(exc: ChannelError) -> bytes:
    """The JSON body of a refusal: {"code", "message", "detail"}."""
    return canonical_json({"code": exc.code, "message": str(exc), "detail": exc.detail})


def canonical_json(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), default=str).encode()


# Channels ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewChannelTerms:
    """A new channel's identity and limits (amounts in major units of ``currency``)."""

    code: str
    name: str
    currency: str
    payment_method: PaymentMethod = PaymentMethod.BANK
    min_amount: Decimal = Decimal("5")
    max_amount: Decimal = Decimal("5000")
    daily_limit: Decimal = Decimal("10000000")
    rate_limit_per_minute: int = 6000
    reversal_window: timedelta = timedelta(hours=24)


def _secret_associated_data(key_id: str) -> bytes:
    return f"gridvend-channel-secret|{key_id}".encode()


def create_channel(
    session: Session,
    terms: NewChannelTerms,
    *,
    kek: KeyEncryptionKey,
    audit: AuditSink,
    actor: str,
    now: datetime,
) -> tuple[Channel, str]:
    """Create a channel; returns it and its signing secret, which is never shown again.

    ChannelError: invalid_request (bad code, currency, limits), channel_exists.
    """
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{1,23}", terms.code):
        raise ChannelError("invalid_request", "the code is 2-24 of a-z 0-9 - (e.g. 'acme-bank')")
    try:
        currency = Currency.of(terms.currency)
        minimum = Money.parse(terms.min_amount, currency)
        maximum = Money.parse(terms.max_amount, currency)
        daily = Money.parse(terms.daily_limit, currency)
    except MoneyError as exc:
        raise ChannelError("invalid_request", str(exc)) from None
    if not 0 < minimum.minor <= maximum.minor <= daily.minor:
        raise ChannelError("invalid_request", "limits must satisfy 0 < min <= max <= daily")
    if terms.rate_limit_per_minute < 1 or terms.reversal_window < timedelta(0):
        raise ChannelError("invalid_request", "the rate limit and reversal window must be >= 0")
    if session.scalar(select(Channel.id).where(Channel.code == terms.code)) is not None:
        raise ChannelError("channel_exists", f"channel {terms.code} exists")
    key_id = f"gvk_{secrets.token_hex(12)}"
    secret = f"gvs_{secrets.token_urlsafe(32)}"
    nonce, ciphertext = kek.encrypt(secret.encode("ascii"), _secret_associated_data(key_id))
    channel = Channel(
        code=terms.code,
        name=terms.name,
        payment_method=terms.payment_method.value,
        key_id=key_id,
        kek_id=kek.kek_id,
        secret_nonce=nonce,
        secret_ciphertext=ciphertext,
        currency=currency.code,
        min_amount_minor=minimum.minor,
        max_amount_minor=maximum.minor,
        daily_limit_minor=daily.minor,
        rate_limit_per_minute=terms.rate_limit_per_minute,
        reversal_window_s=int(terms.reversal_window.total_seconds()),
        active=True,
        created_at=now,
        created_by=actor,
    )
    session.add(channel)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="channel.create",
        subject=f"channel:{channel.code}",
        detail={"key_id": key_id, "currency": currency.code},
    )
    return channel, secret


def channel_secret(channel: Channel, kek: KeyEncryptionKey) -> str:
    """The channel's signing secret; ChannelError channel_secret_undecryptable when the
    KEK is not the one it was stored under."""
    try:
        plaintext = kek.decrypt(
            channel.secret_nonce, channel.secret_ciphertext, _secret_associated_data(channel.key_id)
        )
    except KeyStoreError:
        raise ChannelError(
            "channel_secret_undecryptable",
            "the channel's secret does not decrypt under this key-encryption key",
        ) from None
    return plaintext.decode("ascii")


def vend_channel_name(channel: Channel) -> str:
    """The ``channel`` a channel's vends are recorded under (distinct from the counter's)."""
    return f"ch:{channel.code}"


# Authentication ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated channel: its row and the nonce it used."""

    channel: Channel
    nonce: str


class SecretCache:
    """Decrypted secrets by key id (the KEK decrypts each once per process)."""

    def __init__(self, kek: KeyEncryptionKey) -> None:
        self._kek = kek
        self._secrets: dict[tuple[str, bytes], str] = {}

    def secret(self, channel: Channel) -> str:
        key = (channel.key_id, channel.secret_ciphertext)
        cached = self._secrets.get(key)
        if cached is None:
            cached = self._secrets[key] = channel_secret(channel, self._kek)
        return cached


def authenticate(
    session: Session,
    signed: SignedHeaders,
    *,
    method: str,
    path: str,
    body: bytes,
    secrets_cache: SecretCache,
    now: datetime,
) -> Caller:
    """The channel that signed this request, its nonce recorded in the caller's transaction.

    The timestamp window is checked by the caller before (it needs no database).
    ChannelError: unknown_key, channel_inactive, bad_signature, replayed_nonce.
    """
    channel = session.scalar(select(Channel).where(Channel.key_id == signed.key_id))
    if channel is None:
        raise ChannelError("unknown_key", f"no channel has the key id {signed.key_id!r}")
    try:
        verify(secrets_cache.secret(channel), signed, method, path, body)
    except SignatureError as exc:
        raise ChannelError(exc.code, str(exc)) from None
    if not channel.active:
        raise ChannelError("channel_inactive", f"channel {channel.code} is suspended")
    record_nonce(session, channel.id, signed.nonce, now)
    return Caller(channel, signed.nonce)


def record_nonce(session: Session, channel_id: int, nonce: str, now: datetime) -> None:
    """Remember a nonce for the signing window; ChannelError replayed_nonce if it is known."""
    # The unique (channel, nonce) constraint is the check; the caller's transaction is
    # rolled back on the error. Kept twice the window: a timestamp up to WINDOW_S in the
    # future stays valid that long.
    session.add(
        ChannelNonce(
            channel_id=channel_id, nonce=nonce, expires_at=now + timedelta(seconds=2 * WINDOW_S)
        )
    )
    try:
        session.flush()
    except IntegrityError:
        raise ChannelError(
            "replayed_nonce", "this nonce was already used: sign with a new one"
        ) from None


def forget_expired_nonces(session: Session, now: datetime) -> int:
    """Delete nonces whose window has passed; returns how many."""
    result = session.execute(delete(ChannelNonce).where(ChannelNonce.expires_at < now))
    return int(getattr(result, "rowcount", 0) or 0)


# Lookup --------------------------------------------------------------------------------


def mask_name(name: str) -> str:
    """A customer's name as banks show it: each word's first letter, the rest starred."""
    return " ".join(word[0] + "*" * (len(word) - 1) for word in name.split() if word)


def _meter_for_account(session: Session, account_number: str) -> str:
    account = session.scalar(select(Account).where(Account.account_number == account_number))
    if account is None:
        raise ChannelError("account_not_found", f"no account {account_number}")
    meter_ids = session.scalars(
        select(AccountMeter.meter_id).where(
            AccountMeter.account_id == account.id, AccountMeter.unlinked_at.is_(None)
        )
    ).all()
    if len(meter_ids) != 1:
        raise ChannelError(
            "account_meter_ambiguous",
            f"account {account_number} has {len(meter_ids)} meters: give the meter number",
        )
    meter = find_meter(session, meter_id=meter_ids[0])
    if meter is None or meter.meter_number is None:
        raise ChannelError("meter_not_found", f"the meter of account {account_number} is unknown")
    return meter.meter_number


def resolve_meter_number(
    session: Session, meter_number: str | None, account_number: str | None
) -> str:
    """The meter a request is for: given, or the account's only meter.

    ChannelError invalid_request (neither or both), account_not_found,
    account_meter_ambiguous.
    """
    if (meter_number is None) == (account_number is None):
        raise ChannelError("invalid_request", "give exactly one of meter_number, account_number")
    if meter_number is not None:
        return meter_number
    assert account_number is not None
    return _meter_for_account(session, account_number)


def lookup_customer(
    session: Session,
    channel: Channel,
    *,
    meter_number: str | None,
    account_number: str | None,
    now: datetime,
) -> dict[str, Any]:
    """What the channel shows its customer before taking money; no side effect.

    ChannelError with the codes of :func:`resolve_meter_number` and of the counter's
    lookup (meter_not_found, meter_not_vendable, meter_not_on_account, account_closed...).
    """
    number = resolve_meter_number(session, meter_number, account_number)
    try:
        quote = lookup(session, number, now, VendLimits(maximum_minor=channel.max_amount_minor))
    except VendingError as exc:
        raise ChannelError.from_vending(exc) from None
    currency = quote.tariff.currency
    if currency.code != channel.currency:
        raise ChannelError(
            "currency_mismatch",
            f"this meter is sold in {currency.code}; the channel settles in {channel.currency}",
        )
    minimum = max(quote.minimum.minor, channel.min_amount_minor)
    return {
        "meter_number": quote.meter.meter_number,
        "account_number": quote.account.account_number,
        "customer_name": mask_name(quote.customer.name),
        "prepaid_mode": quote.meter.prepaid_mode,
        "currency": currency.code,
        "minimum_amount": str(Money(minimum, currency).to_decimal()),
        "maximum_amount": str(Money(channel.max_amount_minor, currency).to_decimal()),
        "arrears": str(quote.debt.to_decimal()),
        "key_change_pending": pending_key_change(session, quote.meter.id) is not None,
    }


# Purchase ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PurchaseOrder:
    """A purchase as the channel sent it (amount in major units, as text)."""

    reference: str
    amount: str
    currency: str
    meter_number: str | None = None
    account_number: str | None = None
    key_change_acknowledged: bool = False

    def content_sha256(self) -> str:
        """The identity of the request's content: the same for the same order, whatever
        the JSON spacing or key order; the amount compared by value ("50" == "50.00")."""
        try:
            amount = str(Decimal(self.amount).normalize())
        except ArithmeticError:
            amount = self.amount
        content: dict[str, object] = {
            "amount": amount,
            "currency": self.currency,
            "meter_number": self.meter_number,
            "account_number": self.account_number,
        }
        if self.key_change_acknowledged:
            # Only when set, so orders stored before the field existed keep their identity.
            content["key_change_acknowledged"] = True
        return hashlib.sha256(canonical_json(content)).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """An answer as its exact bytes: a replay returns these."""

    status: int
    body: bytes
    replayed: bool


def find_purchase(session: Session, channel_id: int, reference: str) -> ChannelPurchase | None:
    return session.scalar(
        select(ChannelPurchase).where(
            ChannelPurchase.channel_id == channel_id, ChannelPurchase.reference == reference
        )
    )


def replay(earlier: ChannelPurchase, order: PurchaseOrder) -> StoredAnswer:
    """The stored answer for a retried order; ChannelError reference_conflict if its
    content differs from the first."""
    if earlier.request_sha256 != order.content_sha256():
        raise ChannelError(
            "reference_conflict",
            f"reference {order.reference!r} was used for another purchase on this channel",
        )
    return StoredAnswer(earlier.response_status, earlier.response_body, replayed=True)


def purchase(
    session: Session,
    channel: Channel,
    order: PurchaseOrder,
    *,
    security_module: SecurityModule,
    audit: AuditSink,
    now: datetime,
) -> StoredAnswer:
    """Sell credit for ``order``, or return the answer already given to this reference.

    The vend, the stored answer and the account's before-state are written in the
    caller's transaction. ChannelError: invalid_reference, reference_conflict,
    currency_mismatch, invalid_amount, amount_below_minimum, amount_above_maximum,
    daily_limit_exceeded, and the counter's codes (meter_not_found, ...).
    """
    if not _REFERENCE.match(order.reference):
        raise ChannelError("invalid_reference", "the reference is 1-64 of A-Z a-z 0-9 . _ : / -")
    earlier = find_purchase(session, channel.id, order.reference)
    if earlier is not None:
        return replay(earlier, order)
    currency = Currency.of(channel.currency)
    if order.currency != currency.code:
        raise ChannelError(
            "currency_mismatch", f"this channel settles in {currency.code}, not {order.currency}"
        )
    try:
        amount = Money.parse(order.amount, currency)
    except MoneyError as exc:
        raise ChannelError("invalid_amount", str(exc)) from None
    _check_amount_range(channel, amount)
    advices = _advices(session, channel.id, order.reference)
    reversal = advices.get("reverse")
    if reversal is not None and reversal.outcome == "pending":
        return _refused_by_reversal(session, channel, order, amount, reversal, now)
    business_date = now.date()
    # A cheap check first (most refusals end here), the exact one after the vend.
    _check_daily_limit(session, channel, business_date, amount)
    meter_number = resolve_meter_number(session, order.meter_number, order.account_number)
    try:
        # Locked once, here, so the before-state we keep is the one the vend prices on.
        locked = lock_for_vend(session, meter_number)
    except VendingError as exc:
        raise ChannelError.from_vending(exc) from None
    before = _account_state(locked.account)
    if locked.account.last_purchase_at is not None:
        # ``now`` was read before we waited for the account's lock; a purchase that
        # committed meanwhile may be later, and pricing refuses to go back in time.
        now = max(now, locked.account.last_purchase_at)
    try:
        record = vend(
            session,
            VendRequest(
                meter_number=meter_number,
                amount=amount.to_decimal(),
                payment_method=PaymentMethod(channel.payment_method),
                channel=vend_channel_name(channel),
                reference=order.reference,
                operator=f"channel:{channel.code}",
                key_change_acknowledged=order.key_change_acknowledged,
            ),
            security_module=security_module,
            audit=audit,
            now=now,
            limits=VendLimits(maximum_minor=channel.max_amount_minor),
            locked=locked,
        )
    except VendingError as exc:
        raise ChannelError.from_vending(exc) from None
    if record.currency != currency.code:
        raise ChannelError(
            "currency_mismatch",
            f"this meter is sold in {record.currency}; the channel settles in {currency.code}",
        )
    _lock_channel_day(session, channel)
    _check_daily_limit(session, channel, business_date, amount)
    body = canonical_json(_receipt(session, channel, order.reference, record))
    stored = ChannelPurchase(
        channel_id=channel.id,
        reference=order.reference,
        request_sha256=order.content_sha256(),
        vend_id=record.id,
        status="completed",
        amount_minor=amount.minor,
        currency=currency.code,
        business_date=business_date,
        created_at=now,
        response_status=200,
        response_body=body,
        account_before=before,
    )
    session.add(stored)
    confirm = advices.get("confirm")
    if confirm is not None and confirm.outcome == "pending":
        stored.confirmed_at = now
        confirm.outcome, confirm.resolved_at = "applied", now
    try:
        session.flush()
    except IntegrityError:
        raise ChannelError(
            "concurrent_duplicate", "the same reference is being processed: retry for its answer"
        ) from None
    return StoredAnswer(200, body, replayed=False)


# Key space of PostgreSQL advisory locks taken per channel (the audit log uses 7243001).
_CHANNEL_LOCK_SPACE = 7243101


def _lock_channel_day(session: Session, channel: Channel) -> None:
    """Queue this channel's purchases for the last step, until commit: the daily total
    read next then includes every purchase committed before, so concurrent purchases
    cannot pass the limit together. (SQLite has one writer at a time already.)"""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:space, :channel)"),
            {"space": _CHANNEL_LOCK_SPACE, "channel": channel.id},
        )


def _check_daily_limit(
    session: Session, channel: Channel, business_date: date, amount: Money
) -> None:
    """ChannelError daily_limit_exceeded when ``amount`` would take the channel's completed
    purchases of the (UTC) day past its daily limit."""
    sold_today = session.scalar(
        select(func.coalesce(func.sum(ChannelPurchase.amount_minor), 0)).where(
            ChannelPurchase.channel_id == channel.id,
            ChannelPurchase.business_date == business_date,
            ChannelPurchase.status == "completed",
        )
    )
    if int(sold_today or 0) + amount.minor > channel.daily_limit_minor:
        raise ChannelError(
            "daily_limit_exceeded",
            f"this purchase would take the channel past its daily limit of "
            f"{Money(channel.daily_limit_minor, amount.currency)}",
        )


def _check_amount_range(channel: Channel, amount: Money) -> None:
    """ChannelError amount_below_minimum / amount_above_maximum outside the channel's range."""
    minimum = Money(channel.min_amount_minor, amount.currency)
    maximum = Money(channel.max_amount_minor, amount.currency)
    limits = {"minimum": str(minimum.to_decimal()), "maximum": str(maximum.to_decimal())}
    if amount.minor < minimum.minor:
        raise ChannelError(
            "amount_below_minimum", f"{amount} is below the minimum of {minimum}", **limits
        )
    if amount.minor > maximum.minor:
        raise ChannelError(
            "amount_above_maximum", f"{amount} is above the maximum of {maximum}", **limits
        )


def _account_state(account: Account) -> dict[str, Any]:
    return {
        "debt_minor": account.debt_minor,
        "carry_over_minor": account.carry_over_minor,
        "month_to_date_kwh": str(account.month_to_date_kwh),
        "last_purchase_at": account.last_purchase_at.isoformat()
        if account.last_purchase_at
        else None,
        "fixed_charged_through": account.fixed_charged_through.isoformat()
        if account.fixed_charged_through
        else None,
    }


def _restore_account(account: Account, state: dict[str, Any]) -> None:
    account.debt_minor = int(state["debt_minor"])
    account.carry_over_minor = int(state["carry_over_minor"])
    account.month_to_date_kwh = Decimal(state["month_to_date_kwh"])
    last = state["last_purchase_at"]
    account.last_purchase_at = datetime.fromisoformat(last) if last else None
    through = state["fixed_charged_through"]
    account.fixed_charged_through = date.fromisoformat(through) if through else None


def _receipt(session: Session, channel: Channel, reference: str, record: Vend) -> dict[str, Any]:
    meter = find_meter(session, meter_id=record.meter_id)
    account = session.get_one(Account, record.account_id)
    customer = session.get_one(Customer, account.customer_id)
    currency = Currency.of(record.currency)
    central = meter is not None and meter.prepaid_mode == "central"
    return {
        "reference": reference,
        "status": "completed",
        "receipt_number": record.receipt_number,
        "created_at": record.created_at.isoformat(),
        "meter_number": meter.meter_number if meter else None,
        "account_number": account.account_number,
        "customer_name": mask_name(customer.name),
        "prepaid_mode": meter.prepaid_mode if meter else None,
        "amount": str(Money(record.tendered_minor, currency).to_decimal()),
        "currency": currency.code,
        "units_kwh": str(record.units_kwh),
        "token": _grouped(record.token_digits),
        "tid": record.tid,
        "balance": str(balance(session, account.id, currency).to_decimal()) if central else None,
        "breakdown": record.breakdown,
    }


def _grouped(digits: str | None) -> str | None:
    if digits is None:
        return None
    return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))


def balance(session: Session, account_id: int, currency: Currency) -> Money:
    """A central-balance account's money: the sum of its ledger."""
    total = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount_minor), 0)).where(
            LedgerEntry.account_id == account_id
        )
    )
    return Money(int(total or 0), currency)


def _refused_by_reversal(
    session: Session,
    channel: Channel,
    order: PurchaseOrder,
    amount: Money,
    advice: ChannelAdvice,
    now: datetime,
) -> StoredAnswer:
    """A reversal advice came before this purchase: refuse it, and keep the refusal as
    the purchase's answer so every retry gets the same one."""
    refusal = ChannelError(
        "purchase_reversed",
        f"a reversal advice for {order.reference!r} arrived before the purchase: nothing sold",
    )
    session.add(
        ChannelPurchase(
            channel_id=channel.id,
            reference=order.reference,
            request_sha256=order.content_sha256(),
            vend_id=None,
            status="refused",
            amount_minor=amount.minor,
            currency=amount.currency.code,
            business_date=now.date(),
            created_at=now,
            response_status=refusal.status,
            response_body=refusal_body(refusal),
            account_before={},
            reversed_at=now,
        )
    )
    advice.outcome, advice.resolved_at = "applied", now
    session.flush()
    return StoredAnswer(refusal.status, refusal_body(refusal), replayed=False)


# Status and advices --------------------------------------------------------------------


def purchase_status(session: Session, channel: Channel, reference: str) -> dict[str, Any]:
    """unknown, completed or reversed (a purchase refused by an early reversal counts as
    reversed), with the receipt number and whether the channel confirmed it."""
    stored = find_purchase(session, channel.id, reference)
    if stored is None:
        return {"reference": reference, "status": "unknown", "confirmed": False}
    receipt = json.loads(stored.response_body) if stored.vend_id is not None else {}
    return {
        "reference": reference,
        "status": "completed" if stored.status == "completed" else "reversed",
        "confirmed": stored.confirmed_at is not None,
        "receipt_number": receipt.get("receipt_number"),
        "amount": str(Money(stored.amount_minor, Currency.of(stored.currency)).to_decimal()),
        "currency": stored.currency,
        "created_at": stored.created_at.isoformat(),
        "reversed_at": stored.reversed_at.isoformat() if stored.reversed_at else None,
    }


def _advice(session: Session, channel_id: int, reference: str, kind: str) -> ChannelAdvice | None:
    return session.scalar(
        select(ChannelAdvice).where(
            ChannelAdvice.channel_id == channel_id,
            ChannelAdvice.reference == reference,
            ChannelAdvice.kind == kind,
        )
    )


def _advices(session: Session, channel_id: int, reference: str) -> dict[str, ChannelAdvice]:
    """The advices kept for a reference, by kind."""
    rows = session.scalars(
        select(ChannelAdvice).where(
            ChannelAdvice.channel_id == channel_id, ChannelAdvice.reference == reference
        )
    )
    return {advice.kind: advice for advice in rows}


def advise(
    session: Session,
    channel: Channel,
    reference: str,
    kind: str,
    *,
    audit: AuditSink,
    now: datetime,
    token_accepted: TokenAccepted,
    reason: str = "",
) -> dict[str, Any]:
    """Apply a confirm or reverse advice, once; a re-sent advice gets the first outcome.

    Returns {"reference", "advice", "outcome": applied | pending | refused, "code",
    "status", ...}. A refusal (``code``: reversal_window_closed, purchase_confirmed,
    token_accepted, reversal_not_latest, purchase_reversed) is an acknowledged advice:
    the channel stops re-sending it and settles the case by hand.
    """
    if not _REFERENCE.match(reference):
        raise ChannelError("invalid_reference", "the reference is 1-64 of A-Z a-z 0-9 . _ : / -")
    advice = _advice(session, channel.id, reference, kind)
    extra: dict[str, Any] = {}
    if advice is None:
        advice = ChannelAdvice(
            channel_id=channel.id,
            reference=reference,
            kind=kind,
            outcome="pending",
            refusal_code=None,
            received_at=now,
        )
        session.add(advice)
        stored = find_purchase(session, channel.id, reference)
        if stored is not None:
            apply = _confirm if kind == "confirm" else _reverse
            code, extra = apply(session, channel, stored, now, token_accepted, audit, reason)
            advice.outcome = "refused" if code else "applied"
            advice.refusal_code = code
            advice.resolved_at = now
        try:
            session.flush()
        except IntegrityError:
            raise ChannelError(
                "concurrent_duplicate", "the same advice is being processed: re-send it"
            ) from None
    stored = find_purchase(session, channel.id, reference)
    status = "unknown" if stored is None else purchase_status(session, channel, reference)["status"]
    return {
        "reference": reference,
        "advice": kind,
        "outcome": advice.outcome,
        "code": advice.refusal_code,
        "status": status,
        **extra,
    }


def _confirm(
    session: Session,
    channel: Channel,
    stored: ChannelPurchase,
    now: datetime,
    token_accepted: TokenAccepted,
    audit: AuditSink,
    reason: str,
) -> tuple[str | None, dict[str, Any]]:
    if stored.status != "completed":
        return "purchase_reversed", {}
    stored.confirmed_at = now
    return None, {}


def _reverse(
    session: Session,
    channel: Channel,
    stored: ChannelPurchase,
    now: datetime,
    token_accepted: TokenAccepted,
    audit: AuditSink,
    reason: str,
) -> tuple[str | None, dict[str, Any]]:
    """Reverse a completed purchase under the counter's rules; the refusal code or None."""
    if stored.status != "completed" or stored.vend_id is None:
        return None, {}  # already reversed or refused: the advice is satisfied
    if stored.confirmed_at is not None:
        return "purchase_confirmed", {}
    if now - stored.created_at > timedelta(seconds=channel.reversal_window_s):
        return "reversal_window_closed", {}
    record = session.scalar(select(Vend).where(Vend.id == stored.vend_id).with_for_update())
    assert record is not None  # a foreign key
    account = session.scalar(
        select(Account)
        .where(Account.id == record.account_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert account is not None
    later = session.scalar(
        select(Vend.id).where(
            Vend.account_id == record.account_id, Vend.id > record.id, Vend.status != "reversed"
        )
    )
    if later is not None:
        return "reversal_not_latest", {}
    if record.tid is not None and token_accepted(session, record.meter_id, record.tid):
        return "token_accepted", {}
    _restore_account(account, stored.account_before)
    record.status = "reversed"
    record.reversed_at = now
    record.reversed_by = f"channel:{channel.code}"
    record.reversal_reason = reason or "reversal advice"
    stored.status = "reversed"
    stored.reversed_at = now
    extra: dict[str, Any] = {}
    payment = session.scalar(
        select(LedgerEntry).where(
            LedgerEntry.account_id == account.id,
            LedgerEntry.kind == "payment",
            LedgerEntry.reference == f"vend:{record.id}",
        )
    )
    currency = Currency.of(record.currency)
    if payment is not None:
        after = balance(session, account.id, currency).minor - payment.amount_minor
        # The customer may already have used the credit: the balance goes negative and
        # the flag tells operators (and the balance engine) so.
        session.add(
            LedgerEntry(
                account_id=account.id,
                kind="reversal",
                amount_minor=-payment.amount_minor,
                reference=f"vend:{record.id}",
                detail={
                    "receipt": record.receipt_number,
                    "channel": channel.code,
                    "negative_balance": after < 0,
                },
                created_at=now,
            )
        )
        extra = {
            "balance": str(Money(after, currency).to_decimal()),
            "negative_balance": after < 0,
        }
    audit.record(
        session,
        actor=f"channel:{channel.code}",
        action="vend.reverse",
        subject=f"receipt:{record.receipt_number}",
        detail={
            "reference": stored.reference,
            "amount": str(Money(record.tendered_minor, currency).to_decimal()),
            "tid": record.tid,
            "reason": record.reversal_reason,
            **extra,
        },
    )
    return None, extra


def no_acceptance_known(_session: Session, _meter_id: int, _tid: int) -> bool:
    """The default when no record of meters' token acceptances is wired in."""
    return False
