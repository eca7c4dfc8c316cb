"""The MQTT connection of one simulated meter, kept thin.

:class:`MqttConnection` is a small asyncio protocol speaking MQTT 3.1.1 or 5 with the
packets of :mod:`meter_sim.mqtt_wire`: one socket, no task and one keep-alive timer per
connection, so ten thousand meters fit in one process (a general client library costs a
task, a thread hop to connect and a one-second timer per connection).

:class:`MeterLink` gives one meter its connection: it connects with a retained
``offline`` last will, publishes a retained ``online`` status, subscribes to the meter's
command topic and then moves messages: outgoing ones from its queue (readings, events,
replies) and incoming commands to the meter's :class:`~meter_sim.agent.MqttMeterAgent`.
What to say is the agent's business; this module only talks to the broker, reconnects,
and plays the transport faults (latency, going offline abruptly so the broker publishes
the last will).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from meter_sim.agent import MqttMeterAgent, Outgoing
from meter_sim.clock import SimClock
from meter_sim.mqtt_wire import (
    DISCONNECT,
    PINGREQ,
    MqttProtocolError,
    Packet,
    PacketReader,
    PacketType,
    Publish,
    Will,
    decode_connack,
    decode_packet_id,
    decode_publish,
    decode_suback_codes,
    encode_connect,
    encode_puback,
    encode_publish,
    encode_subscribe,
)

_log = logging.getLogger(__name__)

_RECONNECT_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)


class MqttLinkError(ConnectionError):
    """The broker refused us, did not answer in time, or the connection dropped."""


def _wall_now() -> datetime:
    return datetime.now(UTC)


class MqttConnection(asyncio.Protocol):
    """One MQTT client connection (QoS 0/1, one subscription, clean session).

    Open it with :meth:`open`; incoming PUBLISH packets go to ``on_message``.
    """

    def __init__(
        self,
        *,
        v5: bool,
        keepalive_s: int,
        on_message: Callable[[Publish], None],
        on_lost: Callable[[], None],
    ) -> None:
        self.v5 = v5
        self._keepalive_s = keepalive_s
        self._on_message = on_message
        self._on_lost = on_lost
        self._reader = PacketReader()
        self._transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._connack: asyncio.Future[int] = loop.create_future()
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._next_id = 0
        self._last_write = 0.0
        self._ping_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.error: BaseException | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        client_id: str,
        *,
        v5: bool,
        will: Will | None,
        keepalive_s: int,
        on_message: Callable[[Publish], None],
        on_lost: Callable[[], None],
        timeout_s: float = 30.0,
    ) -> MqttConnection:
        """Connect and wait for CONNACK; raise :class:`MqttLinkError` if refused or silent."""
        loop = asyncio.get_running_loop()
        conn = cls(v5=v5, keepalive_s=keepalive_s, on_message=on_message, on_lost=on_lost)
        try:
            async with asyncio.timeout(timeout_s):
                await loop.create_connection(lambda: conn, host, port)
                conn._write(encode_connect(client_id, keepalive_s=keepalive_s, v5=v5, will=will))
                code = await conn._connack
        except (OSError, TimeoutError) as exc:
            conn.abort()
            raise MqttLinkError(f"cannot connect to {host}:{port}: {exc or 'timed out'}") from None
        if code != 0:
            conn.abort()
            raise MqttLinkError(f"broker refused the connection (CONNACK code {code})")
        conn._schedule_ping()
        return conn

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            for packet in self._reader.feed(data):
                self._handle(packet)
        except MqttProtocolError as exc:
            _log.warning("MQTT protocol error from broker: %s", exc)
            self.error = exc
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.error is None:
            self.error = exc or MqttLinkError("connection closed")
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        lost = MqttLinkError(f"connection lost: {self.error}")
        if not self._connack.done():
            self._connack.set_exception(lost)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(lost)
        self._pending.clear()
        self._on_lost()

    def _handle(self, packet: Packet) -> None:
        kind = packet.type
        if kind is PacketType.PUBLISH:
            message = decode_publish(packet, v5=self.v5)
            if message.qos == 1 and message.packet_id is not None:
                self._write(encode_puback(message.packet_id))
            self._on_message(message)
        elif kind in (PacketType.PUBACK, PacketType.SUBACK):
            future = self._pending.pop(decode_packet_id(packet), None)
            if future is not None and not future.done():
                if kind is PacketType.SUBACK and any(
                    c >= 0x80 for c in decode_suback_codes(packet, v5=self.v5)
                ):
                    future.set_exception(MqttLinkError("subscription refused"))
                else:
                    future.set_result(None)
        elif kind is PacketType.CONNACK:
            if not self._connack.done():
                self._connack.set_result(decode_connack(packet, v5=self.v5))
        elif kind is PacketType.PINGRESP:
            pass
        elif kind is PacketType.DISCONNECT:
            self.error = MqttLinkError("broker sent DISCONNECT")
            self.abort()
        else:
            raise MqttProtocolError(f"unexpected {kind.name} from broker")

    # --- sending ---------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._transport is None or self.closed:
            raise MqttLinkError("not connected")
        self._transport.write(data)
        self._last_write = self._loop.time()

    def _schedule_ping(self) -> None:
        if self._keepalive_s > 0 and not self.closed:
            self._ping_timer = self._loop.call_later(self._keepalive_s / 2, self._ping)

    def _ping(self) -> None:
        # Only ping when nothing else went out lately: any packet keeps the session alive.
        if self._loop.time() - self._last_write >= self._keepalive_s / 2 - 0.5:
            with contextlib.suppress(MqttLinkError):
                self._write(PINGREQ)
        self._schedule_ping()

    def _packet_id(self) -> int:
        for _ in range(0xFFFF):
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self._pending:
                return self._next_id
        raise MqttLinkError("no free packet identifier")

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation_data: bytes | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        """Publish; for QoS 1 wait for the PUBACK (raise :class:`MqttLinkError` if none)."""
        packet_id = self._packet_id() if qos else 0
        data = encode_publish(
            topic,
            payload,
            qos=qos,
            retain=retain,
            packet_id=packet_id,
            v5=self.v5,
            correlation_data=correlation_data if self.v5 else None,
        )
        if not qos:
            self._write(data)
            return
        await self._acknowledged(packet_id, data, timeout_s)

    async def subscribe(self, topic_filter: str, *, qos: int = 1, timeout_s: float = 30.0) -> None:
        """Subscribe to one filter and wait for SUBACK."""
        packet_id = self._packet_id()
        data = encode_subscribe(packet_id, topic_filter, qos=qos, v5=self.v5)
        await self._acknowledged(packet_id, data, timeout_s)

    async def _acknowledged(self, packet_id: int, data: bytes, timeout_s: float) -> None:
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending[packet_id] = future
        try:
            self._write(data)
            async with asyncio.timeout(timeout_s):
                await future
        except TimeoutError:
            raise MqttLinkError(f"no acknowledgement within {timeout_s} s") from None
        finally:
            self._pending.pop(packet_id, None)

    def abort(self) -> None:
        """Drop the connection without DISCONNECT (the broker publishes the will)."""
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """Disconnect cleanly (DISCONNECT, so the broker discards the will)."""
        if self._transport is not None and not self.closed:
            with contextlib.suppress(MqttLinkError):
                self._write(DISCONNECT)
            self._transport.close()


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
        client_id: str | None = None,
    ) -> None:
        """``client_id`` defaults to ``meter-<serial>``; a fleet adds its own run id so two
        fleets with the same meters on one broker do not take over each other's sessions."""
        self.agent = agent
        self.client_id = client_id or f"meter-{agent.meter_id}"
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
        self._conn: MqttConnection | None = None
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
        if self._conn is not None:
            self._conn.abort()

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
            except (MqttLinkError, MqttProtocolError) as exc:
                if self.connections == 0:
                    self.connect_error = exc
                delay = _RECONNECT_DELAYS_S[min(failures, len(_RECONNECT_DELAYS_S) - 1)]
                failures += 1
                if self._offline_until is None:
                    _log.info("meter %s: MQTT link lost (%s)", self.agent.meter_id, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
            finally:
                self.connected.clear()
                self._conn = None

    async def _wait_while_offline(self) -> None:
        until = self._offline_until
        if until is None:
            return
        delay = self._clock.real_at(until) - self.loop_time
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        self._offline_until = None

    def _on_message(self, message: Publish) -> None:
        if message.retain:
            # A retained command would run again at every reconnect (think "disconnect"):
            # commands are never retained, so one that arrives retained is stale.
            self.agent.stats.bad_commands += 1
            _log.warning("meter %s: ignored a retained command", self.agent.meter_id)
            return
        now = self._clock.now(self.loop_time)
        self.send(
            self.agent.on_command(
                message.payload,
                now,
                self._wall(),
                response_topic=message.response_topic,
                correlation_data=message.correlation_data,
            )
        )

    async def _session(self) -> None:
        agent = self.agent
        will = agent.offline()
        async with self._gate:
            conn = await MqttConnection.open(
                self._host,
                self._port,
                self.client_id,
                v5=self._mqtt_v5,
                will=Will(will.topic, will.payload, qos=1, retain=True),
                keepalive_s=self._keepalive_s,
                on_message=self._on_message,
                on_lost=self._wakeup.set,
            )
        self._conn = conn
        try:
            self.connections += 1
            await self._publish(conn, agent.online())
            await conn.subscribe(agent.command_topic, qos=1)
            self.connected.set()
            while True:
                await self._flush(conn)
                if self._stopping.is_set():
                    await self._publish(conn, agent.offline(), timeout_s=2.0)
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                if conn.closed:
                    raise MqttLinkError(f"connection lost: {conn.error}")
        finally:
            self._conn = None
            conn.close()

    async def _flush(self, conn: MqttConnection) -> None:
        while self._queue:
            if conn.closed:
                raise MqttLinkError(f"connection lost: {conn.error}")
            message = self._queue[0]
            latency = self.agent.faults.latency()
            if latency > 0:
                await asyncio.sleep(latency)
            await self._publish(conn, message)
            self._queue.popleft()

    async def _publish(
        self, conn: MqttConnection, message: Outgoing, timeout_s: float = 30.0
    ) -> None:
        await conn.publish(
            message.topic,
            message.payload,
            qos=message.qos,
            retain=message.retain,
            correlation_data=message.correlation_data,
            timeout_s=timeout_s,
        )
        self.published += 1
