"""Delivering the balance engine's notification outbox: the dispatcher and the channel
adapters (e-mail over SMTP, SMS through an HTTP gateway, signed webhooks, recording)."""

from vending.notifications.delivery import (
    Delivery,
    DeliveryError,
    NotificationAdapter,
    RecordingAdapter,
)
from vending.notifications.dispatcher import (
    DispatchReport,
    DispatchSettings,
    NotificationDispatcher,
)
from vending.notifications.http import HttpSmsAdapter, WebhookAdapter, webhook_signature
from vending.notifications.smtp import SmtpAdapter, SmtpSettings

__all__ = [
    "Delivery",
    "DeliveryError",
    "DispatchReport",
    "DispatchSettings",
    "HttpSmsAdapter",
    "NotificationAdapter",
    "NotificationDispatcher",
    "RecordingAdapter",
    "SmtpAdapter",
    "SmtpSettings",
    "WebhookAdapter",
    "webhook_signature",
]
