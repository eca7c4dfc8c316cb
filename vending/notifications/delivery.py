"""What a channel adapter is given and what it may answer (the adapters' one Protocol)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox row on its way to one channel.

    ``idempotency_key`` is the same on every attempt of the row, so a receiver can drop
    the duplicates that at-least-once delivery produces. ``email`` and ``phone`` come
    from the customer record at the time of sending ("" when the customer has none).
    """

    notification_id: int
    idempotency_key: str
    channel: str
    kind: str
    message: str
    account_number: str
    created_at: datetime
    email: str = ""
    phone: str = ""


class DeliveryError(Exception):
    """A failed attempt. ``permanent``: retrying cannot help (no address, refused by the
    receiver as invalid), so the row fails now instead of after its last attempt."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class NotificationAdapter(Protocol):
    """Delivers to one channel; returns when the receiver accepted the message, raises
    DeliveryError otherwise (any other exception counts as a temporary failure)."""

    @property
    def channel(self) -> str: ...

    def deliver(self, delivery: Delivery) -> None: ...

    def close(self) -> None: ...


def idempotency_key(notification_id: int) -> str:
    return f"gridvend-notification-{notification_id}"


def subject_for(kind: str) -> str:
    """A short title for the kinds the balance engine writes (e-mail subject)."""
    if kind.startswith("low_balance"):
        return "Low balance"
    return {"disconnect": "Supply disconnection", "reconnect": "Supply reconnected"}.get(
        kind, "Account notice"
    )


class RecordingAdapter:
    """Keeps what it is given and logs it: the tests' and the demo's channel."""

    def __init__(self, channel: str = "record") -> None:
        self._channel = channel
        self.delivered: list[Delivery] = []

    @property
    def channel(self) -> str:
        return self._channel

    def deliver(self, delivery: Delivery) -> None:
        self.delivered.append(delivery)
        log.info(
            "notification %s to account %s (%s): %s",
            delivery.notification_id,
            delivery.account_number,
            delivery.kind,
            delivery.message,
        )

    def close(self) -> None:
        pass
