"""Broker helpers for the simulator's tests.

The session broker is the shared ``mqtt_broker`` fixture of ``tests/conftest.py``
(mosquitto, or the embedded amqtt broker: MQTT 3.1.1 only, where tests marked ``mqtt5``
are skipped). ``_mosquitto`` starts a private one on a chosen port, for tests that stop
and restart their broker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridvend.broker import BrokerEndpoint

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
)


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
def _mosquitto(binary: str, port: int | None = None) -> Iterator[BrokerEndpoint]:
    port = port or _free_port()
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
            yield BrokerEndpoint("127.0.0.1", port, supports_v5=True, kind="mosquitto")
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(autouse=True)
def _skip_mqtt5_without_v5(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("mqtt5") is None:
        return
    broker: BrokerEndpoint = request.getfixturevalue("mqtt_broker")
    if not broker.supports_v5:
        pytest.skip("needs an MQTT 5 broker (mosquitto)")
