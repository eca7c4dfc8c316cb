"""The MQTT topic scheme shared by meters and the head-end.

    {prefix}ami/v1/meters/{meter_id}/telemetry   QoS 1, not retained   interval readings
    {prefix}ami/v1/meters/{meter_id}/events      QoS 1, not retained   tamper, relay, credit...
    {prefix}ami/v1/meters/{meter_id}/status      QoS 1, retained       "online" / "offline" (LWT)
    {prefix}ami/v1/meters/{meter_id}/cmd         QoS 1, never retained commands to the meter
    {prefix}ami/v1/headend/{instance}/replies    QoS 1                 command replies

The optional prefix lets several systems (or tests) share one broker without seeing
each other's traffic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

# What a meter id may look like on the wire: it is one topic level, so no '/', '+', '#'.
METER_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class MeterChannel(StrEnum):
    TELEMETRY = "telemetry"
    EVENTS = "events"
    STATUS = "status"
    COMMAND = "cmd"


class TopicError(ValueError):
    """A topic does not belong to the scheme or carries an invalid meter id."""


@dataclass(frozen=True, slots=True)
class TopicScheme:
    prefix: str = ""

    def __post_init__(self) -> None:
        if self.prefix and not self.prefix.endswith("/"):
            raise TopicError(f"topic prefix must end with '/': {self.prefix!r}")
        if any(c in self.prefix for c in "+#"):
            raise TopicError(f"topic prefix must not contain wildcards: {self.prefix!r}")

    @property
    def _meters_root(self) -> str:
        return f"{self.prefix}ami/v1/meters"

    def meter_topic(self, meter_id: str, channel: MeterChannel) -> str:
        check_meter_id(meter_id)
        return f"{self._meters_root}/{meter_id}/{channel.value}"

    def all_meters(self, channel: MeterChannel) -> str:
        """Subscription filter for one channel of every meter."""
        return f"{self._meters_root}/+/{channel.value}"

    def shared(self, group: str, topic_filter: str) -> str:
        """MQTT 5 shared subscription: the broker hands each message to one group member."""
        return f"$share/{group}/{topic_filter}"

    def replies(self, instance: str) -> str:
        return f"{self.prefix}ami/v1/headend/{instance}/replies"

    def parse_meter_topic(self, topic: str) -> tuple[str, MeterChannel]:
        """Split a meter topic into (meter_id, channel); raise TopicError if it is not one."""
        root = self._meters_root + "/"
        if not topic.startswith(root):
            raise TopicError(f"not a meter topic: {topic!r}")
        parts = topic[len(root) :].split("/")
        if len(parts) != 2:
            raise TopicError(f"not a meter topic: {topic!r}")
        meter_id, channel_name = parts
        check_meter_id(meter_id)
        try:
            channel = MeterChannel(channel_name)
        except ValueError:
            raise TopicError(f"unknown meter channel {channel_name!r} in {topic!r}") from None
        return meter_id, channel


def check_meter_id(meter_id: str) -> str:
    if not METER_ID_PATTERN.match(meter_id):
        raise TopicError(
            f"invalid meter id {meter_id!r}: 1-64 characters of letters, digits, '_.:-'"
        )
    return meter_id
