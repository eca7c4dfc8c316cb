"""A real MQTT broker for the simulator's tests.

Mosquitto on a free loopback port when /usr/sbin/mosquitto exists (MQTT 5 and 3.1.1),
otherwise an in-process amqtt broker on its own thread (MQTT 3.1.1 only: tests marked
``mqtt5`` are skipped there).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
)


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    supports_v5: bool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"broker did not listen on port {port}")


@contextlib.contextmanager
def _mosquitto(binary: str) -> Iterator[BrokerAddress]:
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\n"
            "max_queued_messages 100000\npersistence false\n"
        )
        proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            _wait_listening(port)
            yield BrokerAddress("127.0.0.1", port, supports_v5=True)
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def _amqtt() -> Iterator[BrokerAddress]:
    from amqtt.broker import Broker

    port = _free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Broker] = {}

    async def start() -> None:
        broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                "plugins": {
                    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
                },
            }
        )
        await broker.start()
        holder["broker"] = broker
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        _wait_listening(port)
        yield BrokerAddress("127.0.0.1", port, supports_v5=False)
    finally:
        asyncio.run_coroutine_threadsafe(holder["broker"].shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[BrokerAddress]:
    """A running broker for the whole session."""
    if MOSQUITTO and not os.environ.get("GRIDVEND_TEST_AMQTT"):
        with _mosquitto(MOSQUITTO) as address:
            yield address
    else:
        with _amqtt() as address:
            yield address


@pytest.fixture(autouse=True)
def _skip_mqtt5_without_v5(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("mqtt5") is None:
        return
    broker: BrokerAddress = request.getfixturevalue("mqtt_broker")
    if not broker.supports_v5:
        pytest.skip("needs an MQTT 5 broker (mosquitto)")
