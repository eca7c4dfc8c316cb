"""SMS through an HTTP gateway and signed webhooks: JSON POSTs with httpx.

Both send ``Idempotency-Key`` (the same on every attempt of an outbox row). A 2xx
answer is delivery; 408, 425, 429, 5xx and transport errors are retried; any other
answer is a permanent refusal.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from vending.notifications.delivery import Delivery, DeliveryError

RETRYABLE_STATUS = frozenset({408, 425, 429})
SIGNATURE_HEADER = "X-Gridvend-Signature"
TIMESTAMP_HEADER = "X-Gridvend-Timestamp"


class HttpSmsAdapter:
    """POSTs ``{"to", "message", "reference"}`` to the gateway with a bearer token."""

    channel = "sms"

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._url = url
        self._client = httpx.Client(
            timeout=timeout_s,
            transport=transport,
            headers={"Authorization": f"Bearer {token}"},
        )

    def deliver(self, delivery: Delivery) -> None:
        """DeliveryError: no phone number or a refusal (permanent), else temporary."""
        if not delivery.phone:
            raise DeliveryError("the customer has no phone number", permanent=True)
        body = {
            "to": delivery.phone,
            "message": delivery.message,
            "reference": delivery.idempotency_key,
        }
        _post(self._client, self._url, json.dumps(body).encode(), delivery, {})

    def close(self) -> None:
        self._client.close()


class WebhookAdapter:
    """POSTs the notification as JSON, signed so the receiver knows it came from us.

    ``X-Gridvend-Timestamp`` is the Unix time of the attempt; ``X-Gridvend-Signature``
    is ``sha256=<hex HMAC-SHA256 of "<timestamp>." + body under the shared secret>``
    (see :func:`webhook_signature`). The timestamp lets a receiver refuse old replays.
    """

    channel = "webhook"

    def __init__(
        self,
        url: str,
        secret: bytes,
        *,
        timeout_s: float = 10.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not secret:
            raise ValueError("a webhook needs a signing secret")
        self._url = url
        self._secret = secret
        self._clock = clock
        self._client = httpx.Client(timeout=timeout_s, transport=transport)

    def deliver(self, delivery: Delivery) -> None:
        body = json.dumps(
            {
                "id": delivery.idempotency_key,
                "notification_id": delivery.notification_id,
                "kind": delivery.kind,
                "account_number": delivery.account_number,
                "message": delivery.message,
                "created_at": delivery.created_at.isoformat(),
            },
            separators=(",", ":"),
        ).encode()
        timestamp = str(int(self._clock().timestamp()))
        headers = {
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: webhook_signature(self._secret, timestamp, body),
        }
        _post(self._client, self._url, body, delivery, headers)

    def close(self) -> None:
        self._client.close()


def webhook_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def _post(
    client: httpx.Client,
    url: str,
    body: bytes,
    delivery: Delivery,
    headers: dict[str, str],
) -> None:
    try:
        response = client.post(
            url,
            content=body,
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": delivery.idempotency_key,
                **headers,
            },
        )
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{delivery.channel} receiver unreachable: {exc!r}") from exc
    if response.is_success:
        return
    status = response.status_code
    raise DeliveryError(
        f"{delivery.channel} receiver answered {status}: {response.text[:200]}",
        permanent=status < 500 and status not in RETRYABLE_STATUS,
    )
