"""Why a poll failed, in words an operator can act on."""

from __future__ import annotations

import enum

__all__ = ["FailureReason", "PollFailure"]


class FailureReason(enum.StrEnum):
    TIMEOUT = "timeout"  # no reply within the timeout
    MODBUS_EXCEPTION = "modbus_exception"  # the meter answered with an exception code
    FRAME_ERROR = "frame_error"  # bytes came back but no valid frame (CRC, framing, wrong unit)
    CONNECTION_REFUSED = "connection_refused"  # the gateway refused the TCP connection
    CONNECT_FAILED = "connect_failed"  # TCP connect timed out, serial port could not open
    CONNECTION_LOST = "connection_lost"  # the link dropped during the poll
    BAD_REPLY = "bad_reply"  # a well-formed reply that does not decode (length, value)
    CIRCUIT_OPEN = "circuit_open"  # skipped: the meter's breaker is open
    METER_BUSY = "meter_busy"  # skipped: another worker holds the meter's lock
    DEADLINE = "deadline"  # the interval ended before the poll could succeed
    STORE_FAILED = "store_failed"  # read, but the database refused the readings


# Exception codes that say the request itself is wrong: retrying cannot help.
_PERMANENT_EXCEPTION_CODES = frozenset({1, 2, 3})


class PollFailure(Exception):
    """A failed request or poll; ``exception_code`` is set for Modbus exceptions."""

    def __init__(
        self, reason: FailureReason, detail: str = "", exception_code: int | None = None
    ) -> None:
        super().__init__(reason, detail, exception_code)
        self.reason = reason
        self.detail = detail
        self.exception_code = exception_code

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}" if self.detail else self.reason.value

    @property
    def retryable(self) -> bool:
        if self.reason is FailureReason.MODBUS_EXCEPTION:
            return self.exception_code not in _PERMANENT_EXCEPTION_CODES
        return self.reason not in (
            FailureReason.BAD_REPLY,
            FailureReason.CIRCUIT_OPEN,
            FailureReason.METER_BUSY,
            FailureReason.DEADLINE,
            FailureReason.STORE_FAILED,
        )
