"""``gridvend channel``: create a channel, and a reference client that behaves like a bank.

``simulate`` signs every request, looks the meter up before "taking the money", sends
purchases concurrently, retries a time-out or a 5xx with the same reference (a new
nonce each time), asks for the status when retries run out, confirms each completed
purchase (re-sending the advice until it is acknowledged) and prints a summary.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from vending.channels.signing import signed_headers

app = typer.Typer(help="Bank and mobile-money channels.", no_args_is_help=True)
console = Console()

RETRYABLE_STATUS = frozenset({500, 502, 503, 504})


class ChannelClient:
    """Signs and sends channel API requests over an ``httpx.AsyncClient``."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        key_id: str,
        secret: str,
        *,
        clock: Callable[[], float] = time.time,
        new_nonce: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        self.http = http
        self.key_id = key_id
        self.secret = secret
        self.clock = clock
        self.new_nonce = new_nonce

    def headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        return signed_headers(
            self.key_id, self.secret, method, path, int(self.clock()), self.new_nonce(), body
        )

    async def send(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> httpx.Response:
        """One signed request; ``path`` includes the query string, if any."""
        headers = {**self.headers(method, path, body), "Content-Type": content_type}
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        return await self.http.request(method, path, content=body, headers=headers, **extra)

    async def send_json(self, method: str, path: str, document: Any) -> httpx.Response:
        return await self.send(method, path, json.dumps(document).encode())

    async def purchase(
        self, order: dict[str, Any], *, attempts: int = 4, timeout: float = 10.0
    ) -> PurchaseOutcome:
        """Buy with retries on time-outs and 5xx (same reference), then ask the status."""
        body = json.dumps(order).encode()
        outcome = PurchaseOutcome(reference=str(order["reference"]))
        for _ in range(attempts):
            outcome.attempts += 1
            try:
                response = await self.send("POST", "/channel/v1/purchases", body, timeout=timeout)
            except httpx.TransportError:
                outcome.timeouts += 1
                continue
            if response.status_code in RETRYABLE_STATUS:
                outcome.timeouts += 1
                continue
            outcome.status = response.status_code
            outcome.body = response.content
            return outcome
        status = await self.send("GET", f"/channel/v1/purchases/{outcome.reference}")
        outcome.status = None
        outcome.unknown_status = status.json().get("status") if status.is_success else None
        return outcome

    async def advise(self, reference: str, kind: str, *, attempts: int = 10) -> dict[str, Any]:
        """Send a confirm or reverse advice until it is acknowledged."""
        path = f"/channel/v1/purchases/{reference}/{kind}"
        for attempt in range(attempts):
            try:
                response = await self.send("POST", path, b"{}")
            except httpx.TransportError:
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
                continue
            if response.status_code == 200:
                answer: dict[str, Any] = response.json()
                return answer
            if response.status_code not in RETRYABLE_STATUS:
                raise RuntimeError(f"advice refused: {response.text}")
            await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
        raise RuntimeError(f"advice {kind} for {reference} never acknowledged")


@dataclass
class PurchaseOutcome:
    reference: str
    attempts: int = 0
    timeouts: int = 0
    status: int | None = None
    body: bytes = b""
    unknown_status: str | None = None

    @property
    def code(self) -> str:
        if self.status is None:
            return f"outcome_unknown({self.unknown_status})"
        if self.status == 200:
            return "completed"
        try:
            return str(json.loads(self.body).get("code"))
        except ValueError:
            return f"http_{self.status}"


@dataclass
class SimulationReport:
    purchases: int = 0
    elapsed_s: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    timeouts: int = 0
    duplicates_sent: int = 0
    duplicates_identical: int = 0
    tokens: set[str] = field(default_factory=set)
    confirmed: int = 0

    def table(self) -> Table:
        table = Table(title="channel simulation")
        table.add_column("measure")
        table.add_column("value", justify="right")
        rate = self.purchases / self.elapsed_s if self.elapsed_s else 0.0
        rows: list[tuple[str, str]] = [
            ("purchases", str(self.purchases)),
            ("purchase requests sent", str(self.requests)),
            ("time-outs / 5xx retried", str(self.timeouts)),
            ("duplicates sent", str(self.duplicates_sent)),
            ("duplicates answered byte-for-byte", str(self.duplicates_identical)),
            ("distinct tokens", str(len(self.tokens))),
            ("confirmed", str(self.confirmed)),
            ("elapsed s", f"{self.elapsed_s:.2f}"),
            ("purchases / s", f"{rate:.1f}"),
        ]
        rows += [(f"outcome: {code}", str(n)) for code, n in sorted(self.outcomes.items())]
        for name, value in rows:
            table.add_row(name, value)
        return table


async def simulate_purchases(
    client: ChannelClient,
    meters: list[str],
    *,
    count: int,
    concurrency: int,
    amount: str,
    currency: str,
    reference_prefix: str,
    duplicate_rate: float,
    seed: int,
    timeout: float,
    lookup: bool = True,
    confirm: bool = True,
    attempts: int = 4,
) -> SimulationReport:
    """Run ``count`` purchases over ``meters``, ``concurrency`` at a time; a fraction
    ``duplicate_rate`` of them is sent twice at once, as a confused bank would."""
    rng = random.Random(seed)
    report = SimulationReport(purchases=count)
    gate = asyncio.Semaphore(concurrency)

    async def one(n: int) -> None:
        meter = meters[n % len(meters)]
        order = {
            "reference": f"{reference_prefix}{n:08d}",
            "amount": amount,
            "currency": currency,
            "meter_number": meter,
        }
        twice = rng.random() < duplicate_rate
        async with gate:
            if lookup:
                await client.send_json("POST", "/channel/v1/lookup", {"meter_number": meter})
            copies = 2 if twice else 1
            outcomes = await asyncio.gather(
                *(client.purchase(order, attempts=attempts, timeout=timeout) for _ in range(copies))
            )
            first = outcomes[0]
            report.outcomes[first.code] += 1
            for outcome in outcomes:
                report.requests += outcome.attempts
                report.timeouts += outcome.timeouts
            if twice:
                report.duplicates_sent += 1
                if outcomes[0].body == outcomes[1].body and outcomes[0].status is not None:
                    report.duplicates_identical += 1
            if first.status == 200:
                token = json.loads(first.body).get("token")
                if token:
                    report.tokens.add(token)
                if confirm:
                    await client.advise(first.reference, "confirm")
                    report.confirmed += 1

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(count)))
    report.elapsed_s = time.perf_counter() - started
    return report


@app.command("simulate")
def simulate(
    meter: list[str] = typer.Option(..., "--meter", "-m", help="Meter number(s) to top up."),
    url: str = typer.Option("http://127.0.0.1:8000", help="The gridvend API."),
    key_id: str = typer.Option(..., envvar="GRIDVEND_CHANNEL_KEY_ID"),
    secret: str = typer.Option(..., envvar="GRIDVEND_CHANNEL_SECRET", help="Shown at creation."),
    count: int = typer.Option(100, min=1, help="Purchases to make."),
    concurrency: int = typer.Option(16, min=1, help="Purchases in flight at once."),
    amount: str = typer.Option("50.00", help="Amount of each purchase (major units)."),
    currency: str = typer.Option("ZAR"),
    duplicate_rate: float = typer.Option(0.1, min=0.0, max=1.0, help="Share sent twice."),
    timeout: float = typer.Option(10.0, help="Seconds before a request counts as timed out."),
    reference_prefix: str = typer.Option("", help="Default: SIM-<time>-."),
    seed: int = typer.Option(1),
) -> None:
    """Behave like a bank: signed, concurrent purchases with retries; print a summary."""
    prefix = reference_prefix or f"SIM-{datetime.now(UTC):%Y%m%d%H%M%S}-"

    async def run() -> SimulationReport:
        limits = httpx.Limits(max_connections=concurrency * 2)
        async with httpx.AsyncClient(base_url=url, limits=limits) as http:
            return await simulate_purchases(
                ChannelClient(http, key_id, secret),
                meter,
                count=count,
                concurrency=concurrency,
                amount=amount,
                currency=currency,
                reference_prefix=prefix,
                duplicate_rate=duplicate_rate,
                seed=seed,
                timeout=timeout,
            )

    console.print(asyncio.run(run()).table())


@app.command("create")
def create(
    code: str = typer.Argument(..., help="Short name, e.g. acme-bank."),
    name: str = typer.Option(..., help="The channel's full name."),
    currency: str = typer.Option("ZAR"),
    mobile_money: bool = typer.Option(False, help="Record its vends as mobile money."),
    min_amount: str = typer.Option("5"),
    max_amount: str = typer.Option("5000"),
    daily_limit: str = typer.Option("10000000"),
    rate_limit_per_minute: int = typer.Option(6000, min=1),
    reversal_window_minutes: int = typer.Option(1440, min=0),
) -> None:
    """Create a channel in the configured database; prints its key id and secret once."""
    from gridvend.audit import AuditLog
    from gridvend.db import make_engine, make_session_factory
    from gridvend.runtime import load_key_encryption_key
    from gridvend.settings import Settings
    from vending.channels.service import ChannelError, NewChannelTerms, create_channel
    from vending.counter import PaymentMethod

    settings = Settings()
    engine = make_engine(settings.effective_database_url)
    terms = NewChannelTerms(
        code=code,
        name=name,
        currency=currency,
        payment_method=PaymentMethod.MOBILE_MONEY if mobile_money else PaymentMethod.BANK,
        min_amount=Decimal(min_amount),
        max_amount=Decimal(max_amount),
        daily_limit=Decimal(daily_limit),
        rate_limit_per_minute=rate_limit_per_minute,
        reversal_window=timedelta(minutes=reversal_window_minutes),
    )
    try:
        with make_session_factory(engine)() as session, session.begin():
            channel, secret = create_channel(
                session,
                terms,
                kek=load_key_encryption_key(settings),
                audit=AuditLog(),
                actor=os.environ.get("USER", "cli"),
                now=datetime.now(UTC),
            )
            key_id = channel.key_id
    except ChannelError as exc:
        console.print(f"[red]{exc.code}[/red]: {exc}")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    console.print(f"channel {code} created")
    console.print(f"key id: {key_id}")
    console.print(f"secret: {secret}   (shown once: store it now)")
    fingerprint = hashlib.sha256(secret.encode()).hexdigest()[:12]
    console.print(f"secret fingerprint: {fingerprint}")
