"""Every token result, typed into simulated meters over a real broker (push_token)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from meter_sim.fleet import MqttFleet, describe_fleet
from meter_sim.model import DecoderSettings, MeterConfig, PrepaidMode
from protocols.mqtt import ReplyStatus, TopicScheme
from tests.meter_sim.conftest import BrokerAddress
from tests.meter_sim.probe import Probe, probe
from tests.meter_sim.vend import Vendor

START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


async def _push(p: Probe, config: MeterConfig, token: str) -> tuple[ReplyStatus, str]:
    body = {"v": 1, "id": uuid.uuid4().hex, "name": "push_token", "params": {"token": token}}
    reply, _ = await p.command(config.serial, body)
    return reply.status, str(reply.result.get("token_status"))


async def test_each_token_result_comes_back_over_mqtt(mqtt_broker: BrokerAddress) -> None:
    base = describe_fleet(5, seed=11)
    normal = base[0]
    expired = replace(base[1], decoder=DecoderSettings(key_expiry_number=0))
    short_memory = replace(base[2], decoder=DecoderSettings(tid_memory_size=1))
    default_key = replace(base[3], decoder=DecoderSettings(key_type=1))
    central = replace(base[4], prepaid_mode=PrepaidMode.CENTRAL)
    configs = [normal, expired, short_memory, default_key, central]
    prefix = f"tok-{uuid.uuid4().hex[:6]}/"
    v5 = mqtt_broker.supports_v5
    at = START
    async with (
        probe(mqtt_broker.host, mqtt_broker.port, TopicScheme(prefix), v5=v5) as p,
        MqttFleet(
            mqtt_broker.host, mqtt_broker.port, configs, topic_prefix=prefix, mqtt_v5=v5,
            start=START,
        ),
    ):  # fmt: skip
        vendor = Vendor(normal)
        credit = vendor.credit(Decimal(5), at)
        assert await _push(p, normal, credit) == (ReplyStatus.OK, "accept")
        assert await _push(p, normal, credit) == (ReplyStatus.ERROR, "used")
        other_meters_token = vendor.credit(Decimal(1), at + timedelta(minutes=1))
        assert await _push(p, short_memory, other_meters_token) == (
            ReplyStatus.ERROR,
            "reject",
        )  # a token for another meter
        assert await _push(p, expired, Vendor(expired).credit(Decimal(1), at)) == (
            ReplyStatus.ERROR,
            "key_expired",
        )
        memory = Vendor(short_memory)
        newer = memory.credit_with_tid(Decimal(1), memory.tid(at) + 1)
        assert await _push(p, short_memory, newer) == (ReplyStatus.OK, "accept")
        older = memory.credit_with_tid(Decimal(1), memory.tid(at - timedelta(minutes=5)))
        assert await _push(p, short_memory, older) == (ReplyStatus.ERROR, "old")
        assert await _push(p, default_key, Vendor(default_key).credit(Decimal(1), at)) == (
            ReplyStatus.ERROR,
            "error",
        )
        first, second = vendor.key_change(key_revision=2)
        assert await _push(p, normal, first) == (ReplyStatus.OK, "1st_kct")
        assert await _push(p, normal, second) == (ReplyStatus.OK, "accept")
        assert await _push(p, central, "0" * 20) == (ReplyStatus.ERROR, "not_supported")
        assert await _push(p, normal, "12345") == (ReplyStatus.ERROR, "error")
