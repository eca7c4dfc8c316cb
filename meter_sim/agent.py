"""What one MQTT meter says and when, independent of the MQTT client library (sans-IO).

An :class:`MqttMeterAgent` turns the meter model's state into the messages to publish
(:class:`Outgoing`) and turns incoming command payloads into replies. The transport
(``mqtt_client``) only moves these messages; message faults (drop, duplicate,
out-of-order readings) are applied here so they are deterministic for a seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from meter_sim.commands import error_reply, execute_command
from meter_sim.faults import FaultInjector
from meter_sim.load import epoch_seconds, mix64
from meter_sim.model import MeterModel
from protocols.mqtt import (
    CommandName,
    MeterChannel,
    PayloadError,
    Status,
    TelemetryReport,
    TopicScheme,
    parse_command,
)

_REPLIES_REMEMBERED = 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish. ``correlation_data`` is the MQTT 5 property to set, if any."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    correlation_data: bytes | None = None


@dataclass(slots=True)
class AgentStats:
    readings: int = 0
    events: int = 0
    commands: int = 0
    bad_commands: int = 0
    expired_commands: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0


class MqttMeterAgent:
    """The MQTT face of one :class:`MeterModel`."""

    def __init__(
        self,
        model: MeterModel,
        scheme: TopicScheme,
        *,
        interval_s: int = 900,
        upload_spread_s: int = 0,
    ) -> None:
        """``interval_s``: simulated seconds between interval readings (aligned to the epoch).

        ``upload_spread_s``: the meter uploads each interval reading a seeded delay of
        0..spread simulated seconds after the interval end (the reading is still taken and
        stamped at the interval end), as AMI meters do to spread the load on the head-end.
        """
        if not 1 <= interval_s <= 86_400:
            raise ValueError(f"interval_s must be 1..86400: {interval_s}")
        if not 0 <= upload_spread_s < interval_s:
            raise ValueError(f"upload_spread_s must be 0..interval_s-1: {upload_spread_s}")
        self.model = model
        self.meter_id = model.config.serial
        self.faults = FaultInjector(model.config.faults, mix64(model.config.seed, 10))
        self.stats = AgentStats()
        self.telemetry_topic = scheme.meter_topic(self.meter_id, MeterChannel.TELEMETRY)
        self.events_topic = scheme.meter_topic(self.meter_id, MeterChannel.EVENTS)
        self.status_topic = scheme.meter_topic(self.meter_id, MeterChannel.STATUS)
        self.command_topic = scheme.meter_topic(self.meter_id, MeterChannel.COMMAND)
        self._seq = 0
        self._interval = timedelta(seconds=interval_s)
        spread = mix64(model.config.seed, 13) % upload_spread_s if upload_spread_s else 0
        self.upload_delay = timedelta(seconds=spread)
        start_s = epoch_seconds(model.now)
        self._next_reading = _EPOCH + timedelta(seconds=start_s - start_s % interval_s)
        self._next_reading += self._interval
        self._held_reading: Outgoing | None = None
        # QoS 1 may deliver a command twice: answer a repeated id with the same reply.
        self._replies: dict[str, Outgoing] = {}

    # --- status ----------------------------------------------------------------------

    def online(self) -> Outgoing:
        return Outgoing(self.status_topic, Status.ONLINE.value.encode(), retain=True)

    def offline(self) -> Outgoing:
        """The retained status for a clean shutdown, and the payload of the last will."""
        return Outgoing(self.status_topic, Status.OFFLINE.value.encode(), retain=True)

    # --- readings and events ---------------------------------------------------------

    def reading(self, at: datetime) -> list[Outgoing]:
        """Advance the model to ``at`` (an interval end) and return the report to publish.

        Events that happened meanwhile come first. Faults may drop the report, send it
        twice, or hold it back until the next reading.
        """
        if at > self.model.now:
            self.model.advance(at)
        out = self.take_events()
        report = self._report()
        self.stats.readings += 1
        if self.faults.drop():
            self.stats.dropped += 1
            return out
        if self._held_reading is not None:
            out.append(report)
            out.append(self._held_reading)
            self._held_reading = None
            return out
        if self.faults.reorder():
            self.stats.reordered += 1
            self._held_reading = report
            return out
        out.append(report)
        if self.faults.duplicate():
            self.stats.duplicated += 1
            out.append(report)
        return out

    @property
    def next_reading_at(self) -> datetime:
        """The interval end of the next interval reading."""
        return self._next_reading

    def due_readings(self, now: datetime) -> list[Outgoing]:
        """The interval readings due up to ``now`` (none if ``now`` is before the next end).

        Each is taken exactly at its interval end, even when a command arrives after the
        end and before the fleet's schedule got round to this meter.
        """
        out: list[Outgoing] = []
        while self._next_reading <= now:
            out.extend(self.reading(self._next_reading))
            self._next_reading += self._interval
        return out

    def _report(self) -> Outgoing:
        report = TelemetryReport(
            seq=self._seq, ts=self.model.meter_time, values=self.model.measurements()
        )
        self._seq += 1
        return Outgoing(self.telemetry_topic, report.to_bytes())

    def tick(self, now: datetime) -> list[Outgoing]:
        """Advance the model to ``now`` and return the events (and due readings) to publish.

        A reading whose interval ended before ``now`` is taken first, at its interval end,
        even if its upload delay has not passed yet.
        """
        out = self.due_readings(now)
        if now > self.model.now:
            self.model.advance(now)
        return out + self.take_events()

    def take_events(self) -> list[Outgoing]:
        out = []
        for record in self.model.take_events():
            self.stats.events += 1
            if self.faults.drop():
                self.stats.dropped += 1
                continue
            message = Outgoing(self.events_topic, record.to_payload().to_bytes())
            out.append(message)
            if self.faults.duplicate():
                self.stats.duplicated += 1
                out.append(message)
        return out

    # --- commands --------------------------------------------------------------------

    def on_command(
        self,
        payload: bytes,
        now: datetime,
        wall_now: datetime,
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> list[Outgoing]:
        """Handle one payload from the command topic; return the reply and any other messages.

        ``now`` is the simulated time, ``wall_now`` the real UTC time against which
        ``expires_at`` is checked (the head-end sets it in its own, real time). The reply
        goes to the MQTT 5 ResponseTopic if present, else to the command's ``reply_to``.
        A payload that cannot be parsed is answered with an error reply if a reply
        destination can be found in it, and otherwise only counted.
        """
        self.stats.commands += 1
        try:
            command = parse_command(payload)
        except PayloadError as exc:
            self.stats.bad_commands += 1
            command_id, reply_to = _salvage_id(payload)
            topic = response_topic or reply_to
            if topic is None:
                return []
            reply = error_reply(command_id, self.meter_id, str(exc), self.model.meter_time)
            return self._reply_messages(topic, reply.to_bytes(), correlation_data)
        topic = response_topic or command.reply_to
        if command.expires_at is not None and command.expires_at < wall_now:
            self.stats.expired_commands += 1
            return []
        repeated = self._replies.get(command.id)
        if repeated is not None:
            return [repeated]
        now = max(now, self.model.now)
        out = self.due_readings(now)
        reply = execute_command(self.model, command, now)
        out.extend(self.take_events())
        if command.name is CommandName.READ_NOW:
            out.append(self._report())
        if topic is None:
            return out
        if not _valid_publish_topic(topic):
            return out
        message = Outgoing(topic, reply.to_bytes(), correlation_data=correlation_data)
        self._replies[command.id] = message
        if len(self._replies) > _REPLIES_REMEMBERED:
            del self._replies[next(iter(self._replies))]
        if self.faults.drop():
            self.stats.dropped += 1
            return out
        return [*out, message]

    def _reply_messages(
        self, topic: str, payload: bytes, correlation_data: bytes | None
    ) -> list[Outgoing]:
        if not _valid_publish_topic(topic):
            return []
        if self.faults.drop():
            self.stats.dropped += 1
            return []
        return [Outgoing(topic, payload, correlation_data=correlation_data)]


def _salvage_id(payload: bytes) -> tuple[str, str | None]:
    """The id and reply_to of a command that failed validation, if they are usable."""
    try:
        raw: Any = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return "invalid", None
    if not isinstance(raw, dict):
        return "invalid", None
    command_id = raw.get("id")
    if not isinstance(command_id, str) or not 1 <= len(command_id) <= 64:
        command_id = "invalid"
    reply_to = raw.get("reply_to")
    return command_id, reply_to if isinstance(reply_to, str) else None


def _valid_publish_topic(topic: str) -> bool:
    return 0 < len(topic.encode()) <= 65535 and "+" not in topic and "#" not in topic
