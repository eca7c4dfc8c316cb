"""The command dispatcher: moves commands between the queue (database) and the meters (MQTT).

One asyncio task per head-end instance. It subscribes to its own replies topic
(``TopicScheme.replies(instance)``) on a persistent MQTT session, so replies that arrive
while it is restarting are kept by the broker and delivered when it is back. It then
loops: claim what is due from the queue (new commands, retries, read-backs, timeouts),
publish it, and wait for a wake-up (a new request) or the next poll. Every reply goes
back to the queue, which may answer with a follow-up (the read-back) to publish at once.

On MQTT 5 a command carries the ResponseTopic and CorrelationData properties and a
MessageExpiryInterval, so the broker drops it once it is stale; on MQTT 3.1.1 the
payload's ``reply_to`` names the replies topic. Either way the payload's ``expires_at``
tells the meter to ignore a command that arrives too late.

Nothing here decides anything: the queue records every step before it is published,
so a dispatcher can be killed at any point and another (or the same, restarted) resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import socket
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from headend.commands.service import CommandQueue, InboundReply, Outbound
from headend.connectors.reconnect import run_reconnecting
from protocols.mqtt import Command, MeterChannel, TopicScheme

log = logging.getLogger(__name__)

# How long the broker keeps this dispatcher's session (and replies for it) while it is away.
SESSION_EXPIRY_S = 3600


class CommandDispatcher:
    """Sends queued commands to MQTT meters and feeds their replies back to the queue.

    ``instance`` names this head-end worker: it picks the replies topic and the MQTT
    client id (``<instance>-commands``), so a restarted worker with the same name gets
    the replies its predecessor was waiting for. ``poll_interval_s`` bounds how late a
    retry, a timeout or a command queued by another process is noticed.
    """

    def __init__(
        self,
        queue: CommandQueue,
        host: str,
        port: int,
        *,
        scheme: TopicScheme,
        instance: str,
        mqtt_v5: bool = True,
        poll_interval_s: float = 0.2,
        batch_size: int = 200,
        max_backoff_s: float = 30.0,
    ) -> None:
        if poll_interval_s <= 0 or batch_size < 1:
            raise ValueError("poll_interval_s must be positive and batch_size at least 1")
        self._queue = queue
        self._host = host
        self._port = port
        self._scheme = scheme
        self._instance = instance
        self._mqtt_v5 = mqtt_v5
        self._poll_interval_s = poll_interval_s
        self._batch_size = batch_size
        self._max_backoff_s = max_backoff_s
        self.reply_topic = scheme.replies(instance)
        self.connected = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.published = 0
        self.replies = 0

    def wake(self) -> None:
        """Look at the queue now (callable from any thread, e.g. an API request handler)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wakeup.set()
        else:
            loop.call_soon_threadsafe(self._wakeup.set)

    async def run(self) -> None:
        """Run until cancelled, reconnecting with backoff after any broker failure."""
        self._loop = asyncio.get_running_loop()
        await run_reconnecting(
            self._run_connected,
            self.connected,
            name="command dispatcher",
            max_backoff_s=self._max_backoff_s,
        )

    async def _run_connected(self) -> None:
        client = self._make_client()
        client.pending_calls_threshold = 10 * self._batch_size
        async with client:
            _disable_nagle(client)
            await client.subscribe(self.reply_topic, qos=1)
            self.connected.set()
            log.info("command dispatcher %s listening on %s", self._instance, self.reply_topic)
            tasks = [
                asyncio.create_task(self._dispatch(client), name="commands-dispatch"),
                asyncio.create_task(self._receive(client), name="commands-replies"),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()
            finally:
                self.connected.clear()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def _make_client(self) -> aiomqtt.Client:
        identifier = f"{self._instance}-commands"
        if self._mqtt_v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
            return aiomqtt.Client(
                self._host,
                self._port,
                identifier=identifier,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,
                properties=properties,
            )
        return aiomqtt.Client(
            self._host,
            self._port,
            identifier=identifier,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=False,
        )

    async def _dispatch(self, client: aiomqtt.Client) -> None:
        while True:
            self._wakeup.clear()
            outbound = await self._call_queue(
                functools.partial(
                    self._queue.claim_due, instance=self._instance, limit=self._batch_size
                )
            )
            await self._publish(client, outbound)
            if len(outbound) == self._batch_size:
                continue  # more may be due right now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._poll_interval_s)

    async def _receive(self, client: aiomqtt.Client) -> None:
        inbox: asyncio.Queue[InboundReply] = asyncio.Queue()
        applier = asyncio.create_task(self._apply_replies(client, inbox))
        try:
            async for message in client.messages:
                self.replies += 1
                correlation = None
                if message.properties is not None:
                    correlation = getattr(message.properties, "CorrelationData", None)
                inbox.put_nowait(
                    InboundReply(
                        message.topic.value,
                        _payload_bytes(message.payload),
                        correlation,
                        datetime.now(UTC),
                    )
                )
                if applier.done():
                    applier.result()
        finally:
            applier.cancel()
            await asyncio.gather(applier, return_exceptions=True)

    async def _apply_replies(
        self, client: aiomqtt.Client, inbox: asyncio.Queue[InboundReply]
    ) -> None:
        """Apply replies in batches: whatever arrived while the last batch was stored."""
        while True:
            batch = [await inbox.get()]
            while len(batch) < self._batch_size and not inbox.empty():
                batch.append(inbox.get_nowait())
            follow_up = await self._call_queue(functools.partial(self._queue.handle_replies, batch))
            await self._publish(client, follow_up)

    async def _call_queue(self, call: Callable[[], list[Outbound]]) -> list[Outbound]:
        """Run a queue call off the event loop; a database failure is retried, not fatal."""
        backoff = 0.2
        while True:
            try:
                return await asyncio.to_thread(call)
            except Exception:
                # The database is the one thing this can fail on; everything is in it, so
                # waiting and asking again loses nothing.
                log.exception("command queue call failed; retrying in %.1f s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)

    async def _publish(self, client: aiomqtt.Client, outbound: Sequence[Outbound]) -> None:
        if outbound:
            await asyncio.gather(*(self._publish_one(client, item) for item in outbound))

    async def _publish_one(self, client: aiomqtt.Client, item: Outbound) -> None:
        message = item.message
        now = datetime.now(UTC)
        command = Command(
            id=message.wire_id,
            name=message.name,
            params=message.params,
            expires_at=message.expires_at,
            reply_to=None if self._mqtt_v5 else self.reply_topic,
        )
        properties = None
        if self._mqtt_v5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = self.reply_topic
            properties.CorrelationData = message.wire_id.encode()
            remaining = (message.reply_deadline - now).total_seconds()
            properties.MessageExpiryInterval = max(1, math.ceil(remaining))
        topic = self._scheme.meter_topic(item.comm_id, MeterChannel.COMMAND)
        # If this publish is lost, the command's reply deadline passes and it is retried.
        await client.publish(topic, command.to_bytes(), qos=1, properties=properties)
        self.published += 1


def _disable_nagle(client: aiomqtt.Client) -> None:
    """Send small packets at once: with Nagle's algorithm a PUBLISH written right after
    another small packet waits for the peer's delayed ACK (about 40 ms on Linux)."""
    sock = client._client.socket()
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    return b"" if payload is None else str(payload).encode()
