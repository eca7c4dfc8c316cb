"""The vending service's one error type: a stable code for machines, a sentence for people."""

from __future__ import annotations


class VendingError(Exception):
    """Raised by vending services; nothing has been committed when it is raised.

    ``code`` is stable (clients switch on it); the message says what to do.
    """

    def __init__(self, code: str, message: str, **detail: object) -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail
