"""Runs the system in one event loop: migrations, the head-end's workers and the API.

Workers: the MQTT ingest subscriber, the command dispatcher, the Modbus poller (its
targets re-read from the registry every ``TARGET_REFRESH_S``), the balance engine, the
notification dispatcher and the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import uvicorn
from sqlalchemy import select
from sqlalchemy.orm import Session

from gridvend.app import create_app
from gridvend.audit import AuditLog
from gridvend.balance_settings import engine_settings
from gridvend.broker import BrokerEndpoint
from gridvend.db import (
    make_engine,
    make_read_only_session_factory,
    make_session_factory,
    upgrade,
)
from gridvend.key_loading import DeliveryKey
from gridvend.settings import Settings
from headend.commands import CommandQueue
from headend.commands.dispatcher import CommandDispatcher
from headend.commands.modbus_worker import ModbusCommandWorker
from headend.commissioning import MeterAddress
from headend.connectors.modbus import (
    REGISTRY_FIELDS,
    ChannelBusyError,
    ModbusPoller,
    PollFailure,
    PollTarget,
    TargetError,
    UnknownMeterError,
    targets_from_registry,
)
from headend.connectors.mqtt import MqttIngestWorker
from headend.ingest import Ingestor, PolledReading
from headend.interface import ConsumptionEvent, read_consumption
from headend.meter_link import MeterLink, MeterLinkError
from headend.models import Meter, MeterProtocol
from protocols.mqtt import TopicScheme
from vending.api import CounterConfig
from vending.balance.engine import BalanceEngine
from vending.keystore import KeyEncryptionKey, KeyStore
from vending.notifications import (
    DispatchSettings,
    HttpSmsAdapter,
    NotificationAdapter,
    NotificationDispatcher,
    RecordingAdapter,
    SmtpAdapter,
    SmtpSettings,
    WebhookAdapter,
)
from vending.security_module import SoftwareSecurityModule

log = logging.getLogger(__name__)

TARGET_REFRESH_S = 30.0
# An idle round is a handful of small queries; half a second keeps "balance exhausted ->
# disconnect requested" well inside the 2 s the disconnect path is given.
BALANCE_ROUND_S = 0.5
NOTIFICATION_ROUND_S = 1.0
STARTUP_TIMEOUT_S = 15.0


def load_key_encryption_key(settings: Settings) -> KeyEncryptionKey:
    """The KEK from GRIDVEND_KEY_ENCRYPTION_KEY, else from its file (created if absent)."""
    if settings.key_encryption_key is not None:
        return KeyEncryptionKey.from_base64(settings.key_encryption_key.get_secret_value())
    path = settings.key_encryption_key_file or settings.data_dir / "kek.b64"
    return KeyEncryptionKey.load_or_create(path)


def notification_adapters(settings: Settings) -> list[NotificationAdapter]:
    """One adapter per configured channel (Settings has checked each is configured)."""
    adapters: list[NotificationAdapter] = []
    for channel in settings.notification_channel_list:
        if channel == "email" and settings.smtp_host:
            password = settings.smtp_password
            adapters.append(
                SmtpAdapter(
                    SmtpSettings(
                        host=settings.smtp_host,
                        port=settings.smtp_port,
                        sender=settings.smtp_from,
                        starttls=settings.smtp_starttls,
                        username=settings.smtp_username,
                        password=password.get_secret_value() if password else None,
                    )
                )
            )
        elif channel == "sms" and settings.sms_gateway_url and settings.sms_gateway_token:
            adapters.append(
                HttpSmsAdapter(
                    settings.sms_gateway_url, settings.sms_gateway_token.get_secret_value()
                )
            )
        elif channel == "webhook" and settings.webhook_url and settings.webhook_secret:
            secret = settings.webhook_secret.get_secret_value().encode()
            adapters.append(WebhookAdapter(settings.webhook_url, secret))
        elif channel == "record":
            adapters.append(RecordingAdapter())
    return adapters


def _consumption_stream(session: Session, after_offset: int, limit: int) -> list[ConsumptionEvent]:
    return read_consumption(session, after_offset=after_offset, limit=limit)


class FreshTargetsReader:
    """The poller for the API's on-demand reads and commissioning's Modbus links. A meter
    registered since the last target refresh (every ``TARGET_REFRESH_S``) is not a target
    yet: re-read the registry once rather than make the technician wait for the refresh."""

    def __init__(self, poller: ModbusPoller, targets: Callable[[], list[PollTarget]]) -> None:
        self._poller = poller
        self._targets = targets

    @property
    def group_names(self) -> frozenset[str]:
        return self._poller.group_names

    async def read_now(self, meter_id: int, group: str = "instantaneous") -> PolledReading:
        try:
            return await self._poller.read_now(meter_id, group)
        except UnknownMeterError as exc:
            await self._refresh(exc)
            return await self._poller.read_now(meter_id, group)

    async def _refresh(self, unknown: UnknownMeterError) -> None:
        """Re-read the registry's targets once. UnknownMeterError if they conflict."""
        try:
            self._poller.set_targets(await asyncio.to_thread(self._targets))
        except TargetError as problem:
            raise UnknownMeterError(f"{unknown}; the registry's targets: {problem}") from None

    @contextlib.asynccontextmanager
    async def meter_link(self, address: MeterAddress) -> AsyncIterator[MeterLink]:
        """Commissioning's link to a Modbus meter through the poller, so a technician's
        session holds the line and the meter like a poll does and never talks over one.

        Raises:
            MeterLinkError: the meter has no usable target, or the line is held elsewhere
                or cannot be opened.
        """
        async with contextlib.AsyncExitStack() as stack:
            try:
                try:
                    link = await stack.enter_async_context(
                        self._poller.meter_link(address.meter_id)
                    )
                except UnknownMeterError as exc:
                    await self._refresh(exc)
                    link = await stack.enter_async_context(
                        self._poller.meter_link(address.meter_id)
                    )
            except (UnknownMeterError, ChannelBusyError, PollFailure) as exc:
                raise MeterLinkError(f"meter {address.serial}: {exc}") from None
            yield link


class System:
    """The head-end, vending services and API, started and stopped as one unit.

    ``async with System(settings, broker) as system:`` returns once the API listens and
    the MQTT workers are connected; ``system.base_url`` is where the API answers.
    """

    def __init__(
        self,
        settings: Settings,
        broker: BrokerEndpoint,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """``clock`` is "now" for reading validation (a simulated fleet's clock in the
        demo); by default a reading is judged against the time it was received."""
        self.settings = settings
        self.broker = broker
        # Checked before anything starts: a bad policy setting stops the start, named.
        balance_settings = engine_settings(settings)
        self.engine = make_engine(settings.effective_database_url)
        self.session_factory = make_session_factory(self.engine)
        self.audit = AuditLog()
        self.kek = load_key_encryption_key(settings)
        self.keystore = KeyStore(self.kek)
        self.security_module = SoftwareSecurityModule(
            self.keystore, make_read_only_session_factory(self.engine)
        )
        self.scheme = TopicScheme(prefix=settings.mqtt_topic_prefix)
        self.ingestor = Ingestor(self.session_factory, self.scheme, clock=clock)
        instance = settings.headend_instance
        self.ingest_worker = MqttIngestWorker(
            broker.host,
            broker.port,
            scheme=self.scheme,
            ingest=self.ingestor.ingest,
            client_id=f"{instance}-ingest",
            mqtt_v5=broker.supports_v5,
            share_group=settings.headend_share_group if broker.supports_v5 else None,
        )
        self.command_queue = CommandQueue(self.session_factory, audit=self.audit)
        self.command_dispatcher = CommandDispatcher(
            self.command_queue,
            broker.host,
            broker.port,
            scheme=self.scheme,
            instance=instance,
            mqtt_v5=broker.supports_v5,
        )
        self.poller = ModbusPoller(
            self.session_factory,
            self.ingestor,
            [],
            worker_id=f"{instance}-{socket.gethostname()}-{os.getpid()}",
        )
        # Modbus meters' commands go through the poller, which owns their lines.
        self.modbus_commands = ModbusCommandWorker(
            self.command_queue, self.poller, instance=instance
        )
        self.command_queue.set_notify(self._wake_command_workers)
        self._poller_stop = asyncio.Event()
        now = clock or (lambda: datetime.now(UTC))
        self.balance_engine = BalanceEngine(
            self.session_factory,
            source=_consumption_stream,
            commands=self.command_queue,
            audit=self.audit,
            settings=balance_settings,
            clock=now,
        )
        # Same clock as the engine: retries are timed against the rows' own times.
        self.notification_dispatcher = NotificationDispatcher(
            self.session_factory,
            notification_adapters(settings),
            worker_id=f"{instance}-{socket.gethostname()}-{os.getpid()}",
            settings=DispatchSettings(
                max_attempts=settings.notification_max_attempts,
                backoff_s=settings.notification_backoff_seconds,
            ),
            clock=now,
        )
        modbus_access = FreshTargetsReader(self.poller, self._poll_targets)
        app = create_app(
            self.session_factory,
            security_module=self.security_module,
            ingest_stats=lambda: self.ingestor.stats,
            command_queue=self.command_queue,
            counter=CounterConfig(
                utility_name=settings.utility_name, timezone=settings.utility_timezone
            ),
            kek=self.kek,
            grading_policy=settings.grading_policy(),
            modbus_reader=modbus_access,
            modbus_links=modbus_access.meter_link,
            delivery_key=DeliveryKey.from_settings(settings),
            emergency_credit_minor=balance_settings.emergency_credit_minor,
        )
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=settings.api_host,
                port=settings.api_port,
                log_level="warning",
                lifespan="off",
            )
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def base_url(self) -> str:
        sockets = [s for server in self.server.servers for s in server.sockets]
        host, port = sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> System:
        await asyncio.to_thread(upgrade, self.engine)
        self._start("mqtt-ingest", self.ingest_worker.run())
        self._start("commands", self.command_dispatcher.run())
        self._start("modbus-commands", self.modbus_commands.run())
        self._start("modbus-targets", self._refresh_poll_targets())
        self._start("modbus-poll", self.poller.run(self._poller_stop))
        self._start("balance", self.balance_engine.run(interval_s=BALANCE_ROUND_S))
        self._start(
            "notifications", self.notification_dispatcher.run(interval_s=NOTIFICATION_ROUND_S)
        )
        self._start("api", self.server.serve())
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                while not self.server.started:
                    self._raise_if_stopped("api")
                    await asyncio.sleep(0.02)
                await self.ingest_worker.connected.wait()
                await self.command_dispatcher.connected.wait()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    def _wake_command_workers(self) -> None:
        self.command_dispatcher.wake()
        self.modbus_commands.wake()

    def _start(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        self._tasks[name] = asyncio.create_task(work, name=name)

    def _raise_if_stopped(self, name: str) -> None:
        task = self._tasks[name]
        if task.done():
            task.result()
            raise RuntimeError(f"{name} stopped while starting")

    async def _refresh_poll_targets(self) -> None:
        while True:
            try:
                targets = await asyncio.to_thread(self._poll_targets)
                self.poller.set_targets(targets)
            except Exception:
                log.exception("reading the Modbus poll targets failed; keeping the old ones")
            await asyncio.sleep(TARGET_REFRESH_S)

    def _poll_targets(self) -> list[PollTarget]:
        fields = [getattr(Meter, name) for name in REGISTRY_FIELDS]
        modbus = (MeterProtocol.MODBUS_TCP.value, MeterProtocol.MODBUS_RTU.value)
        with self.session_factory() as session:
            rows = (
                session.execute(
                    select(Meter.id.label("meter_id"), Meter.protocol, *fields).where(
                        Meter.protocol.in_(modbus)
                    )
                )
                .mappings()
                .all()
            )
        targets, problems = targets_from_registry([dict(row) for row in rows])
        for meter_id, problem in problems:
            log.warning("meter %s cannot be polled: %s", meter_id, problem)
        return targets

    async def wait_closed(self) -> None:
        """Block until the API server stops (Ctrl-C or ``stop()``)."""
        await self._tasks["api"]

    def stop(self) -> None:
        self.server.should_exit = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._poller_stop.set()
        for name, task in reversed(self._tasks.items()):
            if name not in ("api", "modbus-poll"):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5)
        self.engine.dispose()
