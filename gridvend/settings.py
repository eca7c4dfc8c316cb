"""Runtime settings, read from ``GRIDVEND_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

import secrets
from datetime import date, time
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from vending.grading import Grade, GradeThreshold, GradingPolicy

NOTIFICATION_CHANNELS = ("record", "email", "sms", "webhook")


class GradeThresholdSetting(BaseModel):
    """One star grade's thresholds as GRIDVEND_GRADING_THRESHOLDS gives them."""

    model_config = ConfigDict(extra="forbid")

    min_annual_kwh: Annotated[Decimal, Field(ge=0)]
    min_supply_voltage_v: Annotated[int, Field(ge=0)]
    max_late_payments_12m: Annotated[int, Field(ge=0)]
    max_disconnections_12m: Annotated[int, Field(ge=0)] = 0


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
    commissioning_delivery_key: Annotated[
        str | None, Field(pattern=r"^[0-9]{6}/[0-9]{2}/[1-9]$")
    ] = Field(
        default=None,
        description="SGC/TI/KRN of the key meters are delivered with, e.g. 600727/01/1 "
        "(its vending key in the key store); commissioning loads keys from it.",
    )
    friendly_hours_from: time = Field(
        default=time(18, 0),
        description="Central balance: local time from which no disconnection happens (HH:MM).",
    )
    friendly_hours_until: time = Field(
        default=time(8, 0),
        description="...until this local time (may wrap midnight; equal times: no daily "
        "friendly period).",
    )
    no_disconnect_on_weekends: bool = Field(
        default=True, description="Central balance: no disconnection on Saturday and Sunday."
    )
    public_holidays: Annotated[tuple[date, ...], NoDecode] = Field(
        default=(),
        description="Central balance: local dates without disconnection, comma-separated "
        "ISO dates (2026-12-25,2026-12-26).",
    )
    public_holidays_file: Path | None = Field(
        default=None,
        description="A file of more public holidays: one ISO date per line, # comments.",
    )
    reconnect_minimum_minor: Annotated[int, Field(ge=0)] = Field(
        default=0,
        description="Central balance: reconnect once the balance is above this (minor units).",
    )
    low_balance_thresholds_percent: Annotated[tuple[Decimal, ...], NoDecode] = Field(
        default=(Decimal(30), Decimal(10), Decimal(0)),
        description="Central balance: low-balance alerts at these percentages of the last "
        "top-up, comma-separated (30,10,0).",
    )
    low_balance_days_left: Annotated[tuple[int, ...], NoDecode] = Field(
        default=(),
        description="Central balance: also alert when the balance lasts this many days or "
        "fewer at the recent spending rate, comma-separated (7,3); empty: none.",
    )
    emergency_credit_minor: Annotated[int, Field(ge=0)] = Field(
        default=0,
        description="Central balance: emergency credit lent on request (minor units); 0: none.",
    )
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

    grading_thresholds: dict[int, GradeThresholdSetting] | None = Field(
        default=None,
        description="Customer grading thresholds as JSON keyed by stars (1, 2, 3), e.g. "
        '{"1": {"min_annual_kwh": 50000, "min_supply_voltage_v": 230, '
        '"max_late_payments_12m": 2, "max_disconnections_12m": 1}, ...}; '
        "default: vending.grading's.",
    )

    @field_validator("grading_thresholds")
    @classmethod
    def _a_valid_grading_policy(
        cls, value: dict[int, GradeThresholdSetting] | None
    ) -> dict[int, GradeThresholdSetting] | None:
        # Refuse a bad policy when the settings are read, not at the first grading.
        if value is not None:
            _policy(value)
        return value

    def grading_policy(self) -> GradingPolicy:
        """The customer grading policy these settings give (GradingPolicy's default if unset)."""
        if self.grading_thresholds is None:
            return GradingPolicy()
        return _policy(self.grading_thresholds)

    @field_validator("public_holidays", mode="before")
    @classmethod
    def _split_dates(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("low_balance_days_left", mode="before")
    @classmethod
    def _split_days(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("low_balance_days_left")
    @classmethod
    def _days(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(days < 1 for days in value) or len(set(value)) != len(value):
            raise ValueError(f"days left are distinct whole days of at least 1, got {value}")
        return value

    @field_validator("low_balance_thresholds_percent", mode="before")
    @classmethod
    def _split_percentages(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("low_balance_thresholds_percent")
    @classmethod
    def _percentages(cls, value: tuple[Decimal, ...]) -> tuple[Decimal, ...]:
        for percent in value:
            if not (percent.is_finite() and 0 <= percent <= 100):
                raise ValueError(f"a threshold is a percentage 0..100, got {percent}")
        if len(set(value)) != len(value):
            raise ValueError("a threshold is given twice")
        return value

    @cached_property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'gridvend.db').resolve()}"


def _policy(thresholds: dict[int, GradeThresholdSetting]) -> GradingPolicy:
    try:
        return GradingPolicy(
            {
                Grade(stars): GradeThreshold(
                    min_annual_kwh=t.min_annual_kwh,
                    min_supply_voltage_v=t.min_supply_voltage_v,
                    max_late_payments_12m=t.max_late_payments_12m,
                    max_disconnections_12m=t.max_disconnections_12m,
                )
                for stars, t in thresholds.items()
            }
        )
    except ValueError as exc:
        # GradingError is one; so is a key that is no grade at all (Grade(7)).
        raise ValueError(f"grading thresholds: {exc}") from None
