"""The FastAPI application: every package's routers under one app."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session, sessionmaker

import gridvend
from gridvend.audit import AuditLog
from gridvend.auth import Auth
from gridvend.auth import make_router as make_auth_router
from gridvend.key_loading import DeliveryKey, SecurityModuleKeyLoader
from headend.api import make_router as make_headend_router
from headend.commands import CommandQueue
from headend.commands.api import make_router as make_command_router
from headend.commissioning import LinkFactory, open_meter_link
from headend.events_api import make_router as make_events_router
from headend.ingest import IngestStats
from headend.interface import token_accepted
from headend.meter_link_mqtt import commissioning_link_factory
from headend.read_now_api import OnDemandReader
from headend.read_now_api import make_router as make_read_now_router
from vending.api import CounterConfig
from vending.api import install_error_handler as install_vending_error_handler
from vending.api import make_router as make_vending_router
from vending.balance.api import make_balance_router
from vending.channels import make_admin_router as make_channel_admin_router
from vending.channels import make_router as make_channel_router
from vending.grading import GradingPolicy
from vending.key_change_api import make_key_change_router
from vending.keystore import KeyEncryptionKey
from vending.management_api import make_management_router
from vending.reversals import token_known_accepted
from vending.security_module import SecurityModule


def create_app(
    session_factory: sessionmaker[Session],
    *,
    security_module: SecurityModule,
    ingest_stats: Callable[[], IngestStats | None] = lambda: None,
    command_queue: CommandQueue | None = None,
    counter: CounterConfig = CounterConfig(),
    kek: KeyEncryptionKey | None = None,
    grading_policy: GradingPolicy | None = None,
    modbus_reader: OnDemandReader | None = None,
    modbus_links: LinkFactory | None = None,
    delivery_key: DeliveryKey | None = None,
    emergency_credit_minor: int = 0,
) -> FastAPI:
    """The API; ``command_queue`` defaults to one on ``session_factory`` (no dispatcher:
    commands stay queued until a head-end worker runs one). Commissioning of MQTT meters
    goes through that queue. Without ``kek`` (the key that encrypts channel secrets) the
    payment-channel API is not mounted. ``grading_policy`` grades customers (default:
    ``vending.grading``'s thresholds). ``modbus_reader`` (the running Modbus poller) serves
    ``POST /api/meters/{id}/read-now``; without it that route answers 503.
    ``modbus_links`` opens commissioning's Modbus links (the running poller's, so a session
    holds the line; default: a connection of its own). Commissioning loads keys from
    ``delivery_key`` (the key meters are delivered with) to the registry's key; without it
    the load-keys step stays pending. ``emergency_credit_minor`` is what a central account
    may borrow on request (0: none)."""
    app = FastAPI(
        title="gridvend",
        version=gridvend.__version__,
        description="Prepaid smart-meter head-end and vending API.",
    )
    auth = Auth(session_factory)
    audit = AuditLog()
    app.include_router(make_auth_router(session_factory, auth, audit))
    queue = command_queue or CommandQueue(session_factory, audit=audit)
    app.include_router(
        make_headend_router(
            session_factory,
            ingest_stats,
            require=auth.require,
            audit=audit,
            # MQTT meters are commissioned through the command queue, Modbus ones through
            # the poller when one runs (it owns the lines).
            link_factory=commissioning_link_factory(queue, modbus=modbus_links or open_meter_link),
            key_loader=SecurityModuleKeyLoader(
                security_module, delivery_key, session_factory, audit
            ),
        )
    )
    app.include_router(make_command_router(session_factory, require=auth.require, queue=queue))
    app.include_router(make_events_router(session_factory, require=auth.require, audit=audit))
    app.include_router(
        make_read_now_router(session_factory, require=auth.require, reader=modbus_reader)
    )

    install_vending_error_handler(app)
    app.include_router(
        make_vending_router(
            session_factory,
            require=auth.require,
            require_later=auth.require_later,
            security_module=security_module,
            audit=audit,
            config=counter,
            grading_policy=grading_policy,
            token_acceptance=_token_accepted,
        )
    )
    for make_router in (make_key_change_router, make_management_router):
        app.include_router(
            make_router(
                session_factory, require=auth.require, security_module=security_module, audit=audit
            )
        )
    app.include_router(
        make_balance_router(
            session_factory,
            require=auth.require,
            audit=audit,
            emergency_credit_minor=emergency_credit_minor,
        )
    )

    if kek is not None:
        app.include_router(
            make_channel_router(
                session_factory,
                security_module=security_module,
                audit=audit,
                kek=kek,
                token_accepted=_token_accepted,
            )
        )
        app.include_router(
            make_channel_admin_router(session_factory, require=auth.require, kek=kek, audit=audit)
        )

    @app.get("/api/health", tags=["system"])
    def health() -> dict[str, str]:
        return {"status": "ok", "version": gridvend.__version__}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return _INDEX_PAGE

    return app


def _token_accepted(session: Session, meter_id: int, tid: int) -> bool:
    """Whether a token is known to be in the meter: recorded at the counter, or reported
    by the meter itself through the head-end."""
    return token_known_accepted(session, meter_id, tid) or token_accepted(session, meter_id, tid)


_INDEX_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gridvend</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 2em auto">
<h1>gridvend</h1>
<p>Prepaid smart-meter head-end and vending.</p>
<ul>
<li><a href="/api/meters">/api/meters</a>: registered meters</li>
<li><a href="/api/headend/stats">/api/headend/stats</a>: ingestion counters</li>
<li><a href="/api/events?alarms_only=true&amp;unacknowledged=true">/api/events</a>:
alarms nobody has acknowledged</li>
<li><a href="/api/headend/rejected-messages">/api/headend/rejected-messages</a>:
quarantined messages</li>
<li><a href="/docs">/docs</a>: the API, interactive</li>
</ul>
</body></html>
"""
