"""The ``gridvend`` command."""

from __future__ import annotations

import asyncio
import logging

import typer
from rich.console import Console

from gridvend.broker import BrokerError, provide_broker
from gridvend.db import make_engine, upgrade
from gridvend.runtime import System
from gridvend.settings import Settings

app = typer.Typer(
    help="gridvend: prepaid smart-meter head-end, STS vending and meter simulator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

console = Console()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration to the configured database (GRIDVEND_DATABASE_URL)."""
    settings = Settings()
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    engine.dispose()
    console.print(f"database at {_redacted(settings.effective_database_url)} is up to date")


@app.command()
def serve(
    host: str | None = typer.Option(None, help="API address (default GRIDVEND_API_HOST)."),
    port: int | None = typer.Option(None, help="API port (default GRIDVEND_API_PORT)."),
) -> None:
    """Run the API and the head-end workers on the configured database and broker."""
    overrides = {k: v for k, v in {"api_host": host, "api_port": port}.items() if v is not None}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    _run(_serve(settings))


async def _serve(settings: Settings) -> None:
    with provide_broker(settings.mqtt_url) as broker:
        async with System(settings, broker) as system:
            console.print(f"gridvend serves on {system.base_url} (broker {broker.url})")
            await system.wait_closed()


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
