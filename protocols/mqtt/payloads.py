"""JSON payloads on the MQTT topics, as typed values with strict validation.

Numbers that are measurements travel as JSON strings or numbers and are always parsed
as ``Decimal`` (never ``float``), so a kWh register arrives exactly as the meter sent it.
Every parse function raises :class:`PayloadError` with a reason a person can act on.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from protocols.quantities import Quantity

SCHEMA_VERSION: Literal[1] = 1
MAX_PAYLOAD_BYTES = 64 * 1024


class PayloadError(ValueError):
    """A payload is not valid JSON or does not match its schema."""


_Finite = Annotated[Decimal, Field(allow_inf_nan=False)]


@functools.cache
def _fixed_zone(offset: timedelta) -> timezone:
    return UTC if not offset else timezone(offset)


def _stdlib_zone(value: datetime) -> datetime:
    """The same instant and offset in the standard library's fixed-offset zone.

    Pydantic's own zone type makes every later ``astimezone``, comparison and hash of the
    time call back into it (tens of times per reading on the ingestion path); the
    standard library's zones take C's fast paths.
    """
    offset = value.utcoffset()
    assert offset is not None  # AwareDatetime checked it
    return value.replace(tzinfo=_fixed_zone(offset))


# A meter's timestamp: timezone-aware, as sent (the offset kept).
_Instant = Annotated[AwareDatetime, AfterValidator(_stdlib_zone)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class TelemetryReport(_Payload):
    """One set of register values read at one instant (an interval end for energy)."""

    seq: Annotated[int, Field(ge=0)]
    ts: _Instant
    values: Annotated[dict[Quantity, _Finite], Field(min_length=1)]


class EventKind(StrEnum):
    POWER_UP = "power_up"
    POWER_DOWN = "power_down"
    COVER_OPEN = "cover_open"
    MAGNETIC_TAMPER = "magnetic_tamper"
    RELAY_CHANGED = "relay_changed"
    LOW_CREDIT = "low_credit"
    CREDIT_EXHAUSTED = "credit_exhausted"
    TOKEN_ACCEPTED = "token_accepted"
    TOKEN_REJECTED = "token_rejected"
    POWER_LIMIT_EXCEEDED = "power_limit_exceeded"


class MeterEvent(_Payload):
    seq: Annotated[int, Field(ge=0)]
    ts: _Instant
    kind: EventKind
    detail: dict[str, str | int | bool] = Field(default_factory=dict)


class CommandName(StrEnum):
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    SET_POWER_LIMIT = "set_power_limit"
    PUSH_TOKEN = "push_token"
    READ_NOW = "read_now"
    SET_CLOCK = "set_clock"


class Command(_Payload):
    """A command to one meter. ``id`` is the correlation id echoed in the reply.

    ``reply_to`` names the reply topic for MQTT 3.1.1 meters; MQTT 5 meters may use the
    ResponseTopic property instead. A meter ignores a command whose ``expires_at`` passed.
    """

    id: Annotated[str, Field(min_length=1, max_length=64)]
    name: CommandName
    params: dict[str, str | int | bool] = Field(default_factory=dict)
    reply_to: str | None = None
    expires_at: AwareDatetime | None = None


class ReplyStatus(StrEnum):
    OK = "ok"
    ERROR = "error"


class CommandReply(_Payload):
    id: Annotated[str, Field(min_length=1, max_length=64)]
    meter_id: str
    status: ReplyStatus
    reason: str | None = None
    result: dict[str, str | int | bool] = Field(default_factory=dict)
    ts: datetime | None = None


class Status(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


_P = TypeVar("_P", bound=_Payload)


def _parse(model: type[_P], payload: bytes) -> _P:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        raw: Any = json.loads(payload, parse_float=Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise PayloadError("payload must be a JSON object")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
        )
        raise PayloadError(f"invalid {model.__name__}: {problems}") from None


def parse_telemetry(payload: bytes) -> TelemetryReport:
    return _parse(TelemetryReport, payload)


def parse_event(payload: bytes) -> MeterEvent:
    return _parse(MeterEvent, payload)


def parse_command(payload: bytes) -> Command:
    return _parse(Command, payload)


def parse_reply(payload: bytes) -> CommandReply:
    return _parse(CommandReply, payload)


def parse_status(payload: bytes) -> Status:
    try:
        return Status(payload.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise PayloadError(f"status must be 'online' or 'offline', got {payload[:40]!r}") from None
