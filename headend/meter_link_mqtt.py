"""Commissioning over MQTT: a ``MeterLink`` made of head-end commands, and the link factory
that picks Modbus or MQTT by the meter's protocol.

An MQTT meter is never talked to directly here. Each link call asks the persisted command
queue (``headend.commands.CommandQueue``) for a command (``read_now``, ``connect``,
``disconnect``, ``set_clock``, ``push_token``) and waits until the command is final. The
dispatcher running in the head-end (``gridvend.runtime.System``) sends it, retries it and
confirms it by read-back, so commissioning gets the same guarantees as any other command
and leaves the same trail (``meter_commands``, audit entries).

The MQTT command set has no nameplate read. What the meter does report about itself is the
``meter_id`` of every reply, which the dispatcher checks against the registry's ``comm_id``
(a reply from another meter is rejected as ``meter_mismatch``). ``read_nameplate`` therefore
reports that id as the serial when the registry's comm id is the serial (the default), and
the meter number, phases and model only when the meter's ``read_now`` result carries them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from headend.commands import CommandError, CommandQueue, CommandState, CommandStatus
from headend.commissioning import LinkFactory, MeterAddress, open_meter_link
from headend.meter_link import MeterLink, MeterLinkError, Nameplate, NotSupported
from headend.models import MeterProtocol
from protocols.quantities import Quantity

# How long one link call (one command, sent, retried and confirmed) may take. The queue's
# default policy allows three 10 s reply windows plus backoff, which fits in this.
DEFAULT_STEP_TIMEOUT_S = 60.0
# How often the command's status is read while waiting (one indexed row read).
DEFAULT_POLL_INTERVAL_S = 0.1
# Extra wait after the command's own time to live, so that the dispatcher (which expires
# it) can say how far it got before the link gives up on its own.
_EXPIRY_GRACE_S = 2.0
REQUESTED_BY = "commissioning"

# The simulated meter's ``token_status`` names, as MeterLink.enter_token spells them.
_TOKEN_ANSWERS = {
    "accept": "accept",
    "1st_kct": "key_change_1st",
    "used": "used",
    "old": "old",
    "key_expired": "key_expired",
    "error": "error",
    "reject": "reject",
    "not_supported": "not_supported",
}


class MqttMeterLink:
    """A ``MeterLink`` for an MQTT meter, through the head-end's command queue.

    Every call requests one command and polls its status every ``poll_interval_s`` until
    it is final; a ``failed`` or ``expired`` command raises ``MeterLinkError`` with the
    queue's reason (for a refusal, the meter's own), except a token the meter refuses,
    which ``enter_token`` returns as the meter's answer (``used``, ``reject`` ...). Each
    command gets ``timeout_s`` as its time to live, so the queue stops retrying it when
    the link stops waiting.

    ``address`` is the meter as the registry has it; ``queue`` must be served by a running
    ``CommandDispatcher`` (in this process or another one on the same database), otherwise
    every call ends with a ``MeterLinkError`` after ``timeout_s``.
    """

    def __init__(
        self,
        queue: CommandQueue,
        address: MeterAddress,
        *,
        timeout_s: float = DEFAULT_STEP_TIMEOUT_S,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        requested_by: str = REQUESTED_BY,
    ) -> None:
        if timeout_s <= 0 or poll_interval_s <= 0:
            raise ValueError("timeout_s and poll_interval_s must be positive")
        self._queue = queue
        self._address = address
        self._timeout_s = timeout_s
        self._poll_interval_s = poll_interval_s
        self._requested_by = requested_by

    # --- one command, start to finish -------------------------------------------------

    async def _run(self, name: str, params: Mapping[str, object] | None = None) -> CommandStatus:
        """Request ``name``, wait until it is final and return it if confirmed.

        Raises:
            MeterLinkError: the queue refuses the request, the command fails or expires,
                or it is not final within the timeout (no dispatcher serving the queue).
        """
        status = await self._command(name, params)
        if status.state is not CommandState.CONFIRMED:
            raise self._not_confirmed(status)
        return status

    def _not_confirmed(self, status: CommandStatus) -> MeterLinkError:
        serial, name = self._address.serial, status.name
        if status.final:
            reason = status.last_error or "no reason given"
            if not reason.startswith(status.state.value):  # "expired at ...: sent but ..."
                reason = f"{status.state.value}: {reason}"
            return MeterLinkError(f"meter {serial}: {name} (command {status.id}) {reason}")
        return MeterLinkError(
            f"meter {serial}: no answer to {name} within {self._timeout_s:g} s "
            f"(command {status.id} is still {status.state.value}; is the head-end's "
            "command dispatcher running?)"
        )

    async def _command(self, name: str, params: Mapping[str, object] | None) -> CommandStatus:
        """Request ``name`` and return its status once final, or when time is up.

        Raises:
            MeterLinkError: the queue refuses the request (e.g. the meter is not MQTT).
        """
        try:
            command_id = await asyncio.to_thread(
                self._queue.request,
                self._address.meter_id,
                name,
                params,
                requested_by=self._requested_by,
                reason=f"commissioning: {name}",
                ttl=timedelta(seconds=self._timeout_s),
            )
        except CommandError as exc:
            raise MeterLinkError(
                f"meter {self._address.serial}: {name} not requested: {exc}"
            ) from None
        return await self._wait(command_id)

    async def _wait(self, command_id: int) -> CommandStatus:
        """The command's status once final, or its last status when time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s + _EXPIRY_GRACE_S
        while True:
            status = await asyncio.to_thread(self._queue.status, command_id)
            if status.final or loop.time() >= deadline:
                return status
            await asyncio.sleep(self._poll_interval_s)

    async def _read_now(self) -> dict[str, Any]:
        return dict((await self._run("read_now")).result or {})

    # --- MeterLink ---------------------------------------------------------------------

    async def read_nameplate(self) -> Nameplate:
        result = await self._read_now()
        address = self._address
        # The dispatcher accepted the reply only because its meter_id is this comm id.
        reported = result.get("serial") or (
            address.comm_id if address.comm_id == address.serial else None
        )
        phases = result.get("phases")
        number = result.get("meter_number")
        model = result.get("model")
        return Nameplate(
            serial=str(reported) if reported else None,
            meter_number=str(number) if number else None,
            phases=phases if isinstance(phases, int) and not isinstance(phases, bool) else None,
            model=str(model) if model else None,
        )

    async def read_register(self, quantity: Quantity) -> Decimal:
        result = await self._read_now()
        raw = result.get(f"value.{quantity.value}")
        if raw is None:
            raise NotSupported(
                f"meter {self._address.serial} reports no {quantity.value} in read_now"
            )
        try:
            return Decimal(str(raw))
        except InvalidOperation:
            raise MeterLinkError(
                f"meter {self._address.serial} sent an invalid {quantity.value}: {raw!r}"
            ) from None

    async def set_relay(self, closed: bool) -> None:
        # Confirmed by the queue's read-back, not by the meter's ok alone.
        await self._run("connect" if closed else "disconnect")

    async def read_relay(self) -> bool:
        value = (await self._read_now()).get("relay_closed")
        if not isinstance(value, bool):
            raise NotSupported(f"meter {self._address.serial} reports no relay state")
        return value

    async def read_clock(self) -> datetime:
        raw = (await self._read_now()).get("meter_time")
        if raw is None:
            raise NotSupported(f"meter {self._address.serial} reports no clock")
        try:
            moment = datetime.fromisoformat(str(raw))
        except ValueError:
            raise MeterLinkError(
                f"meter {self._address.serial} sent an invalid meter_time: {raw!r}"
            ) from None
        if moment.tzinfo is None:
            raise MeterLinkError(
                f"meter {self._address.serial} sent meter_time without an offset: {raw!r}"
            )
        return moment

    async def set_clock(self, now: datetime) -> None:
        if now.tzinfo is None:
            raise MeterLinkError("set_clock needs an aware time")
        await self._run("set_clock", {"time": now.isoformat()})

    async def enter_token(self, digits: str) -> str:
        status = await self._command("push_token", {"token": digits})
        # A refused token is an answer, not a link failure: the meter's reply says which.
        answer = self._token_answer(status.result or {})
        if answer is not None and status.state in (CommandState.CONFIRMED, CommandState.FAILED):
            return answer
        if status.state is CommandState.CONFIRMED:
            return "accept"
        raise self._not_confirmed(status)

    @staticmethod
    def _token_answer(result: Mapping[str, Any]) -> str | None:
        raw = result.get("token_status")
        if raw is None:
            return None
        return _TOKEN_ANSWERS.get(str(raw), str(raw))


def commissioning_link_factory(
    queue: CommandQueue,
    *,
    timeout_s: float = DEFAULT_STEP_TIMEOUT_S,
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    modbus: LinkFactory = open_meter_link,
) -> LinkFactory:
    """A commissioning ``LinkFactory``: MQTT meters through ``queue`` (``MqttMeterLink``),
    every other meter through ``modbus`` (by default Modbus TCP/RTU from the registry)."""

    def factory(address: MeterAddress) -> AbstractAsyncContextManager[MeterLink]:
        if address.protocol == MeterProtocol.MQTT.value:
            return _mqtt_link(queue, address, timeout_s, poll_interval_s)
        return modbus(address)

    return factory


@asynccontextmanager
async def _mqtt_link(
    queue: CommandQueue, address: MeterAddress, timeout_s: float, poll_interval_s: float
) -> AsyncIterator[MeterLink]:
    # Nothing to open: the dispatcher holds the broker connection.
    yield MqttMeterLink(queue, address, timeout_s=timeout_s, poll_interval_s=poll_interval_s)
