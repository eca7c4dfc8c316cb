"""MQTT subscriber: meters' telemetry, events and status into the ingestion path.

Each message is acknowledged to the broker only after its batch is committed (paho's
manual acks), and the session is persistent, so a worker that dies mid-batch gets the
unacknowledged messages again on reconnect. Ingestion de-duplicates, so a redelivery
never doubles a reading. Messages go from paho's callback into a ``BatchInbox`` on the
event loop's thread, and each batch is stored on a worker thread. With a
shared-subscription group, several workers split the fleet's telemetry and events
between them (MQTT 5 brokers only).

Status is subscribed without the group: MQTT 5 brokers do not hand retained messages to
shared subscriptions, so a fresh worker would never learn which meters are offline (the
retained status and the last will). Every worker applies every status message; that is
harmless because applying "online" or "offline" sets the same value however often it runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aiomqtt
from paho.mqtt.client import MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from headend.connectors.batching import BatchInbox
from headend.connectors.reconnect import run_reconnecting
from headend.ingest import InboundMessage
from protocols.mqtt import MeterChannel, TopicScheme

log = logging.getLogger(__name__)

IngestFunction = Callable[[Sequence[InboundMessage]], Any]

# How long the broker keeps a disconnected worker's session (and its unacked messages).
SESSION_EXPIRY_S = 3600


class MqttIngestWorker:
    """Subscribes to every meter's telemetry, events and status and feeds ``ingest``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        scheme: TopicScheme,
        ingest: IngestFunction,
        client_id: str,
        mqtt_v5: bool = True,
        share_group: str | None = None,
        batch_size: int = 500,
        batch_wait_s: float = 0.05,
        max_backoff_s: float = 30.0,
    ) -> None:
        if share_group and not mqtt_v5:
            raise ValueError("shared subscriptions need an MQTT 5 broker connection")
        self._host = host
        self._port = port
        self._scheme = scheme
        self._ingest = ingest
        self._client_id = client_id
        self._mqtt_v5 = mqtt_v5
        self._share_group = share_group
        self._batch_size = batch_size
        self._batch_wait_s = batch_wait_s
        self._max_backoff_s = max_backoff_s
        self.connected = asyncio.Event()

    def subscriptions(self) -> list[str]:
        """Topic filters this worker subscribes to: the shared channels through the share
        group when there is one, status always directly (retained messages, see above)."""
        shared = [self._scheme.all_meters(channel) for channel in _SHARED]
        if self._share_group:
            shared = [self._scheme.shared(self._share_group, f) for f in shared]
        return [*shared, self._scheme.all_meters(MeterChannel.STATUS)]

    async def run(self) -> None:
        """Run until cancelled, reconnecting with backoff after any broker failure."""
        await run_reconnecting(
            self._run_connected,
            self.connected,
            name="MQTT ingest worker",
            max_backoff_s=self._max_backoff_s,
        )

    async def _run_connected(self) -> None:
        client = self._make_client()
        # aiomqtt 2.x does not expose manual acks; its paho client does.
        paho = client._client
        paho.manual_ack_set(True)
        inbox: BatchInbox[MQTTMessage] = BatchInbox(self._batch_size, self._batch_wait_s)
        # Straight from paho's callback into the inbox, set before connecting so that no
        # retained message goes to aiomqtt's queue: its iterator costs a task per message.
        paho.on_message = lambda _client, _userdata, message: inbox.put(message)
        async with client:
            for topic_filter in self.subscriptions():
                await client.subscribe(topic_filter, qos=1)
            self.connected.set()
            log.info("head-end subscribed to %s", ", ".join(self.subscriptions()))
            writer = asyncio.create_task(self._write_batches(inbox, paho))
            disconnected = asyncio.create_task(_until_disconnected(client))
            try:
                done, _ = await asyncio.wait(
                    {writer, disconnected}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    task.result()
            finally:
                writer.cancel()
                disconnected.cancel()

    def _make_client(self) -> aiomqtt.Client:
        if self._mqtt_v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
            return aiomqtt.Client(
                self._host,
                self._port,
                identifier=self._client_id,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,
                properties=properties,
            )
        return aiomqtt.Client(
            self._host,
            self._port,
            identifier=self._client_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=False,
        )

    async def _write_batches(self, inbox: BatchInbox[MQTTMessage], paho: Any) -> None:
        while True:
            batch = await inbox.next_batch()
            await self._ingest_until_stored(batch)
            for message in batch:
                if message.qos > 0:
                    paho.ack(message.mid, message.qos)

    async def _ingest_until_stored(self, batch: list[MQTTMessage]) -> None:
        now = datetime.now(UTC)
        inbound = [
            InboundMessage(topic=_topic_text(m), payload=_payload(m), received_at=now)
            for m in batch
        ]
        backoff = 0.2
        while True:
            try:
                await asyncio.to_thread(self._ingest, inbound)
                return
            except Exception:
                # The database is the one thing ingestion can fail on; keep the batch
                # (unacknowledged) and retry rather than lose it.
                log.exception("storing %d messages failed; retrying in %.1f s", len(batch), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)


# Channels split between the workers of a share group.
_SHARED = (MeterChannel.TELEMETRY, MeterChannel.EVENTS)


async def _until_disconnected(client: aiomqtt.Client) -> None:
    """Return never; raise ``MqttError`` when the connection is lost. Every message goes to
    the inbox, so aiomqtt's queue stays empty and its iterator only ends on a disconnect."""
    async for _message in client.messages:
        pass


def _payload(message: MQTTMessage) -> bytes:
    payload = message.payload  # bytes as paho decodes a PUBLISH; typed wider
    return payload if isinstance(payload, bytes) else bytes(payload)


def _topic_text(message: MQTTMessage) -> str:
    try:
        return message.topic
    except UnicodeDecodeError:
        # Kept (and rejected as a bad topic by ingestion) rather than breaking the batch.
        return message._topic.decode("utf-8", "backslashreplace")
