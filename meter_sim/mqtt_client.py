"""The MQTT connection of one simulated meter (aiomqtt), kept thin.

A :class:`MeterLink` connects with a retained ``offline`` last will, publishes a retained
``online`` status, subscribes to the meter's command topic and then moves messages:
outgoing ones from its queue (readings, events, replies) and incoming commands to the
meter's :class:`~meter_sim.agent.MqttMeterAgent`. What to say is decided by the agent;
this module only talks to the broker, reconnects, and plays the transport faults
(latency, going offline abruptly so the broker publishes the last will).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Callable
from datetime import UTC, datetime

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from meter_sim.agent import MqttMeterAgent, Outgoing
from meter_sim.clock import SimClock

_log = logging.getLogger(__name__)

_RECONNECT_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)


def _wall_now() -> datetime:
    return datetime.now(UTC)


class MeterLink:
    """One meter, one MQTT connection.

    ``clock`` gives simulated time from ``loop.time()``; ``wall`` gives real UTC time
    (for command expiry). ``connect_gate`` limits how many links connect at once.
    """

    def __init__(
        self,
        agent: MqttMeterAgent,
        host: str,
        port: int,
        *,
        clock: SimClock,
        mqtt_v5: bool = True,
        keepalive_s: int = 60,
        connect_gate: asyncio.Semaphore | None = None,
        wall: Callable[[], datetime] = _wall_now,
    ) -> None:
        self.agent = agent
        self._host = host
        self._port = port
        self._clock = clock
        self._mqtt_v5 = mqtt_v5
        self._keepalive_s = keepalive_s
        self._gate = connect_gate or asyncio.Semaphore(1_000_000)
        self._wall = wall
        self._queue: collections.deque[Outgoing] = collections.deque()
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._offline_until: datetime | None = None
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.connect_error: BaseException | None = None
        self.connections = 0
        self.published = 0

    @property
    def loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def send(self, messages: list[Outgoing]) -> None:
        """Queue messages for publishing in order (kept while the link is down)."""
        if messages:
            self._queue.extend(messages)
            self._wakeup.set()

    def go_offline(self, until: datetime) -> None:
        """Drop the connection abruptly (the broker publishes the last will) until ``until``."""
        self._offline_until = until
        client = self._client
        if client is None:
            return
        sock = client._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()

    async def run(self) -> None:
        """Stay connected until :meth:`stop`; reconnect with back-off when the link drops."""
        failures = 0
        while not self._stopping.is_set():
            await self._wait_while_offline()
            if self._stopping.is_set():
                break
            try:
                await self._session()
                failures = 0
            except aiomqtt.MqttError as exc:
                if not self.connected.is_set() and self.connections == 0:
                    self.connect_error = exc
                delay = _RECONNECT_DELAYS_S[min(failures, len(_RECONNECT_DELAYS_S) - 1)]
                failures += 1
                if self._offline_until is None:
                    _log.info("meter %s: MQTT link lost (%s)", self.agent.meter_id, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
            finally:
                self.connected.clear()
                self._client = None

    async def _wait_while_offline(self) -> None:
        until = self._offline_until
        if until is None:
            return
        delay = self._clock.real_at(until) - self.loop_time
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        self._offline_until = None

    async def _session(self) -> None:
        agent = self.agent
        will = agent.offline()
        client = aiomqtt.Client(
            self._host,
            self._port,
            identifier=f"meter-{agent.meter_id}",
            protocol=aiomqtt.ProtocolVersion.V5 if self._mqtt_v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(will.topic, will.payload, qos=1, retain=True),
            keepalive=self._keepalive_s,
            timeout=30,
        )
        client.pending_calls_threshold = 1000
        async with self._gate:
            await client.__aenter__()
        self._client = client
        try:
            self.connections += 1
            await self._publish(client, agent.online())
            await client.subscribe(agent.command_topic, qos=1)
            self.connected.set()
            tasks = {
                asyncio.create_task(self._read(client)),
                asyncio.create_task(self._write(client)),
                asyncio.create_task(self._stopping.wait()),
            }
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                error = task.exception()
                if error is not None:
                    raise error
            if self._stopping.is_set():
                await self._flush(client)
                await self._publish(client, agent.offline())
        finally:
            self._client = None
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                payload = b"" if payload is None else str(payload).encode()
            response_topic = None
            correlation = None
            props = message.properties
            if props is not None:
                response_topic = getattr(props, "ResponseTopic", None)
                correlation = getattr(props, "CorrelationData", None)
            now = self._clock.now(self.loop_time)
            self.send(
                self.agent.on_command(
                    bytes(payload),
                    now,
                    self._wall(),
                    response_topic=response_topic,
                    correlation_data=correlation,
                )
            )

    async def _write(self, client: aiomqtt.Client) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._flush(client)

    async def _flush(self, client: aiomqtt.Client) -> None:
        while self._queue:
            message = self._queue[0]
            latency = self.agent.faults.latency()
            if latency > 0:
                await asyncio.sleep(latency)
            await self._publish(client, message)
            self._queue.popleft()

    async def _publish(self, client: aiomqtt.Client, message: Outgoing) -> None:
        properties = None
        if message.correlation_data is not None and self._mqtt_v5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = message.correlation_data
        await client.publish(
            message.topic,
            message.payload,
            qos=message.qos,
            retain=message.retain,
            properties=properties,
            timeout=2 if self._stopping.is_set() else 30,
        )
        self.published += 1
