"""What the head-end needs from an audit log (the composition root supplies one)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from sqlalchemy.orm import Session


class AuditSink(Protocol):
    def record(
        self,
        session: Session,
        *,
        actor: str,
        action: str,
        subject: str,
        detail: Mapping[str, Any] | None = None,
    ) -> object:
        """Append an entry in the caller's transaction."""
        ...
