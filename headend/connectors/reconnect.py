"""Keep an MQTT session alive: reconnect with exponential backoff and jitter."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import aiomqtt

log = logging.getLogger(__name__)


async def run_reconnecting(
    run_connected: Callable[[], Awaitable[None]],
    connected: asyncio.Event,
    *,
    name: str,
    max_backoff_s: float,
) -> None:
    """Run ``run_connected`` until cancelled; after a broker failure clear ``connected``,
    wait 0.5 s doubling up to ``max_backoff_s`` (+-20 % jitter) and run it again."""
    backoff = 0.5
    while True:
        try:
            await run_connected()
        except aiomqtt.MqttError as exc:
            connected.clear()
            delay = min(backoff, max_backoff_s) * random.uniform(0.8, 1.2)
            log.warning("%s lost MQTT (%s); reconnecting in %.1f s", name, exc, delay)
            await asyncio.sleep(delay)
            backoff *= 2
        else:
            backoff = 0.5
