"""MQTT 3.1.1 and 5.0 packets, as far as a meter needs them (sans-IO).

A simulated meter connects with a last will, publishes and receives QoS 0/1 messages,
subscribes to one topic, pings, and disconnects. This module encodes those packets and
splits a received byte stream into packets; it never touches a socket. It exists so that
thousands of meters fit in one process: a general client library (aiomqtt/paho) costs a
task and a timer per connection, which dominates at that scale.

Packet layouts follow the OASIS MQTT 3.1.1 and 5.0 specifications (section numbers
below are the 5.0 ones).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field


class MqttProtocolError(ValueError):
    """The peer sent bytes that are not a valid MQTT packet (or one we cannot accept)."""


class PacketType(enum.IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


# MQTT 5 property identifiers (section 2.2.2.2) and how their values are encoded.
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
_BYTE, _TWO, _FOUR, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_PROPERTY_KINDS: dict[int, int] = {
    0x01: _BYTE,  # payload format indicator
    0x02: _FOUR,  # message expiry interval
    0x03: _STRING,  # content type
    0x08: _STRING,  # response topic
    0x09: _BINARY,  # correlation data
    0x0B: _VARINT,  # subscription identifier
    0x11: _FOUR,  # session expiry interval
    0x12: _STRING,  # assigned client identifier
    0x13: _TWO,  # server keep alive
    0x15: _STRING,  # authentication method
    0x16: _BINARY,  # authentication data
    0x17: _BYTE,  # request problem information
    0x18: _FOUR,  # will delay interval
    0x19: _BYTE,  # request response information
    0x1A: _STRING,  # response information
    0x1C: _STRING,  # server reference
    0x1F: _STRING,  # reason string
    0x21: _TWO,  # receive maximum
    0x22: _TWO,  # topic alias maximum
    0x23: _TWO,  # topic alias
    0x24: _BYTE,  # maximum QoS
    0x25: _BYTE,  # retain available
    0x26: _PAIR,  # user property
    0x27: _FOUR,  # maximum packet size
    0x28: _BYTE,  # wildcard subscription available
    0x29: _BYTE,  # subscription identifier available
    0x2A: _BYTE,  # shared subscription available
}

MAX_REMAINING_LENGTH = 268_435_455
PINGREQ = bytes((PacketType.PINGREQ << 4, 0))
DISCONNECT = bytes((PacketType.DISCONNECT << 4, 0))


def encode_varint(value: int) -> bytes:
    """Variable byte integer (section 1.5.5)."""
    if not 0 <= value <= MAX_REMAINING_LENGTH:
        raise ValueError(f"variable byte integer out of range: {value}")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("MQTT string longer than 65535 bytes")
    return struct.pack("!H", len(raw)) + raw


def _binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("MQTT binary data longer than 65535 bytes")
    return struct.pack("!H", len(data)) + data


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_varint(len(body)) + body


def _properties(props: dict[int, bytes | str | int] | None) -> bytes:
    body = bytearray()
    for ident, value in (props or {}).items():
        kind = _PROPERTY_KINDS[ident]
        body += encode_varint(ident)
        if kind == _BYTE:
            body.append(int(value))
        elif kind == _TWO:
            body += struct.pack("!H", value)
        elif kind == _FOUR:
            body += struct.pack("!I", value)
        elif kind == _VARINT:
            body += encode_varint(int(value))
        elif kind == _STRING:
            body += _string(str(value))
        elif kind == _BINARY:
            assert isinstance(value, bytes)
            body += _binary(value)
        else:
            raise ValueError(f"cannot encode property {ident:#x}")
    return encode_varint(len(body)) + bytes(body)


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def encode_connect(
    client_id: str,
    *,
    keepalive_s: int,
    v5: bool,
    will: Will | None = None,
    clean: bool = True,
) -> bytes:
    """CONNECT (section 3.1). Clean start, optional will, no credentials."""
    if not 0 <= keepalive_s <= 0xFFFF:
        raise ValueError(f"keepalive out of range: {keepalive_s}")
    flags = 0x02 if clean else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    body = bytearray(_string("MQTT"))
    body.append(5 if v5 else 4)
    body.append(flags)
    body += struct.pack("!H", keepalive_s)
    if v5:
        body += _properties(None)
    body += _string(client_id)
    if will is not None:
        if v5:
            body += _properties(None)
        body += _string(will.topic)
        body += _binary(will.payload)
    return _packet(PacketType.CONNECT << 4, bytes(body))


def encode_publish(
    topic: str,
    payload: bytes,
    *,
    qos: int,
    retain: bool,
    packet_id: int,
    v5: bool,
    correlation_data: bytes | None = None,
    dup: bool = False,
) -> bytes:
    """PUBLISH (section 3.3), QoS 0 or 1."""
    if qos not in (0, 1):
        raise ValueError(f"only QoS 0 and 1 are supported, got {qos}")
    first = (PacketType.PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = bytearray(_string(topic))
    if qos:
        body += struct.pack("!H", packet_id)
    if v5:
        props: dict[int, bytes | str | int] = {}
        if correlation_data is not None:
            props[CORRELATION_DATA] = correlation_data
        body += _properties(props)
    body += payload
    return _packet(first, bytes(body))


def encode_puback(packet_id: int) -> bytes:
    """PUBACK (section 3.4); success is the same two bytes in 3.1.1 and 5.0."""
    return _packet(PacketType.PUBACK << 4, struct.pack("!H", packet_id))


def encode_subscribe(packet_id: int, topic_filter: str, *, qos: int, v5: bool) -> bytes:
    """SUBSCRIBE (section 3.8) to one filter."""
    body = bytearray(struct.pack("!H", packet_id))
    if v5:
        body += _properties(None)
    body += _string(topic_filter)
    body.append(qos)
    return _packet((PacketType.SUBSCRIBE << 4) | 0x02, bytes(body))


@dataclass(frozen=True, slots=True)
class Packet:
    type: PacketType
    flags: int
    body: bytes


class PacketReader:
    """Splits a byte stream into packets; feed it whatever the socket delivers."""

    __slots__ = ("_buffer", "_max_packet")

    def __init__(self, max_packet: int = 1 << 20) -> None:
        self._buffer = bytearray()
        self._max_packet = max_packet

    def feed(self, data: bytes) -> list[Packet]:
        """Return the complete packets; raise :class:`MqttProtocolError` on garbage."""
        self._buffer += data
        packets: list[Packet] = []
        buffer = self._buffer
        while len(buffer) >= 2:
            length = 0
            shift = 0
            index = 1
            while True:
                if index >= len(buffer):
                    return packets  # length not complete yet
                byte = buffer[index]
                length |= (byte & 0x7F) << shift
                index += 1
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise MqttProtocolError("remaining length longer than 4 bytes")
            if length > self._max_packet:
                raise MqttProtocolError(f"packet of {length} bytes is too large")
            if len(buffer) < index + length:
                return packets
            first = buffer[0]
            try:
                kind = PacketType(first >> 4)
            except ValueError:
                raise MqttProtocolError(f"reserved packet type {first >> 4}") from None
            packets.append(Packet(kind, first & 0x0F, bytes(buffer[index : index + length])))
            del buffer[: index + length]
        return packets


def _read_string(body: bytes, at: int) -> tuple[str, int]:
    if at + 2 > len(body):
        raise MqttProtocolError("string runs past the end of the packet")
    (size,) = struct.unpack_from("!H", body, at)
    end = at + 2 + size
    if end > len(body):
        raise MqttProtocolError("string runs past the end of the packet")
    try:
        return body[at + 2 : end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise MqttProtocolError("string is not UTF-8") from None


def _read_varint(body: bytes, at: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if at >= len(body):
            raise MqttProtocolError("variable byte integer runs past the end")
        byte = body[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 21:
            raise MqttProtocolError("variable byte integer longer than 4 bytes")


def _read_properties(body: bytes, at: int) -> tuple[dict[int, object], int]:
    try:
        return _read_properties_unchecked(body, at)
    except (struct.error, IndexError):
        raise MqttProtocolError("properties run past the end of the packet") from None


def _read_properties_unchecked(body: bytes, at: int) -> tuple[dict[int, object], int]:
    length, at = _read_varint(body, at)
    end = at + length
    if end > len(body):
        raise MqttProtocolError("properties run past the end of the packet")
    props: dict[int, object] = {}
    while at < end:
        ident, at = _read_varint(body, at)
        kind = _PROPERTY_KINDS.get(ident)
        value: object
        if kind is None:
            raise MqttProtocolError(f"unknown property {ident:#x}")
        if kind == _BYTE:
            value, at = body[at], at + 1
        elif kind == _TWO:
            (value,) = struct.unpack_from("!H", body, at)
            at += 2
        elif kind == _FOUR:
            (value,) = struct.unpack_from("!I", body, at)
            at += 4
        elif kind == _VARINT:
            value, at = _read_varint(body, at)
        elif kind == _STRING:
            value, at = _read_string(body, at)
        elif kind == _BINARY:
            (size,) = struct.unpack_from("!H", body, at)
            value, at = bytes(body[at + 2 : at + 2 + size]), at + 2 + size
        else:
            _, at = _read_string(body, at)
            value, at = _read_string(body, at)
        if at > end:
            raise MqttProtocolError("property runs past the properties")
        props[ident] = value
    return props, end


def decode_connack(packet: Packet, *, v5: bool) -> int:
    """The CONNACK return/reason code (0 = accepted)."""
    if packet.type is not PacketType.CONNACK or len(packet.body) < 2:
        raise MqttProtocolError("expected CONNACK")
    return packet.body[1]


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    packet_id: int | None
    properties: dict[int, object] = field(default_factory=dict)

    @property
    def response_topic(self) -> str | None:
        value = self.properties.get(RESPONSE_TOPIC)
        return value if isinstance(value, str) else None

    @property
    def correlation_data(self) -> bytes | None:
        value = self.properties.get(CORRELATION_DATA)
        return value if isinstance(value, bytes) else None


def decode_publish(packet: Packet, *, v5: bool) -> Publish:
    """An incoming PUBLISH; raise :class:`MqttProtocolError` if malformed or QoS 2."""
    qos = (packet.flags >> 1) & 0x03
    if qos > 1:
        raise MqttProtocolError(f"QoS {qos} is not supported")
    body = packet.body
    topic, at = _read_string(body, 0)
    packet_id = None
    if qos:
        if at + 2 > len(body):
            raise MqttProtocolError("PUBLISH without packet identifier")
        (packet_id,) = struct.unpack_from("!H", body, at)
        at += 2
    props: dict[int, object] = {}
    if v5:
        props, at = _read_properties(body, at)
    return Publish(topic, bytes(body[at:]), qos, bool(packet.flags & 1), packet_id, props)


def decode_packet_id(packet: Packet) -> int:
    """The packet identifier of a PUBACK or SUBACK."""
    if len(packet.body) < 2:
        raise MqttProtocolError(f"{packet.type.name} without packet identifier")
    (packet_id,) = struct.unpack_from("!H", packet.body, 0)
    return int(packet_id)


def decode_suback_codes(packet: Packet, *, v5: bool) -> bytes:
    """The SUBACK return codes (one per filter; 0x80 and above are failures)."""
    at = 2
    if v5:
        _, at = _read_properties(packet.body, at)
    return packet.body[at:]
