"""Runtime settings, read from ``GRIDVEND_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

import secrets
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

NOTIFICATION_CHANNELS = ("record", "email", "sms", "webhook")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDVEND_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=Path("var"), description="Where the embedded database and broker files live."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default: SQLite file in data_dir. "
        "PostgreSQL: postgresql+psycopg://user@host:5432/dbname",
    )
    mqtt_url: str | None = Field(
        default=None,
        description="mqtt://host:port of an external broker; default: spawn mosquitto, "
        "else run an embedded broker.",
    )
    mqtt_topic_prefix: str = Field(default="", description="Prefix of every topic, e.g. 'site1/'.")
    headend_instance: str = Field(default="headend-1", description="This worker's name.")
    headend_share_group: str = Field(default="headend", description="MQTT shared group.")
    utility_name: str = Field(default="gridvend utility", description="Printed on receipts.")
    utility_timezone: str = Field(
        default="UTC",
        description="The utility's zone for receipts and reports, e.g. Africa/Nairobi.",
    )
    disconnect_grace_minutes: Annotated[int, Field(ge=0)] = Field(
        default=60, description="Central balance: wait this long after the balance runs out."
    )
    conversion_grace_days: Annotated[int, Field(ge=0)] = Field(
        default=30, description="Central balance: no disconnection this long after conversion."
    )
    notification_channels: str = Field(
        default="record",
        description="Comma-separated channels every customer alert is sent on: record (the "
        "log), email, sms, webhook.",
    )
    notification_max_attempts: Annotated[int, Field(ge=1)] = 8
    notification_backoff_seconds: Annotated[float, Field(ge=0)] = 30.0
    smtp_host: str | None = None
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 25
    smtp_from: str = "gridvend@localhost"
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    sms_gateway_url: str | None = None
    sms_gateway_token: SecretStr | None = None
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    api_host: str = "127.0.0.1"
    api_port: Annotated[int, Field(ge=0, le=65535)] = 8000
    secret_key: SecretStr = Field(
        default_factory=lambda: SecretStr(secrets.token_urlsafe(32)),
        description="Signs sessions; set it in production or sessions end at restart.",
    )

    key_encryption_key: SecretStr | None = Field(
        default=None,
        description="Base64 of the 32-byte key that encrypts vending keys at rest.",
    )
    key_encryption_key_file: Path | None = Field(
        default=None,
        description="File holding that key instead; default: data_dir/kek.b64, created "
        "with mode 0600 when absent.",
    )

    @field_validator("notification_channels")
    @classmethod
    def _known_channels(cls, value: str) -> str:
        channels = [c.strip() for c in value.split(",") if c.strip()]
        unknown = sorted(set(channels) - set(NOTIFICATION_CHANNELS))
        if not channels or unknown:
            raise ValueError(
                f"channels must be some of {', '.join(NOTIFICATION_CHANNELS)}; got {value!r}"
            )
        return ",".join(dict.fromkeys(channels))

    @model_validator(mode="after")
    def _channels_configured(self) -> Settings:
        missing = {
            "email": None if self.smtp_host else "GRIDVEND_SMTP_HOST",
            "sms": None
            if self.sms_gateway_url and self.sms_gateway_token
            else "GRIDVEND_SMS_GATEWAY_URL and GRIDVEND_SMS_GATEWAY_TOKEN",
            "webhook": None
            if self.webhook_url and self.webhook_secret
            else "GRIDVEND_WEBHOOK_URL and GRIDVEND_WEBHOOK_SECRET",
        }
        for channel in self.notification_channel_list:
            if missing.get(channel):
                raise ValueError(f"notification channel {channel!r} needs {missing[channel]}")
        return self

    @property
    def notification_channel_list(self) -> tuple[str, ...]:
        return tuple(self.notification_channels.split(","))

    @cached_property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'gridvend.db').resolve()}"
