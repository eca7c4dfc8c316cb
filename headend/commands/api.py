"""REST API of the command queue: request a command for a meter and follow it.

    POST /api/meters/{meter_id}/commands   queue a command (202, the command as stored)
    GET  /api/commands/{command_id}        one command
    GET  /api/commands?state=failed        every meter's commands, newest first
    GET  /api/meters/{meter_id}/commands   a meter's commands, newest first

Who may request what: relay and power-limit commands and time sync need admin,
supervisor or technician; a token push and a read may also come from a clerk. Every
error answers ``{"detail": {"code": ..., "message": ...}}``.

No `from __future__ import annotations` here: FastAPI resolves the route signatures.
"""

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session, sessionmaker

from headend.commands.models import CommandState, CommandStep
from headend.commands.service import CommandQueue
from headend.commands.spec import CommandError
from protocols.mqtt import CommandName

READERS = ("admin", "supervisor", "clerk", "technician")
ENGINEERS = ("admin", "supervisor", "technician")
# Roles allowed to request each command.
ALLOWED_ROLES: dict[CommandName, tuple[str, ...]] = {
    CommandName.CONNECT: ENGINEERS,
    CommandName.DISCONNECT: ENGINEERS,
    CommandName.SET_POWER_LIMIT: ENGINEERS,
    CommandName.SET_CLOCK: ENGINEERS,
    CommandName.PUSH_TOKEN: READERS,
    CommandName.READ_NOW: READERS,
}
MAX_TTL_S = 7 * 24 * 3600

_STATUS_FOR_CODE = {
    "meter_not_found": status.HTTP_404_NOT_FOUND,
    "command_not_found": status.HTTP_404_NOT_FOUND,
    "unknown_command": status.HTTP_422_UNPROCESSABLE_CONTENT,
    "invalid_params": status.HTTP_422_UNPROCESSABLE_CONTENT,
    "invalid_request": status.HTTP_422_UNPROCESSABLE_CONTENT,
    "meter_decommissioned": status.HTTP_409_CONFLICT,
    "unsupported_transport": status.HTTP_409_CONFLICT,
    "idempotency_key_reused": status.HTTP_409_CONFLICT,
}


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(description="connect, disconnect, set_power_limit, ...")]
    params: dict[str, str | int | bool] = Field(default_factory=dict)
    reason: Annotated[str, Field(max_length=1000)] = ""
    idempotency_key: Annotated[str | None, Field(min_length=1, max_length=128)] = None
    ttl_s: Annotated[
        int | None, Field(ge=1, le=MAX_TTL_S, description="Seconds before it expires.")
    ] = None


class CommandOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    meter_id: int
    name: str
    params: dict[str, str | int | bool]
    state: CommandState
    step: CommandStep
    attempts: int
    readbacks: int
    requested_by: str
    reason: str
    idempotency_key: str | None
    requested_at: datetime
    expires_at: datetime
    first_sent_at: datetime | None
    last_sent_at: datetime | None
    acknowledged_at: datetime | None
    finished_at: datetime | None
    last_error: str | None
    confirmation: str | None
    result: dict[str, Any] | None


def _error(exc: CommandError) -> HTTPException:
    code = _STATUS_FOR_CODE.get(exc.code, status.HTTP_400_BAD_REQUEST)
    return HTTPException(code, detail={"code": exc.code, "message": str(exc)})


def make_router(
    session_factory: sessionmaker[Session],
    *,
    require: Callable[..., Any],
    queue: CommandQueue,
) -> APIRouter:
    """The command routes; ``require(*roles)`` is the caller-check dependency to use.

    ``session_factory`` must be the one ``queue`` was built with (the routes read and
    write through ``queue`` only).
    """
    del session_factory  # every read and write goes through the queue
    router = APIRouter(prefix="/api", tags=["commands"])

    @router.post(
        "/meters/{meter_id}/commands",
        response_model=CommandOut,
        status_code=status.HTTP_202_ACCEPTED,
    )
    def request_command(
        meter_id: int,
        body: CommandRequest,
        response: Response,
        principal: Any = require(*READERS),
    ) -> Any:
        """Queue a command; it is sent, retried and confirmed in the background."""
        try:
            name = CommandName(body.name)
        except ValueError:
            known = ", ".join(n.value for n in CommandName)
            raise _error(
                CommandError("unknown_command", f"unknown command {body.name!r}; one of: {known}")
            ) from None
        role = str(getattr(principal, "role", ""))
        if role not in ALLOWED_ROLES[name]:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail={
                    "code": "forbidden_role",
                    "message": f"role {role} may not request {name.value}; "
                    f"allowed: {', '.join(ALLOWED_ROLES[name])}",
                },
            )
        try:
            command_id = queue.request(
                meter_id,
                name,
                body.params,
                requested_by=str(principal.username),
                reason=body.reason,
                idempotency_key=body.idempotency_key,
                ttl=None if body.ttl_s is None else timedelta(seconds=body.ttl_s),
            )
            command = queue.status(command_id)
        except CommandError as exc:
            raise _error(exc) from None
        response.headers["Location"] = f"/api/commands/{command_id}"
        return command

    @router.get("/commands", response_model=list[CommandOut])
    def list_recent_commands(
        _: Any = require(*READERS),
        state: Annotated[list[CommandState] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> Any:
        """Commands of every meter, newest first; ``?state=failed&state=expired`` to filter."""
        return queue.list_recent(states=state, limit=limit)

    @router.get("/commands/{command_id}", response_model=CommandOut)
    def read_command(command_id: int, _: Any = require(*READERS)) -> Any:
        try:
            return queue.status(command_id)
        except CommandError as exc:
            raise _error(exc) from None

    @router.get("/meters/{meter_id}/commands", response_model=list[CommandOut])
    def list_commands(
        meter_id: int,
        _: Any = require(*READERS),
        state: Annotated[list[CommandState] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> Any:
        try:
            return queue.list_for_meter(meter_id, states=state, limit=limit)
        except CommandError as exc:
            raise _error(exc) from None

    return router
