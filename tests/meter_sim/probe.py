"""The head-end's side of the wire, for tests: subscribe, collect, send commands."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocols.mqtt import CommandReply, MeterChannel, TopicScheme, parse_reply


class Probe:
    def __init__(self, client: aiomqtt.Client, scheme: TopicScheme, v5: bool) -> None:
        self.client = client
        self.scheme = scheme
        self.v5 = v5
        self.reply_topic = scheme.replies(f"probe-{uuid.uuid4().hex[:8]}")
        self.queues: dict[str, asyncio.Queue[aiomqtt.Message]] = {}
        self._task: asyncio.Task[None] | None = None

    def queue(self, topic: str) -> asyncio.Queue[aiomqtt.Message]:
        return self.queues.setdefault(topic, asyncio.Queue())

    async def _pump(self) -> None:
        async for message in self.client.messages:
            self.queue(str(message.topic)).put_nowait(message)

    async def next(self, topic: str, timeout: float = 10.0) -> aiomqtt.Message:
        return await asyncio.wait_for(self.queue(topic).get(), timeout)

    async def next_on(self, meter_id: str, channel: MeterChannel, timeout: float = 10.0) -> bytes:
        message = await self.next(self.scheme.meter_topic(meter_id, channel), timeout)
        payload = message.payload
        assert isinstance(payload, bytes)
        return payload

    async def command(
        self,
        meter_id: str,
        payload: bytes | dict[str, Any],
        *,
        use_response_topic: bool = False,
        correlation: bytes | None = None,
        timeout: float = 10.0,
    ) -> tuple[CommandReply, aiomqtt.Message]:
        if isinstance(payload, dict):
            import json

            body = dict(payload)
            if not use_response_topic:
                body.setdefault("reply_to", self.reply_topic)
            raw = json.dumps(body).encode()
        else:
            raw = payload
        properties = None
        if use_response_topic:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = self.reply_topic
            if correlation is not None:
                properties.CorrelationData = correlation
        await self.client.publish(
            self.scheme.meter_topic(meter_id, MeterChannel.COMMAND),
            raw,
            qos=1,
            properties=properties,
        )
        message = await self.next(self.reply_topic, timeout)
        assert isinstance(message.payload, bytes)
        return parse_reply(message.payload), message


@contextlib.asynccontextmanager
async def probe(host: str, port: int, scheme: TopicScheme, *, v5: bool) -> AsyncIterator[Probe]:
    client = aiomqtt.Client(
        host,
        port,
        identifier=f"probe-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
    )
    async with client:
        p = Probe(client, scheme, v5)
        await client.subscribe(scheme.prefix + "ami/v1/#", qos=1)
        p._task = asyncio.create_task(p._pump())
        try:
            yield p
        finally:
            p._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await p._task
