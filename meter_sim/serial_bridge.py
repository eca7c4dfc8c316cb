"""A virtual serial cable: two pseudo-terminals whose bytes are copied both ways.

Modbus RTU is tested through a real serial line as pyserial sees it (termios, raw mode,
file descriptors), without hardware. One ``os.openpty()`` pair is not enough: its master
side has no path another program can open. So the bridge opens two pairs and copies
bytes between the two masters; each end's slave path (``/dev/pts/N``) is a serial port.
With ``socat`` installed, :func:`serial_pair` can use it instead (``use_socat=True``).

A pty has no baud-rate timing: bytes arrive as fast as the bridge copies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import tty
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

__all__ = ["SerialPair", "serial_pair"]


@dataclass(frozen=True, slots=True)
class SerialPair:
    """The two ends of the virtual cable: open either path as a serial port."""

    server_port: str
    client_port: str


class _Pump:
    """Copies bytes from one pty master to another without blocking the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, source: int, sink: int) -> None:
        self._loop = loop
        self._source = source
        self._sink = sink
        self._pending = bytearray()
        loop.add_reader(source, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._source, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # EIO: no slave side open at the moment; the next open makes it readable again.
            return
        if not data:
            return
        had_pending = bool(self._pending)
        self._pending += data
        if not had_pending:
            self._flush()

    def _flush(self) -> None:
        try:
            written = os.write(self._sink, self._pending)
        except (BlockingIOError, InterruptedError):
            written = 0
        except OSError:
            # The far side is gone: drop what cannot be delivered, as a cut cable would.
            self._pending.clear()
            written = 0
        del self._pending[:written]
        if self._pending:
            self._loop.add_writer(self._sink, self._flush)
        else:
            self._loop.remove_writer(self._sink)

    def close(self) -> None:
        self._loop.remove_reader(self._source)
        self._loop.remove_writer(self._sink)


@asynccontextmanager
async def _python_bridge() -> AsyncIterator[SerialPair]:
    loop = asyncio.get_running_loop()
    master_a, slave_a = os.openpty()
    master_b, slave_b = os.openpty()
    fds = (master_a, slave_a, master_b, slave_b)
    try:
        for fd in fds:
            tty.setraw(fd)
        os.set_blocking(master_a, False)
        os.set_blocking(master_b, False)
        pumps = (_Pump(loop, master_a, master_b), _Pump(loop, master_b, master_a))
        try:
            # The slave fds stay open here so the masters never see EIO between opens.
            yield SerialPair(os.ttyname(slave_a), os.ttyname(slave_b))
        finally:
            for pump in pumps:
                pump.close()
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


@asynccontextmanager
async def _socat_bridge(socat: str) -> AsyncIterator[SerialPair]:
    with tempfile.TemporaryDirectory(prefix="gridvend-pty-") as tmp:
        server_port = os.path.join(tmp, "server")
        client_port = os.path.join(tmp, "client")
        process = await asyncio.create_subprocess_exec(
            socat,
            f"pty,raw,echo=0,link={server_port}",
            f"pty,raw,echo=0,link={client_port}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            # socat creates the links right after start; poll briefly for both.
            for _ in range(200):
                if os.path.exists(server_port) and os.path.exists(client_port):
                    break
                if process.returncode is not None:
                    raise OSError(f"socat exited with {process.returncode}")
                await asyncio.sleep(0.01)
            else:
                raise OSError("socat did not create its ptys within 2 s")
            yield SerialPair(server_port, client_port)
        finally:
            if process.returncode is None:
                process.terminate()
                await process.wait()


@asynccontextmanager
async def serial_pair(*, use_socat: bool = False) -> AsyncIterator[SerialPair]:
    """A virtual serial cable for the duration of the context.

    With ``use_socat=True`` and ``socat`` on PATH, socat links the two ptys (a bit
    faster); otherwise an asyncio bridge in this process does, so the event loop must
    keep running while the ports are used.

    Raises:
        OSError: the ptys cannot be created, or socat fails to start.
    """
    socat = shutil.which("socat") if use_socat else None
    bridge = _socat_bridge(socat) if socat else _python_bridge()
    async with bridge as pair:
        yield pair
