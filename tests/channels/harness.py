"""A channel in a real vending world, served in-process over ASGI, and a signed client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.channel_cli import ChannelClient
from tests.vending.world import VendingWorld, build_world
from vending.channels.api import make_router
from vending.channels.service import NewChannelTerms, TokenAccepted, create_channel
from vending.keystore import KeyEncryptionKey

NOW = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)


@dataclass
class Clock:
    """The server's and the client's clock, moved by hand."""

    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now

    def seconds(self) -> float:
        return self.now.timestamp()

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class ChannelWorld:
    world: VendingWorld
    kek: KeyEncryptionKey
    clock: Clock
    key_id: str
    secret: str
    code: str
    accepted: set[tuple[int, int]] = field(default_factory=set)

    @property
    def session_factory(self) -> sessionmaker[Session]:
        return self.world.session_factory

    def token_accepted(self, _session: Session, meter_id: int, tid: int) -> bool:
        return (meter_id, tid) in self.accepted

    def app(self, token_accepted: TokenAccepted | None = None) -> FastAPI:
        app = FastAPI()
        app.include_router(
            make_router(
                self.session_factory,
                security_module=self.world.security_module,
                audit=self.world.audit,
                kek=self.kek,
                clock=self.clock,
                token_accepted=token_accepted or self.token_accepted,
            )
        )
        return app

    @asynccontextmanager
    async def client(self, app: Any = None) -> AsyncIterator[ChannelClient]:
        transport = httpx.ASGITransport(app=app or self.app())
        nonces = count()
        async with httpx.AsyncClient(transport=transport, base_url="http://gridvend") as http:
            yield ChannelClient(
                http,
                self.key_id,
                self.secret,
                clock=self.clock.seconds,
                new_nonce=lambda: f"nonce-{next(nonces):012d}-{id(http):x}",
            )

    def count(self, model: type) -> int:
        with self.session_factory() as session:
            return int(session.scalar(select(func.count()).select_from(model)) or 0)


def build_channel_world(session_factory: sessionmaker[Session], **terms: Any) -> ChannelWorld:
    world = build_world(session_factory)
    kek = KeyEncryptionKey.generate()
    settings: dict[str, Any] = {
        "code": "acme-bank",
        "name": "ACME Bank",
        "currency": "ZAR",
        "min_amount": Decimal("5"),
        "max_amount": Decimal("5000"),
        "rate_limit_per_minute": 1_000_000,
        **terms,
    }
    with session_factory() as session, session.begin():
        channel, secret = create_channel(
            session,
            NewChannelTerms(**settings),
            kek=kek,
            audit=world.audit,
            actor="test",
            now=NOW,
        )
        key_id = channel.key_id
    return ChannelWorld(world, kek, Clock(), key_id, secret, settings["code"])
