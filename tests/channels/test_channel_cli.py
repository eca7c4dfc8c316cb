"""`gridvend channel create` and the nonce sweep."""

from __future__ import annotations

import base64
import secrets
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from gridvend.channel_cli import app
from tests.channels.harness import NOW
from vending.channels.models import Channel, ChannelNonce
from vending.channels.service import channel_secret, forget_expired_nonces, record_nonce
from vending.keystore import KeyEncryptionKey


def test_create_prints_the_secret_once_and_stores_it_encrypted(
    database_url: str, session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    kek_b64 = base64.b64encode(secrets.token_bytes(32)).decode()
    monkeypatch.setenv("GRIDVEND_DATABASE_URL", database_url)
    monkeypatch.setenv("GRIDVEND_KEY_ENCRYPTION_KEY", kek_b64)
    result = CliRunner().invoke(
        app, ["create", "mobile-co", "--name", "Mobile Co", "--mobile-money"]
    )
    assert result.exit_code == 0, result.output
    printed = dict(
        line.split(": ", 1)
        for line in result.output.splitlines()
        if line.startswith(("key id", "secret:"))
    )
    with session_factory() as session:
        channel = session.scalars(select(Channel)).one()
    assert printed["key id"] == channel.key_id
    assert printed["secret"].split()[0] == channel_secret(
        channel, KeyEncryptionKey.from_base64(kek_b64)
    )
    assert channel.payment_method == "mobile_money"
    again = CliRunner().invoke(app, ["create", "mobile-co", "--name", "Mobile Co"])
    assert again.exit_code == 1
    assert "channel_exists" in again.output


def test_nonces_are_forgotten_once_their_window_has_passed(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session, session.begin():
        session.add(
            Channel(
                code="c1",
                name="c1",
                payment_method="bank",
                key_id="gvk_1",
                kek_id="k",
                secret_nonce=b"",
                secret_ciphertext=b"",
                currency="ZAR",
                min_amount_minor=1,
                max_amount_minor=2,
                daily_limit_minor=3,
                rate_limit_per_minute=1,
                reversal_window_s=0,
                active=True,
                created_at=NOW,
                created_by="t",
            )
        )
        session.flush()
        channel_id = session.scalars(select(Channel.id)).one()
        record_nonce(session, channel_id, "n" * 16, NOW)
        record_nonce(session, channel_id, "m" * 16, NOW + timedelta(minutes=6))
    with session_factory() as session, session.begin():
        assert forget_expired_nonces(session, NOW + timedelta(minutes=11)) == 1
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(ChannelNonce)) == 1
