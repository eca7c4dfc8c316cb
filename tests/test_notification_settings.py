"""Notification settings: channels are checked at start, adapters built from them, and
no credential shows in a settings object's printout."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gridvend.runtime import notification_adapters
from gridvend.settings import Settings
from vending.notifications import SmtpSettings


def test_the_default_is_the_recording_log_channel() -> None:
    settings = Settings()
    assert settings.notification_channel_list == ("record",)
    assert [a.channel for a in notification_adapters(settings)] == ["record"]


def test_every_configured_channel_gets_its_adapter() -> None:
    settings = Settings(
        notification_channels="email, sms,webhook,record,sms",
        smtp_host="mail.utility.test",
        smtp_password="smtp-password-value",
        sms_gateway_url="https://sms.utility.test/send",
        sms_gateway_token="gateway-token-value",
        webhook_url="https://crm.utility.test/hooks/gridvend",
        webhook_secret="webhook-secret-value",
    )
    adapters = notification_adapters(settings)
    try:
        assert [a.channel for a in adapters] == ["email", "sms", "webhook", "record"]
        printed = repr(settings) + repr(SmtpSettings(host="mail", password="smtp-password-value"))
        for secret in ("smtp-password-value", "gateway-token-value", "webhook-secret-value"):
            assert secret not in printed
    finally:
        for adapter in adapters:
            adapter.close()


@pytest.mark.parametrize(
    ("channels", "missing"),
    [
        ("email", "GRIDVEND_SMTP_HOST"),
        ("record,sms", "GRIDVEND_SMS_GATEWAY_URL"),
        ("webhook", "GRIDVEND_WEBHOOK_SECRET"),
    ],
)
def test_a_channel_without_its_settings_is_refused_at_start(channels: str, missing: str) -> None:
    with pytest.raises(ValidationError, match=missing):
        Settings(notification_channels=channels)


def test_an_unknown_channel_is_refused() -> None:
    with pytest.raises(ValidationError, match="channels must be some of"):
        Settings(notification_channels="record,pigeon")
