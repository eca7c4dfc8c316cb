"""Runs the system in one event loop: migrations, head-end MQTT workers and the API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

import uvicorn

from gridvend.app import create_app
from gridvend.audit import AuditLog
from gridvend.broker import BrokerEndpoint
from gridvend.db import (
    make_engine,
    make_read_only_session_factory,
    make_session_factory,
    upgrade,
)
from gridvend.settings import Settings
from headend.connectors.mqtt import MqttIngestWorker
from headend.ingest import Ingestor
from protocols.mqtt import TopicScheme
from vending.keystore import KeyEncryptionKey, KeyStore
from vending.security_module import SoftwareSecurityModule

log = logging.getLogger(__name__)


def load_key_encryption_key(settings: Settings) -> KeyEncryptionKey:
    """The KEK from GRIDVEND_KEY_ENCRYPTION_KEY, else from its file (created if absent)."""
    if settings.key_encryption_key is not None:
        return KeyEncryptionKey.from_base64(settings.key_encryption_key.get_secret_value())
    path = settings.key_encryption_key_file or settings.data_dir / "kek.b64"
    return KeyEncryptionKey.load_or_create(path)


class System:
    """The head-end and API, started and stopped as one unit.

    ``async with System(settings, broker) as system:`` returns once the API listens and
    the MQTT subscriber is connected; ``system.base_url`` is where the API answers.
    """

    def __init__(self, settings: Settings, broker: BrokerEndpoint) -> None:
        self.settings = settings
        self.broker = broker
        self.engine = make_engine(settings.effective_database_url)
        self.session_factory = make_session_factory(self.engine)
        self.audit = AuditLog()
        self.keystore = KeyStore(load_key_encryption_key(settings))
        self.security_module = SoftwareSecurityModule(
            self.keystore, make_read_only_session_factory(self.engine)
        )
        self.scheme = TopicScheme(prefix=settings.mqtt_topic_prefix)
        self.ingestor = Ingestor(self.session_factory, self.scheme)
        self.worker = MqttIngestWorker(
            broker.host,
            broker.port,
            scheme=self.scheme,
            ingest=self.ingestor.ingest,
            client_id=f"{settings.headend_instance}-{settings.api_port}",
            mqtt_v5=broker.supports_v5,
            share_group=settings.headend_share_group if broker.supports_v5 else None,
        )
        app = create_app(self.session_factory, ingest_stats=lambda: self.ingestor.stats)
        config = uvicorn.Config(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_level="warning",
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def base_url(self) -> str:
        sockets = [s for server in self.server.servers for s in server.sockets]
        host, port = sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> System:
        await asyncio.to_thread(upgrade, self.engine)
        self._tasks.append(asyncio.create_task(self.worker.run(), name="mqtt-ingest"))
        self._tasks.append(asyncio.create_task(self.server.serve(), name="api"))
        while not self.server.started:
            if self._tasks[1].done():
                self._tasks[1].result()
                raise RuntimeError("the API server stopped while starting")
            await asyncio.sleep(0.02)
        await asyncio.wait_for(self.worker.connected.wait(), timeout=15)
        return self

    async def wait_closed(self) -> None:
        """Block until the API server stops (Ctrl-C or ``stop()``)."""
        await self._tasks[1]

    def stop(self) -> None:
        self.server.should_exit = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        for task in reversed(self._tasks):
            if task.get_name() != "api":
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5)
        self.engine.dispose()
