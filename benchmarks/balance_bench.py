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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import func, select
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
from headend.commands.models import MeterCommand
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
from vending.balance.engine import BalanceEngine, EngineSettings
from vending.balance.policy import DisconnectPolicy
from vending.counter import PaymentMethod, VendRequest, vend
from vending.keystore import KeyEncryptionKey, KeyStore
from vending.models import BalanceDecision, LedgerEntry
from vending.security_module import SoftwareSecurityModule

START = datetime(2026, 11, 17, 7, 0, tzinfo=UTC)  # Tuesday 09:00 in Johannesburg
ZONE = "Africa/Johannesburg"
SPEED = 3600
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
        return START + (datetime.now(UTC) - wall_start) * SPEED

    def wall(simulated: datetime) -> datetime:
        return wall_start + (simulated - START) / SPEED

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
            async with MqttFleet(
                broker.host,
                broker.port,
                configs,
                speed=SPEED,
                mqtt_v5=broker.supports_v5,
                start=START,
            ):
                deadline = time.perf_counter() + 120
                while time.perf_counter() < deadline:
                    if await asyncio.to_thread(_confirmed_count, reader) >= meters:
                        break
                    await asyncio.sleep(0.1)
            stages = await asyncio.to_thread(_stages, reader, wall)
    if not stages:
        print("latency: no disconnect confirmed")
        return
    print(f"exhausted -> relay open confirmed, {len(stages)} meters confirmed:")
    for name, index in (
        ("exhausted -> command requested", 0),
        ("requested -> sent to the meter", 1),
        ("sent -> relay open confirmed by read-back", 2),
        ("total", 3),
    ):
        values = sorted(stage[index] for stage in stages)
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        print(
            f"  {name:44s} p50 {statistics.median(values) * 1000:8,.0f} ms"
            f"  p99 {p99 * 1000:8,.0f} ms  max {values[-1] * 1000:8,.0f} ms"
        )


def _confirmed_count(reader: sessionmaker[Session]) -> int:
    with reader() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(MeterCommand)
                .where(MeterCommand.name == "disconnect", MeterCommand.state == "confirmed")
            )
            or 0
        )


def _stages(
    reader: sessionmaker[Session], wall: Callable[[datetime], datetime]
) -> list[tuple[float, float, float, float]]:
    """Per disconnect, from the stored timestamps: the engine's clock (simulated) mapped
    back to the wall clock, the command queue's (wall) as stored."""
    out = []
    with reader() as session:
        rows = session.execute(
            select(BalanceDecision, MeterCommand)
            .join(MeterCommand, MeterCommand.id == BalanceDecision.command_id)
            .where(BalanceDecision.action == "disconnect", MeterCommand.state == "confirmed")
        ).all()
        for decision, command in rows:
            # The balance is exhausted by the ledger entry that took it to zero, booked in
            # the decision's round.
            exhausted = wall(_exhausted_at(session, decision.account_id) or decision.decided_at)
            requested, sent, done = (
                command.requested_at,
                command.first_sent_at or command.requested_at,
                command.finished_at or command.requested_at,
            )
            out.append(
                (
                    (requested - exhausted).total_seconds(),
                    (sent - requested).total_seconds(),
                    (done - sent).total_seconds(),
                    (done - exhausted).total_seconds(),
                )
            )
    return out


def _exhausted_at(session: Session, account_id: int) -> datetime | None:
    running = 0
    for amount, created_at in session.execute(
        select(LedgerEntry.amount_minor, LedgerEntry.created_at)
        .where(LedgerEntry.account_id == account_id)
        .order_by(LedgerEntry.id)
    ):
        running += amount
        if running <= 0 and amount < 0:
            return created_at
    return None


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
