"""The meter's MQTT packet codec: round trips, stream splitting and garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meter_sim.mqtt_wire import (
    MqttProtocolError,
    PacketReader,
    PacketType,
    Will,
    decode_publish,
    encode_connect,
    encode_puback,
    encode_publish,
    encode_subscribe,
    encode_varint,
)

_topics = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+#"),
    min_size=1,
    max_size=80,
)


@given(st.integers(0, 268_435_455))
def test_varint_round_trips_through_the_reader(value: int) -> None:
    encoded = encode_varint(value)
    assert 1 <= len(encoded) <= 4
    # a PINGRESP-typed packet whose remaining length is value: the reader must wait for it
    reader = PacketReader(max_packet=1 << 29)
    assert reader.feed(bytes((0xD0,)) + encoded) == [] or value == 0


@settings(max_examples=60)
@given(
    topic=_topics,
    payload=st.binary(max_size=400),
    qos=st.sampled_from([0, 1]),
    retain=st.booleans(),
    packet_id=st.integers(1, 0xFFFF),
    v5=st.booleans(),
    correlation=st.one_of(st.none(), st.binary(max_size=40)),
    chunk=st.integers(7, 300),
)
def test_publish_round_trips_in_any_chunking(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    packet_id: int,
    v5: bool,
    correlation: bytes | None,
    chunk: int,
) -> None:
    data = encode_publish(
        topic, payload, qos=qos, retain=retain, packet_id=packet_id, v5=v5,
        correlation_data=correlation,
    )  # fmt: skip
    reader = PacketReader()
    packets = []
    for start in range(0, len(data), chunk):
        packets.extend(reader.feed(data[start : start + chunk]))
    [packet] = packets
    assert packet.type is PacketType.PUBLISH
    message = decode_publish(packet, v5=v5)
    assert (message.topic, message.payload, message.qos, message.retain) == (
        topic, payload, qos, retain,
    )  # fmt: skip
    assert message.packet_id == (packet_id if qos else None)
    if v5:
        assert message.correlation_data == correlation


def test_several_packets_in_one_read_are_all_returned() -> None:
    data = encode_puback(7) + encode_subscribe(8, "a/b", qos=1, v5=False) + encode_puback(9)
    kinds = [p.type for p in PacketReader().feed(data)]
    assert kinds == [PacketType.PUBACK, PacketType.SUBSCRIBE, PacketType.PUBACK]


def test_connect_carries_the_will_flags() -> None:
    data = encode_connect(
        "meter-1", keepalive_s=60, v5=False, will=Will("s/status", b"offline", 1, True)
    )
    [packet] = PacketReader().feed(data)
    assert packet.type is PacketType.CONNECT
    flags = packet.body[7]
    assert flags == 0x02 | 0x04 | 0x08 | 0x20


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00",  # reserved packet type 0
        b"\x30\xff\xff\xff\xff\x01",  # remaining length longer than 4 bytes
    ],
)
def test_garbage_from_the_broker_is_a_protocol_error(garbage: bytes) -> None:
    with pytest.raises(MqttProtocolError):
        PacketReader().feed(garbage)


@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_protocol_errors(data: bytes) -> None:
    reader = PacketReader()
    try:
        for packet in reader.feed(data):
            if packet.type is PacketType.PUBLISH:
                decode_publish(packet, v5=True)
    except MqttProtocolError:
        pass
