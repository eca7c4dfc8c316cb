"""Runtime settings, read from ``GRIDVEND_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

import secrets
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    commissioning_delivery_key: Annotated[
        str | None, Field(pattern=r"^[0-9]{6}/[0-9]{2}/[1-9]$")
    ] = Field(
        default=None,
        description="SGC/TI/KRN of the key meters are delivered with, e.g. 600727/01/1 "
        "(its vending key in the key store); commissioning loads keys from it.",
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

    @cached_property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'gridvend.db').resolve()}"
