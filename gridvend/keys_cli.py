"""``gridvend keys``: load, list, retire vending keys and rotate the key-encryption key.

The vending key is read from a file or standard input, never from the command line
(arguments land in shell history and process listings), and it is never printed.
The running servers cache derived decoder keys for up to five minutes, so a retired key
stops issuing tokens everywhere within that time; after ``rotate-kek`` the servers must
be restarted with the new key-encryption key.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from gridvend.audit import AuditLog
from gridvend.db import make_engine, make_session_factory, upgrade
from gridvend.runtime import load_key_encryption_key
from gridvend.settings import Settings
from protocols.sts import BaseDate, Dkga, EncryptionAlgorithm, KeyType, StsError
from vending.key_admin import (
    add_vending_key,
    parse_vending_key,
    retire_vending_key,
    rotate_key_encryption_key,
)
from vending.keystore import KeyEncryptionKey, KeyStore, KeyStoreError

app = typer.Typer(help="The vending key store: load, list, retire keys; rotate the KEK.")
console = Console()


@contextmanager
def _store() -> Iterator[tuple[Session, KeyStore, KeyEncryptionKey]]:
    """A transaction on the configured database and the key store under its KEK; a
    KeyStoreError or StsError prints its code and exits 1 with nothing changed."""
    settings = Settings()
    engine = make_engine(settings.effective_database_url)
    try:
        upgrade(engine)
        kek = load_key_encryption_key(settings)
        with make_session_factory(engine)() as session, session.begin():
            yield session, KeyStore(kek), kek
    except KeyStoreError as exc:
        console.print(f"[red]{exc.code}[/red]: {exc}", highlight=False)
        raise typer.Exit(1) from None
    except StsError as exc:
        console.print(f"[red]invalid_key_config[/red]: {exc}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


def _actor() -> str:
    return f"cli:{os.environ.get('USER') or getpass.getuser()}"


def _read_secret(path: str) -> str:
    if path == "-":
        if sys.stdin.isatty():
            # Typed by hand: no echo, so the key is not left on the screen either.
            return getpass.getpass("vending key (hex): ")
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as exc:
        console.print(f"[red]unreadable_key_file[/red]: {exc.strerror}: {path}", highlight=False)
        raise typer.Exit(1) from None


@app.command("add")
def keys_add(
    supply_group_code: str = typer.Option(..., "--sgc", help="Supply group code (6 digits)."),
    key_revision: int = typer.Option(..., "--krn", help="Key revision number (1..9)."),
    key_file: str = typer.Option(
        ...,
        "--key-file",
        help="File holding the vending key in hex (16 or 40 digits); '-' reads stdin.",
    ),
    key_type: str = typer.Option("2", "--key-type", help="0 DITK, 1 DDTK, 2 DUTK, 3 DCTK."),
    base_date: int = typer.Option(2014, "--base-date", help="TID base year: 1993, 2014, 2035."),
    algorithm: str = typer.Option("07", "--algorithm", help="EA07 (STA), EA09 (DEA), EA11."),
    dkga: str = typer.Option("04", "--dkga", help="Decoder key generation: DKGA02 or DKGA04."),
    key_expiry_number: int = typer.Option(255, "--ken", help="Key expiry number (255: never)."),
) -> None:
    """Load a vending key (encrypted at rest; audited as key.add)."""
    with _store() as (session, keystore, _):
        info = add_vending_key(
            session,
            keystore,
            vending_key=parse_vending_key(_read_secret(key_file)),
            supply_group_code=supply_group_code,
            key_revision=key_revision,
            key_type=KeyType.parse(key_type),
            base_date=BaseDate.parse(base_date),
            algorithm=EncryptionAlgorithm.parse(algorithm),
            dkga=Dkga.parse(dkga),
            key_expiry_number=key_expiry_number,
            audit=AuditLog(),
            actor=_actor(),
            now=datetime.now(UTC),
        )
    console.print(
        f"vending key {info.supply_group_code}/{info.key_revision} stored under KEK {info.kek_id}",
        highlight=False,
    )


@app.command("list")
def keys_list() -> None:
    """Every stored key's identity and state (never the key itself)."""
    with _store() as (session, keystore, _):
        keys = keystore.list_keys(session)
    table = Table("SGC", "KRN", "key type", "base date", "KEN", "algorithm", "DKGA", "state")
    for key in keys:
        state = "active" if key.retired_at is None else f"retired {key.retired_at:%Y-%m-%d}"
        table.add_row(
            key.supply_group_code,
            str(key.key_revision),
            key.key_type.name,
            str(int(key.base_date)),
            str(key.key_expiry_number),
            f"EA{key.algorithm.value}",
            f"DKGA{key.dkga.value}",
            state,
        )
    console.print(table)
    console.print(f"{len(keys)} keys", highlight=False)


@app.command("retire")
def keys_retire(
    supply_group_code: str = typer.Option(..., "--sgc", help="Supply group code (6 digits)."),
    key_revision: int = typer.Option(..., "--krn", help="Key revision number."),
    reason: str = typer.Option(..., "--reason", help="Why (kept in the audit log)."),
) -> None:
    """Retire a key: no token is issued with it again (audited as key.retire)."""
    with _store() as (session, keystore, _):
        retire_vending_key(
            session,
            keystore,
            supply_group_code=supply_group_code,
            key_revision=key_revision,
            audit=AuditLog(),
            actor=_actor(),
            now=datetime.now(UTC),
            reason=reason,
        )
    console.print(f"vending key {supply_group_code}/{key_revision} retired", highlight=False)


@app.command("rotate-kek")
def keys_rotate_kek(
    new_kek_file: Path = typer.Option(
        ...,
        "--new-kek-file",
        help="File with the new KEK (base64 of 32 bytes); created (mode 0600) when absent.",
    ),
) -> None:
    """Re-encrypt every vending key under a new key-encryption key, in one transaction
    (audited as key.rotate_kek). Then point GRIDVEND_KEY_ENCRYPTION_KEY(_FILE) at the
    new key and restart the servers."""
    with _store() as (session, keystore, kek):
        new_kek = KeyEncryptionKey.load_or_create(new_kek_file)
        count = rotate_key_encryption_key(
            session, keystore, new_kek, old_kek_id=kek.kek_id, audit=AuditLog(), actor=_actor()
        )
    console.print(
        f"{count} vending keys re-encrypted from KEK {kek.kek_id} to {new_kek.kek_id}; "
        f"now set GRIDVEND_KEY_ENCRYPTION_KEY_FILE={new_kek_file} and restart the servers",
        highlight=False,
    )
