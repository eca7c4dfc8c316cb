"""Runtime settings, read from ``GRIDVEND_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

import secrets
from datetime import date, time
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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

    @field_validator("public_holidays", mode="before")
    @classmethod
    def _split_dates(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
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
