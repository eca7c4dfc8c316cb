"""E-mail over SMTP (stdlib smtplib): one connection per message, STARTTLS optional."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime

from vending.notifications.delivery import Delivery, DeliveryError, subject_for


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int = 25
    sender: str = "gridvend@localhost"
    starttls: bool = False
    username: str | None = None
    # repr=False: settings objects get logged and printed; the password must not be.
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0


class SmtpAdapter:
    """Sends the message to the customer's e-mail address; the idempotency key is the
    Message-ID, which mail systems already use to drop duplicates."""

    channel = "email"

    def __init__(
        self, settings: SmtpSettings, *, tls_context: ssl.SSLContext | None = None
    ) -> None:
        self._settings = settings
        self._tls_context = tls_context or ssl.create_default_context()

    def deliver(self, delivery: Delivery) -> None:
        """DeliveryError: no address or a 5xx refusal (permanent), else temporary."""
        if not delivery.email:
            raise DeliveryError("the customer has no e-mail address", permanent=True)
        message = self._message(delivery)
        s = self._settings
        try:
            with smtplib.SMTP(s.host, s.port, timeout=s.timeout_s) as client:
                if s.starttls:
                    client.starttls(context=self._tls_context)
                if s.username:
                    client.login(s.username, s.password or "")
                client.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(
                f"recipient refused: {codes}", permanent=all(c >= 500 for c in codes)
            ) from exc
        except smtplib.SMTPAuthenticationError as exc:
            # The server's answer only; the credentials never go into the error.
            raise DeliveryError(f"SMTP login refused ({exc.smtp_code})") from exc
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(
                f"SMTP {exc.smtp_code}: {_text(exc.smtp_error)}", permanent=exc.smtp_code >= 500
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP server unreachable: {type(exc).__name__}: {exc}") from exc

    def _message(self, delivery: Delivery) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self._settings.sender
        message["To"] = delivery.email
        message["Subject"] = f"{subject_for(delivery.kind)} - account {delivery.account_number}"
        message["Date"] = format_datetime(delivery.created_at)
        domain = self._settings.sender.rpartition("@")[2] or "gridvend"
        message["Message-ID"] = f"<{delivery.idempotency_key}@{domain}>"
        message["X-Gridvend-Notification"] = delivery.idempotency_key
        message.set_content(delivery.message)
        return message

    def close(self) -> None:
        pass


def _text(value: bytes | str) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    return text[:200]
