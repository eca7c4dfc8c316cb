"""Delivers the notification outbox: claim due rows, send each through its channel's
adapter, record the outcome; retry with backoff, then give up as ``failed``.

Safe with several dispatchers on one database: a claim is a lease (``claimed_by`` until
``claimed_until``) taken in a short transaction that locks the rows with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite transactions begin IMMEDIATE, so there
one claim waits for the other). Sending happens outside any transaction. A dispatcher
that dies holding a lease loses it when it runs out and the row is sent again: delivery
is at least once, and the idempotency key lets receivers drop the duplicate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session, sessionmaker

from vending.models import Account, Customer, Notification
from vending.notifications.delivery import (
    Delivery,
    DeliveryError,
    NotificationAdapter,
    idempotency_key,
)

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
ERROR_LIMIT = 500


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """``max_attempts`` attempts per row, the n-th retry ``backoff_s`` x 2^(n-1) later
    (at most ``max_backoff_s``); a claim is held ``lease_s``."""

    max_attempts: int = 8
    backoff_s: float = 30.0
    max_backoff_s: float = 3600.0
    lease_s: float = 300.0
    batch_size: int = 50

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.batch_size < 1:
            raise ValueError("max_attempts and batch_size must be at least 1")
        if self.backoff_s < 0 or self.lease_s <= 0:
            raise ValueError("backoff_s must not be negative and lease_s must be positive")

    def retry_delay(self, attempts: int) -> timedelta:
        """How long to wait after the ``attempts``-th failed attempt."""
        seconds = min(self.max_backoff_s, self.backoff_s * 2 ** max(0, attempts - 1))
        return timedelta(seconds=seconds)


@dataclass
class DispatchReport:
    delivered: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    # Sent, but the lease had passed to another dispatcher, which records the outcome.
    lease_lost: list[int] = field(default_factory=list)


class NotificationDispatcher:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        adapters: Iterable[NotificationAdapter],
        *,
        worker_id: str,
        settings: DispatchSettings = DispatchSettings(),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """Rows of channels without an adapter here stay pending (another dispatcher
        may serve them; the API shows them waiting)."""
        self._session_factory = session_factory
        self._adapters = {adapter.channel: adapter for adapter in adapters}
        self._worker_id = worker_id
        self._settings = settings
        self._clock = clock

    @property
    def channels(self) -> list[str]:
        return sorted(self._adapters)

    async def run(self, interval_s: float = 1.0) -> None:
        """Dispatch until cancelled; a failing round is logged and retried."""
        try:
            while True:
                try:
                    report = await asyncio.to_thread(self.run_once)
                    if report.delivered or report.retrying or report.failed:
                        log.info("notification round: %s", report)
                except Exception:
                    log.exception("notification round failed; retrying")
                await asyncio.sleep(interval_s)
        finally:
            self.close()

    def close(self) -> None:
        for adapter in self._adapters.values():
            adapter.close()

    def run_once(self) -> DispatchReport:
        """Claim the due rows, send them, record each outcome."""
        report = DispatchReport()
        for delivery in self._claim(self._clock()):
            try:
                self._adapters[delivery.channel].deliver(delivery)
                error: DeliveryError | None = None
            except DeliveryError as exc:
                error = exc
            except Exception as exc:  # an adapter's bug must not stop the other rows
                log.exception(
                    "adapter %s failed on notification %s",
                    delivery.channel,
                    delivery.notification_id,
                )
                error = DeliveryError(f"{type(exc).__name__}: {exc}")
            self._record(delivery.notification_id, error, report)
        return report

    def _claim(self, now: datetime) -> list[Delivery]:
        if not self._adapters:
            return []
        with self._session_factory() as session, session.begin():
            rows = session.execute(
                select(Notification, Account.account_number, Customer.email, Customer.phone)
                .join(Account, Account.id == Notification.account_id)
                .join(Customer, Customer.id == Account.customer_id)
                .where(
                    Notification.status == PENDING,
                    Notification.channel.in_(self._adapters),
                    _due(now),
                    or_(Notification.claimed_until.is_(None), Notification.claimed_until <= now),
                )
                .order_by(Notification.id)
                .limit(self._settings.batch_size)
                .with_for_update(of=Notification, skip_locked=True)
            ).all()
            claimed = []
            for notification, account_number, email, phone in rows:
                notification.claimed_by = self._worker_id
                notification.claimed_until = now + timedelta(seconds=self._settings.lease_s)
                # Counted when claimed, so a row that kills its dispatcher still runs out
                # of attempts instead of being retried for ever.
                notification.attempts += 1
                claimed.append(
                    Delivery(
                        notification_id=notification.id,
                        idempotency_key=idempotency_key(notification.id),
                        channel=notification.channel,
                        kind=notification.kind,
                        message=notification.message,
                        account_number=account_number,
                        created_at=notification.created_at,
                        email=email or "",
                        phone=phone or "",
                    )
                )
            return claimed

    def _record(
        self, notification_id: int, error: DeliveryError | None, report: DispatchReport
    ) -> None:
        now = self._clock()
        with self._session_factory() as session, session.begin():
            row = session.get_one(Notification, notification_id, with_for_update=True)
            if row.claimed_by != self._worker_id or row.status != PENDING:
                report.lease_lost.append(notification_id)
                return
            row.claimed_by, row.claimed_until = None, None
            if error is None:
                row.status, row.delivered_at, row.next_attempt_at = DELIVERED, now, None
                report.delivered.append(notification_id)
                return
            row.last_error = error.reason[:ERROR_LIMIT]
            if error.permanent or row.attempts >= self._settings.max_attempts:
                row.status, row.next_attempt_at = FAILED, None
                report.failed.append(notification_id)
                log.warning(
                    "notification %s (%s) failed after %s attempt(s): %s",
                    notification_id,
                    row.channel,
                    row.attempts,
                    row.last_error,
                )
            else:
                row.next_attempt_at = now + self._settings.retry_delay(row.attempts)
                report.retrying.append(notification_id)


def _due(now: datetime) -> ColumnElement[bool]:
    return or_(Notification.next_attempt_at.is_(None), Notification.next_attempt_at <= now)
