"""The notification dispatcher against real receivers: SMTP, an SMS gateway and a
webhook over HTTP, retries with backoff, giving up, and two dispatchers at once."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from email import message_from_bytes

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.vending.notifications.conftest import (
    SMTP_PASSWORD,
    SMTP_USER,
    HttpReceiver,
    SecureSmtpServer,
    SmtpServer,
)
from tests.vending.world import VendingWorld, add_metered_customer, build_world
from vending.models import Account, Customer, Notification
from vending.notifications import (
    Delivery,
    DispatchSettings,
    HttpSmsAdapter,
    NotificationDispatcher,
    RecordingAdapter,
    SmtpAdapter,
    SmtpSettings,
    WebhookAdapter,
)

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
SECRET = b"webhook shared secret"
GATEWAY_TOKEN = "gateway-token-123"
MESSAGE = "Meter 01234567890: balance 12.00 ZAR, at or below 30% of your last top-up."


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> VendingWorld:
    return build_world(session_factory)


def _account(world: VendingWorld, serial: int, *, email: str = "", phone: str = "") -> int:
    add_metered_customer(world, serial)
    with world.session_factory() as session, session.begin():
        account = session.scalars(select(Account).order_by(Account.id)).all()[-1]
        customer = session.get_one(Customer, account.customer_id)
        customer.email, customer.phone = email, phone
        return account.id


def _outbox(world: VendingWorld, account_id: int, channel: str, count: int = 1) -> list[int]:
    with world.session_factory() as session, session.begin():
        rows = [
            Notification(
                account_id=account_id,
                kind="low_balance_30",
                channel=channel,
                message=MESSAGE,
                created_at=NOW - timedelta(minutes=1),
                status="pending",
                attempts=0,
            )
            for _ in range(count)
        ]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def _row(world: VendingWorld, notification_id: int) -> Notification:
    with world.session_factory() as session:
        return session.get_one(Notification, notification_id)


def _dispatcher(
    world: VendingWorld,
    *adapters: object,
    clock: Clock,
    worker_id: str = "dispatcher-1",
    max_attempts: int = 5,
) -> NotificationDispatcher:
    return NotificationDispatcher(
        world.session_factory,
        adapters,  # type: ignore[arg-type]
        worker_id=worker_id,
        settings=DispatchSettings(max_attempts=max_attempts, backoff_s=30, lease_s=120),
        clock=clock,
    )


def test_email_is_sent_over_smtp_with_the_idempotency_key_as_message_id(
    world: VendingWorld, smtp_server: SmtpServer
) -> None:
    account_id = _account(world, 1, email="thandi@example.org")
    [notification_id] = _outbox(world, account_id, "email")
    adapter = SmtpAdapter(
        SmtpSettings(host=smtp_server.host, port=smtp_server.port, sender="alerts@utility.test")
    )
    report = _dispatcher(world, adapter, clock=Clock(NOW)).run_once()

    assert report.delivered == [notification_id]
    [envelope] = smtp_server.inbox.messages
    assert envelope.rcpt_tos == ["thandi@example.org"]
    assert envelope.mail_from == "alerts@utility.test"
    email = message_from_bytes(envelope.original_content or b"")
    assert email["Subject"].startswith("Low balance")
    assert email["Message-ID"] == f"<gridvend-notification-{notification_id}@utility.test>"
    assert MESSAGE in email.get_payload()
    row = _row(world, notification_id)
    assert (row.status, row.attempts, row.delivered_at) == ("delivered", 1, NOW)


def test_an_smtp_refusal_with_a_5xx_fails_the_row_at_once_with_the_reason(
    world: VendingWorld, smtp_server: SmtpServer
) -> None:
    smtp_server.inbox.refuse_rcpt = "550 5.1.1 no such mailbox"
    account_id = _account(world, 2, email="nobody@example.org")
    [notification_id] = _outbox(world, account_id, "email")
    adapter = SmtpAdapter(SmtpSettings(host=smtp_server.host, port=smtp_server.port))
    report = _dispatcher(world, adapter, clock=Clock(NOW)).run_once()

    assert report.failed == [notification_id]
    row = _row(world, notification_id)
    assert (row.status, row.attempts) == ("failed", 1)
    assert "550" in (row.last_error or "")


def test_email_goes_over_starttls_with_a_login(
    world: VendingWorld, secure_smtp_server: SecureSmtpServer
) -> None:
    account_id = _account(world, 13, email="thandi@example.org")
    [notification_id] = _outbox(world, account_id, "email")
    settings = SmtpSettings(
        host=secure_smtp_server.host,
        port=secure_smtp_server.port,
        starttls=True,
        username=SMTP_USER,
        password=SMTP_PASSWORD,
    )
    adapter = SmtpAdapter(settings, tls_context=secure_smtp_server.client_tls)
    assert _dispatcher(world, adapter, clock=Clock(NOW)).run_once().delivered == [notification_id]
    assert [m.rcpt_tos for m in secure_smtp_server.inbox.messages] == [["thandi@example.org"]]


def test_a_refused_login_is_retried_and_the_password_is_never_recorded(
    world: VendingWorld, secure_smtp_server: SecureSmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    account_id = _account(world, 14, email="thandi@example.org")
    [notification_id] = _outbox(world, account_id, "email")
    wrong = "not-the-relay-password"
    settings = SmtpSettings(
        host=secure_smtp_server.host,
        port=secure_smtp_server.port,
        starttls=True,
        username=SMTP_USER,
        password=wrong,
    )
    adapter = SmtpAdapter(settings, tls_context=secure_smtp_server.client_tls)
    with caplog.at_level("DEBUG"):
        report = _dispatcher(world, adapter, clock=Clock(NOW)).run_once()

    # A relay's credentials get fixed by an operator: worth retrying, not failing now.
    assert report.retrying == [notification_id]
    row = _row(world, notification_id)
    assert row.last_error == "SMTP login refused (535)"
    assert wrong not in caplog.text and wrong not in repr(settings)
    assert secure_smtp_server.inbox.messages == []


def test_an_unreachable_smtp_server_is_retried_later(world: VendingWorld) -> None:
    account_id = _account(world, 3, email="thandi@example.org")
    [notification_id] = _outbox(world, account_id, "email")
    closed_port = SmtpSettings(host="127.0.0.1", port=1, timeout_s=2)
    report = _dispatcher(world, SmtpAdapter(closed_port), clock=Clock(NOW)).run_once()

    assert report.retrying == [notification_id]
    row = _row(world, notification_id)
    assert (row.status, row.next_attempt_at) == ("pending", NOW + timedelta(seconds=30))
    assert "unreachable" in (row.last_error or "")


def test_a_customer_without_a_phone_number_fails_without_a_request(
    world: VendingWorld, http_receiver: HttpReceiver
) -> None:
    account_id = _account(world, 4, email="only-email@example.org")
    [notification_id] = _outbox(world, account_id, "sms")
    adapter = HttpSmsAdapter(http_receiver.url, GATEWAY_TOKEN)
    _dispatcher(world, adapter, clock=Clock(NOW)).run_once()

    assert http_receiver.received == []
    row = _row(world, notification_id)
    assert (row.status, row.last_error) == ("failed", "the customer has no phone number")


def test_sms_goes_to_the_gateway_with_the_bearer_token_and_idempotency_key(
    world: VendingWorld, http_receiver: HttpReceiver
) -> None:
    account_id = _account(world, 5, phone="+27821234567")
    [notification_id] = _outbox(world, account_id, "sms")
    adapter = HttpSmsAdapter(http_receiver.url, GATEWAY_TOKEN)
    _dispatcher(world, adapter, clock=Clock(NOW)).run_once()

    [request] = http_receiver.received
    assert request.headers["Authorization"] == f"Bearer {GATEWAY_TOKEN}"
    assert request.headers["Idempotency-Key"] == f"gridvend-notification-{notification_id}"
    assert json.loads(request.body) == {
        "to": "+27821234567",
        "message": MESSAGE,
        "reference": f"gridvend-notification-{notification_id}",
    }
    assert _row(world, notification_id).status == "delivered"


def test_a_gateway_that_fails_then_succeeds_gets_the_same_key_after_the_backoff(
    world: VendingWorld, http_receiver: HttpReceiver
) -> None:
    http_receiver.script = [503, 503, 200]
    account_id = _account(world, 6, phone="+27821234567")
    [notification_id] = _outbox(world, account_id, "sms")
    clock = Clock(NOW)
    dispatcher = _dispatcher(world, HttpSmsAdapter(http_receiver.url, GATEWAY_TOKEN), clock=clock)

    assert dispatcher.run_once().retrying == [notification_id]
    assert _row(world, notification_id).next_attempt_at == NOW + timedelta(seconds=30)
    assert dispatcher.run_once().retrying == []  # not due yet: nothing sent
    assert len(http_receiver.received) == 1

    clock.now = NOW + timedelta(seconds=30)
    assert dispatcher.run_once().retrying == [notification_id]
    # The backoff doubles.
    assert _row(world, notification_id).next_attempt_at == clock.now + timedelta(seconds=60)
    clock.now += timedelta(seconds=60)
    assert dispatcher.run_once().delivered == [notification_id]

    keys = {request.headers["Idempotency-Key"] for request in http_receiver.received}
    assert keys == {f"gridvend-notification-{notification_id}"}
    row = _row(world, notification_id)
    assert (row.status, row.attempts, row.delivered_at) == ("delivered", 3, clock.now)
    assert "503" in (row.last_error or "")  # the last failure stays on record


def test_a_receiver_that_always_fails_leaves_the_row_failed_after_the_last_attempt(
    world: VendingWorld, http_receiver: HttpReceiver
) -> None:
    http_receiver.script = [500]
    account_id = _account(world, 7)
    [notification_id] = _outbox(world, account_id, "webhook")
    clock = Clock(NOW)
    dispatcher = _dispatcher(
        world, WebhookAdapter(http_receiver.url, SECRET, clock=clock), clock=clock, max_attempts=3
    )
    for _ in range(5):
        dispatcher.run_once()
        clock.now += timedelta(hours=1)

    assert len(http_receiver.received) == 3
    row = _row(world, notification_id)
    assert (row.status, row.attempts, row.delivered_at) == ("failed", 3, None)
    assert row.last_error is not None and "answered 500" in row.last_error


def test_a_4xx_refusal_is_permanent(world: VendingWorld, http_receiver: HttpReceiver) -> None:
    http_receiver.script = [400]
    account_id = _account(world, 8, phone="+27821234567")
    [notification_id] = _outbox(world, account_id, "sms")
    _dispatcher(
        world, HttpSmsAdapter(http_receiver.url, GATEWAY_TOKEN), clock=Clock(NOW)
    ).run_once()
    assert _row(world, notification_id).status == "failed"


def test_the_webhook_receiver_verifies_the_hmac_of_timestamp_and_body(
    world: VendingWorld, http_receiver: HttpReceiver
) -> None:
    account_id = _account(world, 9)
    [notification_id] = _outbox(world, account_id, "webhook")
    clock = Clock(NOW)
    _dispatcher(
        world, WebhookAdapter(http_receiver.url, SECRET, clock=clock), clock=clock
    ).run_once()

    [request] = http_receiver.received
    timestamp = request.headers["X-Gridvend-Timestamp"]
    assert int(timestamp) == int(NOW.timestamp())
    expected = hmac.new(SECRET, f"{timestamp}.".encode() + request.body, hashlib.sha256)
    assert hmac.compare_digest(
        request.headers["X-Gridvend-Signature"], f"sha256={expected.hexdigest()}"
    )
    tampered = hmac.new(SECRET, f"{timestamp}.".encode() + request.body + b" ", hashlib.sha256)
    assert request.headers["X-Gridvend-Signature"] != f"sha256={tampered.hexdigest()}"
    payload = json.loads(request.body)
    assert payload["id"] == request.headers["Idempotency-Key"]
    assert payload["notification_id"] == notification_id
    assert payload["message"] == MESSAGE
    assert "phone" not in payload and "email" not in payload


class HandOver:
    """A recording adapter that, while its dispatcher holds the rows, lets another
    dispatcher run a round (optionally after the lease ran out)."""

    channel = "record"

    def __init__(self, clock: Clock, *, jump: timedelta = timedelta(0)) -> None:
        self.delivered: list[Delivery] = []
        self.other: NotificationDispatcher | None = None
        self._clock, self._jump = clock, jump

    def deliver(self, delivery: Delivery) -> None:
        self.delivered.append(delivery)
        if self.other is not None:
            other, self.other = self.other, None
            self._clock.now += self._jump
            other.run_once()

    def close(self) -> None:
        pass


def test_two_dispatchers_never_hold_the_same_row(world: VendingWorld) -> None:
    account_id = _account(world, 10)
    ids = _outbox(world, account_id, "record", count=4)
    clock = Clock(NOW)
    first_adapter, second_adapter = HandOver(clock), RecordingAdapter()
    first = _dispatcher(world, first_adapter, clock=clock, worker_id="a")
    first_adapter.other = _dispatcher(world, second_adapter, clock=clock, worker_id="b")
    first.run_once()  # b runs while a holds all four rows

    assert second_adapter.delivered == []
    assert sorted(d.notification_id for d in first_adapter.delivered) == ids
    assert {_row(world, i).status for i in ids} == {"delivered"}


def test_a_lease_that_runs_out_is_taken_over_and_sent_again_with_the_same_key(
    world: VendingWorld,
) -> None:
    account_id = _account(world, 11)
    [notification_id] = _outbox(world, account_id, "record")
    clock = Clock(NOW)
    slow = HandOver(clock, jump=timedelta(minutes=5))  # longer than the 2-minute lease
    takeover = RecordingAdapter()
    first = _dispatcher(world, slow, clock=clock, worker_id="slow")
    slow.other = _dispatcher(world, takeover, clock=clock, worker_id="takeover")
    report = first.run_once()

    assert report.lease_lost == [notification_id]
    assert [d.idempotency_key for d in slow.delivered + takeover.delivered] == [
        f"gridvend-notification-{notification_id}"
    ] * 2
    row = _row(world, notification_id)
    assert (row.status, row.attempts, row.claimed_by) == ("delivered", 2, None)


def test_rows_of_a_channel_without_an_adapter_stay_pending(world: VendingWorld) -> None:
    account_id = _account(world, 12, phone="+27821234567")
    [sms_id] = _outbox(world, account_id, "sms")
    [recorded_id] = _outbox(world, account_id, "record")
    _dispatcher(world, RecordingAdapter(), clock=Clock(NOW)).run_once()
    assert (_row(world, sms_id).status, _row(world, sms_id).attempts) == ("pending", 0)
    assert _row(world, recorded_id).status == "delivered"
