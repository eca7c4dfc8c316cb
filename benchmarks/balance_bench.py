"""Balance engine figures: intervals rated per second, and the latency from "balance
exhausted" to "relay open confirmed" on simulated central-mode meters.

1. Rating: N central accounts, each with a day of 15-minute intervals fed to
   ``BalanceEngine.run_once`` (the database and tariff are real; the intervals come from a
   list instead of the head-end's stream so only rating is timed).
2. Latency: the whole system (broker, head-end, command dispatcher, balance engine) with
   M simulated central-mode meters at x3600 that start with a tiny balance. For each meter
   the clock starts when its ledger balance first reaches zero or below (polled every
   20 ms) and stops when its disconnect command is confirmed by read-back. No grace period
   and no protected periods apply here: the figure is the machinery's own delay.

Usage: python benchmarks/balance_bench.py [--accounts 20] [--meters 40]
       [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.broker import provide_broker
from gridvend.db import (
    make_engine,
    make_read_only_session_factory,
    make_session_factory,
    upgrade,
)
from gridvend.demo_data import DEMO_TARIFF
from gridvend.runtime import System
from gridvend.settings import Settings
from headend.models import MeterLifecycle, PrepaidMode
from headend.registry import MeterRegistration, register_meter
from meter_sim.fleet import MqttFleet, describe_fleet
from meter_sim.model import PrepaidMode as SimPrepaidMode
from vending.accounts import (
    NewAccount,
    NewCustomer,
    add_customer,
    link_meter,
    open_account,
    save_tariff,
)
from vending.balance.engine import BalanceEngine, EngineSettings, balance_minor
from vending.balance.policy import DisconnectPolicy
from vending.counter import PaymentMethod, VendRequest, vend
from vending.keystore import KeyEncryptionKey, KeyStore
from vending.models import BalanceDecision
from vending.security_module import SoftwareSecurityModule

START = datetime(2026, 11, 17, 7, 0, tzinfo=UTC)  # Tuesday 09:00 in Johannesburg
ZONE = "Africa/Johannesburg"
ALWAYS = DisconnectPolicy(
    timezone=ZONE,
    friendly_from=datetime.min.time(),
    friendly_until=datetime.min.time(),
    no_disconnect_on_weekends=False,
    grace_after_exhaustion=timedelta(0),
    grace_after_conversion=timedelta(0),
)


@dataclass(frozen=True)
class Interval:
    offset: int
    meter_id: int
    quantity: str
    t_start: datetime
    t_end: datetime
    energy_kwh: Decimal
    quality: str = "measured"
    reason: str = ""


def _customers(
    factory: sessionmaker[Session], configs: list, top_up: str, security_module: object
) -> list[int]:
    opened = START - timedelta(days=1)
    with factory() as session, session.begin():
        save_tariff(session, DEMO_TARIFF, actor="bench", now=opened)
        meter_ids = []
        for config in configs:
            meter = register_meter(
                session,
                MeterRegistration(
                    serial=config.serial,
                    meter_number=config.meter_number,
                    prepaid_mode=PrepaidMode.CENTRAL,
                    lifecycle=MeterLifecycle.INSTALLED,
                ),
                now=opened,
            )
            customer = add_customer(session, NewCustomer(name=config.serial), opened)
            account = open_account(
                session, NewAccount(customer_id=customer.id, tariff_code="RES-STEP"), opened
            )
            link_meter(session, account.id, config.meter_number, actor="bench", now=opened)
            meter_ids.append(meter.id)
    for config in configs:
        with factory() as session, session.begin():
            vend(
                session,
                VendRequest(
                    config.meter_number,
                    Decimal(top_up),
                    PaymentMethod.CASH,
                    "counter",
                    f"bench-{config.serial}",
                    "bench",
                ),
                security_module=security_module,  # type: ignore[arg-type]
                audit=_NoAudit(),
                now=opened,
            )
    return meter_ids


class _NoAudit:
    def record(self, session: Session, **_: object) -> None:
        return None


class _NoCommands:
    def request(self, meter_id: int, name: str, params: object = None, **_: object) -> int:
        return 0


def rating(url: str, accounts: int) -> None:
    engine = make_engine(url)
    upgrade(engine)
    factory = make_session_factory(engine)
    sm = SoftwareSecurityModule(
        KeyStore(KeyEncryptionKey.generate()), make_read_only_session_factory(engine)
    )
    configs = describe_fleet(accounts, seed=5, prepaid_mode=SimPrepaidMode.CENTRAL)
    meter_ids = _customers(factory, configs, "1000.00", sm)
    records = [
        Interval(
            offset=n * len(meter_ids) + i + 1,
            meter_id=meter_id,
            quantity="energy_import_kwh",
            t_start=START + n * timedelta(minutes=15),
            t_end=START + (n + 1) * timedelta(minutes=15),
            energy_kwh=Decimal("0.125"),
        )
        for n in range(96)
        for i, meter_id in enumerate(meter_ids)
    ]
    source = lambda session, after, limit: [r for r in records if r.offset > after][:limit]  # noqa: E731
    balance = BalanceEngine(
        factory,
        source=source,
        commands=_NoCommands(),
        audit=_NoAudit(),
        settings=EngineSettings(policy=ALWAYS),
        clock=lambda: START + timedelta(days=1),
    )
    began, cpu = time.perf_counter(), time.process_time()
    rated = 0
    while rated < len(records):
        rated += balance.run_once().rated
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    print(
        f"rating: {rated} intervals of {accounts} accounts in {wall:.2f} s "
        f"({rated / wall:,.0f} intervals/s; {cpu / rated * 1e6:,.0f} us CPU each)"
    )
    engine.dispose()


async def latency(url: str, meters: int, data_dir: Path) -> None:
    wall_start = datetime.now(UTC)

    def clock() -> datetime:
        return START + (datetime.now(UTC) - wall_start) * 3600

    with provide_broker(None) as broker:
        settings = Settings(
            data_dir=data_dir,
            database_url=url,
            api_port=0,
            utility_timezone=ZONE,
            conversion_grace_days=0,
            disconnect_grace_minutes=0,
        )
        system = System(settings, broker, clock=clock)
        system.balance_engine._settings = EngineSettings(policy=ALWAYS)
        async with system:
            configs = describe_fleet(meters, seed=9, prepaid_mode=SimPrepaidMode.CENTRAL)
            await asyncio.to_thread(
                _customers, system.session_factory, configs, "0.50", system.security_module
            )
            reader = make_read_only_session_factory(system.engine)
            exhausted: dict[int, float] = {}
            confirmed: dict[int, float] = {}
            async with MqttFleet(
                broker.host,
                broker.port,
                configs,
                speed=3600,
                mqtt_v5=broker.supports_v5,
                start=START,
            ):
                deadline = time.perf_counter() + 120
                while len(confirmed) < meters and time.perf_counter() < deadline:
                    await asyncio.to_thread(_observe, reader, system, meters, exhausted, confirmed)
                    await asyncio.sleep(0.02)
    delays = sorted(confirmed[a] - exhausted[a] for a in confirmed if a in exhausted)
    if not delays:
        print("latency: no disconnect confirmed")
        return
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    print(
        f"exhausted -> relay open confirmed: {len(delays)} meters, "
        f"p50 {statistics.median(delays) * 1000:,.0f} ms, p99 {p99 * 1000:,.0f} ms, "
        f"max {delays[-1] * 1000:,.0f} ms"
    )


def _observe(
    reader: sessionmaker[Session],
    system: System,
    accounts: int,
    exhausted: dict[int, float],
    confirmed: dict[int, float],
) -> None:
    now = time.perf_counter()
    with reader() as session:
        account_ids = range(1, accounts + 1)
        for account_id in account_ids:
            if account_id not in exhausted and balance_minor(session, account_id) <= 0:
                exhausted[account_id] = now
        pending = [
            (d.account_id, d.command_id)
            for d in session.scalars(
                select(BalanceDecision).where(
                    BalanceDecision.action == "disconnect", BalanceDecision.command_id.is_not(None)
                )
            )
            if d.account_id not in confirmed
        ]
    for account_id, command_id in pending:
        if system.command_queue.status(command_id or 0).state.value == "confirmed":
            confirmed[account_id] = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--meters", type=int, default=40)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/rating.db"
        rating(url, args.accounts)
        url = args.database_url or f"sqlite:///{tmp}/latency.db"
        asyncio.run(latency(url, args.meters, Path(tmp)))


if __name__ == "__main__":
    main()
