"""``gridvend meter ...``: the technician's registry commands (import, commission, list, health).

Mounted by the main CLI as ``app.add_typer(meter_cli.app, name="meter")``. Every command
works on the configured database (GRIDVEND_DATABASE_URL), migrated first.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditLog
from gridvend.db import (
    make_engine,
    make_read_only_session_factory,
    make_session_factory,
    upgrade,
)
from gridvend.key_loading import DeliveryKey, SecurityModuleKeyLoader
from gridvend.settings import Settings
from headend.bulk_import import ImportFileError, ImportReport, import_meters
from headend.commands import CommandQueue
from headend.commissioning import (
    Commissioning,
    CommissioningError,
    RunStatus,
    RunView,
    StepResult,
    StepStatus,
)
from headend.health import read_success_rates, silent_meters
from headend.meter_link_mqtt import commissioning_link_factory
from headend.models import Meter, MeterLifecycle
from headend.registry import RegistryError, find_meter
from vending.keystore import KeyStore
from vending.security_module import SoftwareSecurityModule

app = typer.Typer(help="Meters: bulk import, commissioning, listing, health.", no_args_is_help=True)
console = Console()

_STATUS_STYLE = {
    StepStatus.PASSED: "green",
    StepStatus.FAILED: "red",
    StepStatus.SKIPPED: "yellow",
    StepStatus.PENDING: "cyan",
}


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name in some containers
        return "cli"


@contextmanager
def _database() -> Iterator[sessionmaker[Session]]:
    settings = Settings()
    engine = make_engine(settings.effective_database_url)
    try:
        upgrade(engine)
        yield make_session_factory(engine)
    finally:
        engine.dispose()


@app.command("import")
def import_csv(
    csv_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV, header first."),
    dry_run: bool = typer.Option(False, help="Validate every row, write nothing."),
    actor: str = typer.Option(_default_actor(), help="Recorded as who registered the meters."),
) -> None:
    """Register meters from a CSV file; rows with errors are listed and not imported.

    Exit status: 0 all rows imported, 1 some rows refused, 2 the file is unusable.
    """
    data = csv_file.read_bytes()
    with (
        _database() as session_factory,
        Progress(
            TextColumn("[bold]rows"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("import", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            report = import_meters(
                session_factory,
                data,
                actor=actor,
                audit=AuditLog(),
                source=csv_file.name,
                dry_run=dry_run,
                progress=advance,
            )
        except ImportFileError as exc:
            progress.stop()
            console.print(f"[red]{escape(str(exc))}[/red]")
            raise typer.Exit(2) from None
    _print_import_report(report)
    if report.errors:
        raise typer.Exit(1)


def _print_import_report(report: ImportReport) -> None:
    verb = "would be imported" if report.dry_run else "imported"
    console.print(
        f"{report.total_rows} rows: [green]{len(report.imported)} {verb}[/green], "
        f"[red]{len(report.errors)} refused[/red]"
    )
    if not report.errors:
        return
    table = Table("row", "serial", "reason", title="Rows not imported")
    for error in report.errors:
        table.add_row(str(error.row), escape(error.serial), escape("\n".join(error.reasons)))
    console.print(table)


@app.command("commission")
def commission(
    meter: str = typer.Argument(..., help="Meter id, serial, comm id or meter number."),
    technician: str = typer.Option(_default_actor(), help="Who runs the commissioning."),
) -> None:
    """Run the commissioning workflow on an installed meter, step by step.

    Modbus meters are talked to directly. MQTT meters get their steps as commands through
    the command queue: a running `gridvend serve` (on the same database) sends them, or
    each step fails after 60 s. Keys are loaded from GRIDVEND_COMMISSIONING_DELIVERY_KEY
    to the registry's key with the server's vending keys (unset: the step stays pending).

    Exit status: 0 commissioned, 1 a step failed (the meter stays installed), 2 refused.
    """
    settings = Settings()
    with _database() as session_factory:
        try:
            with session_factory() as session:
                meter_id = find_meter(session, meter).id
            service = _commissioning(settings, session_factory)
            view = asyncio.run(_commission(service, meter_id, technician))
        except (RegistryError, CommissioningError) as exc:
            console.print(f"[red]{escape(str(exc))}[/red]")
            raise typer.Exit(2) from None
    if view.status is RunStatus.PASSED:
        console.print(f"[green]meter {escape(meter)} is commissioned (run {view.run_id})[/green]")
        return
    console.print(
        f"[red]commissioning failed at {view.failed_step}: {escape(view.failure_reason)}[/red]"
    )
    raise typer.Exit(1)


def _commissioning(settings: Settings, session_factory: sessionmaker[Session]) -> Commissioning:
    """Commissioning as `gridvend serve` runs it: MQTT meters through the command queue,
    keys from the delivery key with this server's vending keys."""
    audit = AuditLog()
    delivery = DeliveryKey.from_settings(settings)
    key_loader = None
    if delivery is None:
        # Not even the key-encryption key is needed then (nor created, as a server would).
        console.print(
            "[yellow]keys will not be loaded: GRIDVEND_COMMISSIONING_DELIVERY_KEY "
            "(SGC/TI/KRN of the key meters are delivered with) is not set[/yellow]"
        )
    else:
        from gridvend.runtime import load_key_encryption_key

        engine = session_factory.kw["bind"]
        security_module = SoftwareSecurityModule(
            KeyStore(load_key_encryption_key(settings)), make_read_only_session_factory(engine)
        )
        key_loader = SecurityModuleKeyLoader(security_module, delivery, session_factory, audit)
    return Commissioning(
        session_factory,
        audit=audit,
        link_factory=commissioning_link_factory(CommandQueue(session_factory, audit=audit)),
        key_loader=key_loader,
    )


async def _commission(service: Commissioning, meter_id: int, technician: str) -> RunView:
    run_id = service.start(meter_id, technician=technician)
    view = service.get_run(run_id)
    while view.next_step is not None:
        console.print(f"… {view.next_step.value.replace('_', ' ')}")
        view = await service.run_next_step(run_id)
        _print_step(view.steps[-1])
    return view


def _print_step(step: StepResult) -> None:
    style = _STATUS_STYLE[step.status]
    console.print(
        f"  [{style}]{step.status.value:>7}[/{style}] {step.step.value}: {escape(step.message)}"
    )


@app.command("list")
def list_meters(
    lifecycle: MeterLifecycle | None = typer.Option(None, help="Only meters in this state."),
    limit: int = typer.Option(100, min=1, max=10000),
) -> None:
    """List registered meters."""
    with _database() as session_factory, session_factory() as session:
        query = select(Meter).order_by(Meter.id).limit(limit)
        if lifecycle is not None:
            query = query.where(Meter.lifecycle == lifecycle.value)
        table = Table("id", "serial", "meter number", "protocol", "lifecycle", "last seen")
        for m in session.scalars(query):
            table.add_row(
                str(m.id),
                escape(m.serial),
                m.meter_number or "",
                m.protocol,
                m.lifecycle,
                m.last_seen_at.isoformat(timespec="seconds") if m.last_seen_at else "never",
            )
    console.print(table)


@app.command("health")
def health(
    interval_s: int = typer.Option(900, min=1, max=86400, help="Reading interval, seconds."),
    intervals: int = typer.Option(4, min=1, help="Silent after this many missed intervals."),
    days: int = typer.Option(1, min=1, max=31, help="Days of read success to show."),
) -> None:
    """Meters not heard from for N intervals, and read success per meter and day."""
    now = datetime.now(UTC)
    interval = timedelta(seconds=interval_s)
    with _database() as session_factory, session_factory() as session:
        silent = silent_meters(session, now=now, interval=interval, intervals=intervals)
        rates = read_success_rates(
            session,
            since=now.date() - timedelta(days=days - 1),
            until=now.date(),
            now=now,
            interval=interval,
        )
    table = Table("serial", "lifecycle", "last seen", "intervals missed", title="Silent meters")
    for m in silent:
        table.add_row(
            escape(m.serial),
            m.lifecycle,
            m.last_seen_at.isoformat(timespec="seconds") if m.last_seen_at else "never",
            str(m.intervals_missed) if m.intervals_missed is not None else "-",
        )
    console.print(table)
    rate_table = Table("day", "serial", "reads", "ok", "rate", "source", title="Read success")
    for r in rates:
        rate_table.add_row(
            r.day.isoformat(),
            escape(r.serial),
            str(r.attempts),
            str(r.successes),
            f"{r.rate * 100:.2f} %" if r.rate is not None else "-",
            r.source,
        )
    console.print(rate_table)
