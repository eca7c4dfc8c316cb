"""``gridvend balance ...``: checks of the central-balance ledger.

Mounted by the main CLI as ``app.add_typer(balance_cli.app, name="balance")``. Works on
the configured database (GRIDVEND_DATABASE_URL), migrated first; reads only.
"""

from __future__ import annotations

from decimal import Decimal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gridvend.db import make_engine, make_session_factory, upgrade
from gridvend.settings import Settings
from vending.balance.check import AccountCheck, check_all
from vending.money import Currency, MoneyError

app = typer.Typer(help="Central balance: ledger checks.", no_args_is_help=True)
console = Console(width=160)


@app.command("check")
def check(
    all_rows: bool = typer.Option(
        False, "--all", help="List every account, not only those that do not match."
    ),
) -> None:
    """Trace every central account's ledger to its causes: the balance (the ledger's sum)
    against payments matched to vends, consumption to rated intervals and emergency
    credit to what is outstanding. Exit 1 if any account does not match."""
    settings = Settings()
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    try:
        with make_session_factory(engine)() as session:
            results = list(check_all(session))
    finally:
        engine.dispose()
    bad = [r for r in results if not r.ok]
    shown = results if all_rows else bad
    if shown:
        console.print(_table(shown))
    for result in bad:
        for problem in result.problems:
            console.print(f"[red]{escape(result.account_number)}: {escape(problem)}[/red]")
    if bad:
        console.print(f"[red]{len(bad)} of {len(results)} central accounts do not match[/red]")
        raise typer.Exit(1)
    console.print(f"all {len(results)} central accounts match their ledgers")


def _table(results: list[AccountCheck]) -> Table:
    table = Table(title="Central balance check")
    table.add_column("account")
    for name in ("balance", "explained", "payments", "vends", "consumption", "rated"):
        table.add_column(name, justify="right")
    table.add_column("status")
    for r in results:
        table.add_row(
            r.account_number,
            *(
                _major(minor, r.currency)
                for minor in (
                    r.balance_minor,
                    r.explained_minor,
                    r.payments_minor,
                    r.vends_credited_minor,
                    r.consumption_minor,
                    r.rated_minor,
                )
            ),
            "ok" if r.ok else f"[red]{len(r.problems)} mismatch(es)[/red]",
        )
    return table


def _major(minor: int, currency: str) -> str:
    try:
        digits = Currency.of(currency).minor_digits
    except MoneyError:
        return str(minor)
    return f"{Decimal(minor).scaleb(-digits)} {currency}"
