"""Commands to Modbus meters: the command queue's messages carried as register exchanges.

MQTT meters get a command message and answer with a reply; a Modbus meter only has
registers. This worker claims the queue's due messages for Modbus meters, performs each as
writes and reads on the meter (through the Modbus poller, which owns the connections and
keeps one request in flight per line and one exchange per meter), and hands the queue the
reply the meter would have sent over MQTT. So retries, read-back confirmation, expiry and
restart recovery are one state machine for both transports:

- a message that gets no answer (time-out, connection lost, the line held by another
  worker) gives no reply: the queue re-sends after the reply deadline, as for MQTT;
- a Modbus exception (the meter heard and refused) or a function the meter lacks gives an
  ``error`` reply with the reason;
- every answer carries the relay state and power limit read back from the meter, so a
  ``read_now`` read-back confirms a disconnect from the registers themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from headend.commands.machine import WireMessage
from headend.commands.service import MODBUS_PROTOCOLS, CommandQueue, InboundReply, Outbound
from headend.connectors.modbus_poll.failures import PollFailure
from headend.connectors.modbus_poll.poller import ChannelBusyError, ModbusPoller, UnknownMeterError
from headend.meter_link import MeterLinkError, MeterRefused, ModbusMeterLink, NotSupported
from protocols.mqtt import CommandName, CommandReply, ReplyStatus

log = logging.getLogger(__name__)

# Token answers that mean the meter took the token (a key change's first half is buffered).
_TOKEN_TAKEN = frozenset({"accept", "key_change_1st"})


class ModbusCommandWorker:
    """Claims and performs the command queue's messages for Modbus meters until cancelled."""

    def __init__(
        self,
        queue: CommandQueue,
        poller: ModbusPoller,
        *,
        instance: str,
        idle_s: float = 0.5,
        batch_size: int = 50,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``idle_s`` is how long to wait between looks at an empty queue (a request wakes
        the worker at once through :meth:`wake`)."""
        self._queue = queue
        self._poller = poller
        self._instance = f"{instance}-modbus"
        self._idle_s = idle_s
        self._batch_size = batch_size
        self._clock = clock
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Look at the queue now (callable from any thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wakeup.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            try:
                busy = await self.run_once()
            except Exception:
                log.exception("Modbus command round failed; trying again")
                busy = False
            if not busy:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._idle_s)

    async def run_once(self) -> bool:
        """Claim the due messages and perform them, follow-ups (read-backs) included.

        Returns whether there was anything to do.
        """
        outbound = await asyncio.to_thread(
            self._queue.claim_due,
            instance=self._instance,
            limit=self._batch_size,
            protocols=MODBUS_PROTOCOLS,
        )
        if not outbound:
            return False
        while outbound:
            # Meters on different lines are served at once; the poller serialises one line.
            answers = await asyncio.gather(*(self._perform(out) for out in outbound))
            replies = [reply for reply in answers if reply is not None]
            if not replies:
                break
            outbound = await asyncio.to_thread(self._queue.handle_replies, replies)
        return True

    async def _perform(self, out: Outbound) -> InboundReply | None:
        message = out.message
        meter_id = out.meter_id
        try:
            status, reason, result = await self._poller.with_meter_link(
                meter_id, lambda link: perform(link, message)
            )
        except (UnknownMeterError, ChannelBusyError, PollFailure) as exc:
            log.info("command %s: meter %s not reached now: %s", message.command_id, meter_id, exc)
            return None
        except MeterLinkError as exc:
            if not isinstance(exc, MeterRefused | NotSupported):
                log.info(
                    "command %s: no answer from meter %s: %s", message.command_id, meter_id, exc
                )
                return None
            status, reason, result = ReplyStatus.ERROR, str(exc), {}
        reply = CommandReply(
            id=message.wire_id,
            meter_id=out.comm_id,
            status=status,
            reason=reason,
            result=result,
            ts=self._clock(),
        )
        return InboundReply(
            topic=f"modbus/meters/{meter_id}/reply",
            payload=reply.to_bytes(),
            correlation_data=None,
            received_at=self._clock(),
        )


async def perform(
    link: ModbusMeterLink, message: WireMessage
) -> tuple[ReplyStatus, str | None, dict[str, str | int | bool]]:
    """Do what ``message`` asks on the meter; return the reply's status, reason and result
    (with the relay and power limit read back). Raises MeterLinkError as the link does."""
    params = message.params
    status, reason = ReplyStatus.OK, None
    result: dict[str, str | int | bool] = {}
    match message.name:
        case CommandName.CONNECT | CommandName.DISCONNECT:
            await link.set_relay(message.name is CommandName.CONNECT)
        case CommandName.SET_POWER_LIMIT:
            await link.set_power_limit(int(params["watts"]))
        case CommandName.PUSH_TOKEN:
            answer = await link.enter_token(str(params["token"]))
            result["token_status"] = answer
            if answer not in _TOKEN_TAKEN:
                status, reason = ReplyStatus.ERROR, f"token {answer}"
        case CommandName.SET_CLOCK:
            await link.set_clock(datetime.fromisoformat(str(params["time"])))
        case CommandName.READ_NOW:
            pass
    with contextlib.suppress(NotSupported):  # a meter without a relay: nothing to read back
        result["relay_closed"] = await link.read_relay()
    limit = await link.read_power_limit()
    if limit is not None:
        result["power_limit_w"] = limit
    return status, reason, result
