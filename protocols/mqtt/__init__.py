"""MQTT topic scheme and payload schemas (sans-IO)."""

from protocols.mqtt.payloads import (
    Command,
    CommandName,
    CommandReply,
    EventKind,
    MeterEvent,
    PayloadError,
    ReplyStatus,
    Status,
    TelemetryReport,
    parse_command,
    parse_event,
    parse_reply,
    parse_status,
    parse_telemetry,
)
from protocols.mqtt.topics import MeterChannel, TopicError, TopicScheme, check_meter_id

__all__ = [
    "Command",
    "CommandName",
    "CommandReply",
    "EventKind",
    "MeterChannel",
    "MeterEvent",
    "PayloadError",
    "ReplyStatus",
    "Status",
    "TelemetryReport",
    "TopicError",
    "TopicScheme",
    "check_meter_id",
    "parse_command",
    "parse_event",
    "parse_reply",
    "parse_status",
    "parse_telemetry",
]
