"""A Mosquitto of a test's own, on a port the test chooses, so it can be stopped and
started again (the session broker of tests/conftest.py must stay up for everyone)."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridvend.broker import BrokerEndpoint, find_mosquitto, provide_broker


@contextlib.contextmanager
def own_mosquitto(port: int) -> Iterator[BrokerEndpoint]:
    """Run Mosquitto on ``port`` for the block; skip the test where it is not installed."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("needs mosquitto to restart a broker")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "mosquitto.conf"
        config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        process = subprocess.Popen(
            [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            with provide_broker(f"mqtt://127.0.0.1:{port}") as endpoint:
                yield endpoint
        finally:
            process.terminate()
            process.wait(5)
