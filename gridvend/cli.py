"""The ``gridvend`` command."""

from __future__ import annotations

import asyncio
import logging

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from gridvend.audit import AuditLog, verify_chain
from gridvend.auth import AuthError, NewUser, Role, create_user
from gridvend.balance_cli import app as balance_app
from gridvend.balance_settings import BalanceSettingsError, engine_settings
from gridvend.broker import BrokerError, provide_broker
from gridvend.channel_cli import app as channel_app
from gridvend.collector import tune_for_service
from gridvend.db import make_engine, make_session_factory, upgrade
from gridvend.keys_cli import app as keys_app
from gridvend.meter_cli import app as meter_app
from gridvend.runtime import System
from gridvend.settings import Settings
from gridvend.sim_cli import app as sim_app
from gridvend.sts_cli import app as sts_app

app = typer.Typer(
    help="gridvend: prepaid smart-meter head-end, STS vending and meter simulator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
user_app = typer.Typer(help="Users and their roles.", no_args_is_help=True)
app.add_typer(user_app, name="user")
audit_app = typer.Typer(help="The append-only audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(sts_app, name="sts", help="STS tokens by hand: keys, encode, decode, key change.")
app.add_typer(meter_app, name="meter")
app.add_typer(sim_app, name="sim")
app.add_typer(channel_app, name="channel")
app.add_typer(keys_app, name="keys", no_args_is_help=True)
app.add_typer(balance_app, name="balance")

console = Console()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration to the configured database (GRIDVEND_DATABASE_URL)."""
    settings = Settings()
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    engine.dispose()
    console.print(f"database at {_redacted(settings.effective_database_url)} is up to date")


@user_app.command("create")
def user_create(
    username: str,
    role: Role = typer.Option(..., help="admin, supervisor, clerk, technician or channel."),
    full_name: str = typer.Option("", help="Shown on receipts and reports."),
    password: str = typer.Option(
        ..., prompt=True, hide_input=True, confirmation_prompt=True, help="At least 10 characters."
    ),
) -> None:
    """Create a user (the first admin is created this way)."""
    settings = Settings()
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    try:
        new_user = NewUser(username=username, role=role, full_name=full_name, password=password)
        with make_session_factory(engine)() as session, session.begin():
            create_user(session, new_user)
            AuditLog().record(
                session,
                actor="cli",
                action="user.create",
                subject=f"user:{username}",
                detail={"role": role.value},
            )
    except (ValidationError, AuthError) as exc:
        console.print(escape(str(exc)), style="red")
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
    console.print(f"user {username} ({role.value}) created")


@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute the audit log's hash chain; exit 1 if any entry was changed or removed."""
    settings = Settings()
    engine = make_engine(settings.effective_database_url)
    with make_session_factory(engine)() as session:
        report = verify_chain(session)
    engine.dispose()
    if report.intact:
        console.print(f"audit log intact: {report.entries} entries")
        return
    console.print(
        f"[red]audit log broken at entry {report.first_broken_id}: {report.problem}[/red]"
    )
    raise typer.Exit(1)


@app.command()
def demo(
    meters: int = typer.Option(5, min=1, max=10_000, help="How many simulated MQTT meters."),
    speed: float = typer.Option(60.0, min=1.0, help="Simulated seconds per real second."),
    seed: int = typer.Option(1, help="Seed of the simulated fleet (same seed, same meters)."),
    port: int = typer.Option(8000, min=0, max=65535, help="API port (0: any free port)."),
) -> None:
    """Run the whole system on embedded defaults: broker, SQLite, head-end, API, meters."""
    from gridvend.demo import run_demo

    settings = Settings(api_port=port, data_dir=Settings().data_dir / "demo")
    _run(run_demo(settings, meters=meters, speed=speed, seed=seed, announce=_plain))


@app.command()
def serve(
    host: str | None = typer.Option(None, help="API address (default GRIDVEND_API_HOST)."),
    port: int | None = typer.Option(None, help="API port (default GRIDVEND_API_PORT)."),
) -> None:
    """Run the API and the head-end workers on the configured database and broker."""
    overrides = {k: v for k, v in {"api_host": host, "api_port": port}.items() if v is not None}
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
        engine_settings(settings)  # refuse a bad policy before anything starts
    except (ValidationError, BalanceSettingsError) as exc:
        console.print(f"[red]settings: {escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    _run(_serve(settings))


async def _serve(settings: Settings) -> None:
    with provide_broker(settings.mqtt_url) as broker:
        async with System(settings, broker) as system:
            tune_for_service()
            console.print(f"gridvend serves on {system.base_url} (broker {broker.url})")
            await system.wait_closed()


def _plain(text: str) -> None:
    console.print(text, markup=False, highlight=False)


def _run(main: object) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(main)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        console.print("stopped")
    except BrokerError as exc:
        console.print(f"[red]broker: {exc}[/red]")
        raise typer.Exit(2) from None


def _redacted(url: str) -> str:
    """A database URL without its password, for printing."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"
