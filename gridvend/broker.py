"""The MQTT broker for the demo and the tests: external, spawned Mosquitto, or embedded amqtt.

One helper decides, in this order: the broker URL from settings if there is one; else a
Mosquitto spawned on a free loopback port when the binary is installed (with
``max_queued_messages`` raised, because Mosquitto's default of 1000 silently drops QoS 1
messages to a slow subscriber); else the pure-Python amqtt broker in a child process
(MQTT 3.1.1 only: no shared subscriptions, no MQTT 5 properties).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

MOSQUITTO_CANDIDATES = (
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/opt/homebrew/sbin/mosquitto",
)


class BrokerError(RuntimeError):
    """No broker could be reached or started."""


@dataclass(frozen=True, slots=True)
class BrokerEndpoint:
    host: str
    port: int
    supports_v5: bool
    kind: str  # "external", "mosquitto" or "amqtt"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> BrokerEndpoint:
    """``mqtt://host[:port][?protocol=3.1.1]`` -> endpoint (MQTT 5 unless told otherwise)."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise BrokerError(f"broker URL must look like mqtt://host:port, got {url!r}")
    protocol = parse_qs(parts.query).get("protocol", ["5"])[0]
    if protocol not in ("5", "3.1.1"):
        raise BrokerError(f"unsupported MQTT protocol {protocol!r} in {url!r}: use 5 or 3.1.1")
    return BrokerEndpoint(parts.hostname, parts.port or 1883, protocol == "5", "external")


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((c for c in MOSQUITTO_CANDIDATES if os.access(c, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def provide_broker(
    url: str | None = None, *, embedded_only: bool = False
) -> Iterator[BrokerEndpoint]:
    """Yield a reachable broker; a spawned one is stopped when the block ends."""
    if url:
        endpoint = parse_mqtt_url(url)
        _wait_until_listening(endpoint.host, endpoint.port, None, timeout_s=5)
        yield endpoint
        return
    mosquitto = None if embedded_only else find_mosquitto()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gridvend-broker-") as work_dir:
        if mosquitto:
            command = [mosquitto, "-c", str(_write_mosquitto_config(Path(work_dir), port))]
            endpoint = BrokerEndpoint("127.0.0.1", port, True, "mosquitto")
        else:
            command = [sys.executable, "-m", "gridvend.embedded_broker", str(port)]
            endpoint = BrokerEndpoint("127.0.0.1", port, False, "amqtt")
        log_path = Path(work_dir) / "broker.log"
        with log_path.open("wb") as log:
            # Its own session keeps a terminal's Ctrl-C from killing the broker before the
            # clients have said goodbye; we stop it ourselves below (or the kernel does, if
            # this process dies: see _die_with_parent).
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        try:
            _wait_until_listening(endpoint.host, port, process, timeout_s=15, log_path=log_path)
            yield endpoint
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _die_with_parent() -> None:
    """In the child: ask Linux to send SIGTERM when the parent dies (no orphaned brokers)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def _write_mosquitto_config(work_dir: Path, port: int) -> Path:
    config = work_dir / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "max_queued_messages 100000\n"
        "max_inflight_messages 0\n"
        "set_tcp_nodelay true\n"
        "log_type error\n"
        "log_type warning\n"
    )
    return config


def _wait_until_listening(
    host: str,
    port: int,
    process: subprocess.Popen[bytes] | None,
    *,
    timeout_s: float,
    log_path: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and process.poll() is not None:
            log = log_path.read_text(errors="replace") if log_path else ""
            raise BrokerError(f"broker exited with code {process.returncode}: {log[-500:]}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerError(f"no MQTT broker answers on {host}:{port}") from None
            time.sleep(0.05)
