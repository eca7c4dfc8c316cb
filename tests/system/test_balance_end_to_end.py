"""Central-balance prepaid end to end, at accelerated time, over the real broker:

simulated central-mode meters publish readings -> the head-end validates and publishes
interval consumption -> the balance engine rates it into the ledger, raises the
low-balance alerts and, after the grace period and outside friendly hours, asks for a
disconnect -> the command is sent to the meter and confirmed by read-back; a top-up
reconnects it. A protected customer in the same state is listed, not disconnected.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.broker import BrokerEndpoint
from gridvend.channel_cli import ChannelClient
from gridvend.demo_data import DEMO_TARIFF
from gridvend.runtime import System
from gridvend.settings import Settings
from headend.models import MeterLifecycle, PrepaidMode
from headend.registry import MeterRegistration, register_meter
from meter_sim.fleet import MqttFleet, describe_fleet
from meter_sim.model import PrepaidMode as SimPrepaidMode
from tests.eventually import eventually
from vending.accounts import (
    NewAccount,
    NewCustomer,
    Protection,
    add_customer,
    link_meter,
    open_account,
    save_tariff,
)
from vending.balance.engine import BalanceEngine, balance_minor
from vending.channels.service import NewChannelTerms, create_channel
from vending.counter import PaymentMethod, VendRequest, vend
from vending.models import BalanceDecision, LedgerEntry, Notification, RatedInterval, Vend

SPEED = 3600.0  # one simulated hour per second
# Tuesday 17 November 2026, 09:00 in Johannesburg (UTC+2).
START = datetime(2026, 11, 17, 7, 0, tzinfo=UTC)
ZONE = "Africa/Johannesburg"


def _simulated_clock(wall_start: datetime) -> Callable[[], datetime]:
    def now() -> datetime:
        return START + (datetime.now(UTC) - wall_start) * SPEED

    return now


def _setup(system: System, configs: list[Any], protected_serial: str) -> dict[str, int]:
    """Register the meters, the tariff and one account per meter; top each up with R5."""
    opened = START - timedelta(days=1)
    accounts = {}
    with system.session_factory() as session, session.begin():
        save_tariff(session, DEMO_TARIFF, actor="test", now=opened)
        for config in configs:
            register_meter(
                session,
                MeterRegistration(
                    serial=config.serial,
                    meter_number=config.meter_number,
                    prepaid_mode=PrepaidMode.CENTRAL,
                    lifecycle=MeterLifecycle.INSTALLED,
                ),
                now=opened,
            )
            protection = Protection.LIFE_SUPPORT if config.serial == protected_serial else None
            customer = add_customer(
                session, NewCustomer(name=config.serial, protection=protection), opened
            )
            account = open_account(
                session, NewAccount(customer_id=customer.id, tariff_code="RES-STEP"), opened
            )
            link_meter(session, account.id, config.meter_number, actor="test", now=opened)
            accounts[config.serial] = account.id
    for config in configs:
        _top_up(system, config.meter_number, "5.00", f"first-{config.serial}", opened)
    return accounts


def _top_up(system: System, meter_number: str, amount: str, reference: str, at: datetime) -> None:
    request = VendRequest(
        meter_number, Decimal(amount), PaymentMethod.CASH, "counter", reference, "clerk.one"
    )
    with system.session_factory() as session, session.begin():
        vend(
            session,
            request,
            security_module=system.security_module,
            audit=system.audit,
            now=at,
        )


def _decisions(factory: sessionmaker[Session], account_id: int) -> list[BalanceDecision]:
    with factory() as session:
        return list(
            session.scalars(
                select(BalanceDecision)
                .where(BalanceDecision.account_id == account_id)
                .order_by(BalanceDecision.id)
            )
        )


def _ledger_matches_rating(factory: sessionmaker[Session], account_id: int) -> bool:
    """Every rated interval is booked exactly once: the consumption and adjustment entries
    sum to minus the charges of the rated intervals."""
    with factory() as session:
        booked = session.scalar(
            select(func.coalesce(func.sum(LedgerEntry.amount_minor), 0)).where(
                LedgerEntry.account_id == account_id,
                LedgerEntry.kind.in_(("consumption", "adjustment")),
            )
        )
        rated = session.scalar(
            select(func.coalesce(func.sum(RatedInterval.charge_minor), 0)).where(
                RatedInterval.account_id == account_id
            )
        )
    return int(booked or 0) == -int(rated or 0)


async def test_central_balance_runs_out_is_disconnected_and_reconnected_after_top_up(
    database_url: str, mqtt_broker: BrokerEndpoint, topic_prefix: str, tmp_path: Path
) -> None:
    wall_start = datetime.now(UTC)
    clock = _simulated_clock(wall_start)
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        api_port=0,
        mqtt_topic_prefix=topic_prefix,
        headend_instance=f"headend-{topic_prefix.strip('/')}",
        utility_timezone=ZONE,
        conversion_grace_days=0,
        disconnect_grace_minutes=60,
    )
    configs = describe_fleet(2, seed=21, prepaid_mode=SimPrepaidMode.CENTRAL, three_phase_every=0)
    ordinary, protected = configs
    async with System(settings, mqtt_broker, clock=clock) as system:
        accounts = await asyncio.to_thread(_setup, system, configs, protected.serial)
        factory = system.session_factory
        async with MqttFleet(
            mqtt_broker.host,
            mqtt_broker.port,
            configs,
            topic_prefix=topic_prefix,
            speed=SPEED,
            mqtt_v5=mqtt_broker.supports_v5,
            start=START,
        ) as fleet:

            def checked() -> None:
                for account_id in accounts.values():
                    _check_ledger(factory, account_id)

            async def some_consumption_rated() -> bool:
                return await asyncio.to_thread(_rated_count, factory) > 0

            await eventually(some_consumption_rated, timeout_s=60)
            # The engine stops mid-way, as in a crash; a new one takes over from the stored
            # stream position and rates nothing twice.
            system._tasks["balance"].cancel()
            await asyncio.gather(system._tasks["balance"], return_exceptions=True)
            await asyncio.to_thread(checked)
            restarted = BalanceEngine(
                factory,
                source=system.balance_engine._source,
                commands=system.command_queue,
                audit=system.audit,
                settings=system.balance_engine._settings,
                clock=clock,
            )
            system._tasks["balance"] = asyncio.create_task(restarted.run(interval_s=0.2))

            async def disconnected() -> bool:
                return not fleet.models[ordinary.serial].relay_closed

            await eventually(disconnected, timeout_s=90)
            await asyncio.to_thread(checked)
            decisions = _decisions(factory, accounts[ordinary.serial])
            actions = [d.action for d in decisions]
            assert actions[:1] == ["defer"] and "disconnect" in actions
            disconnect = next(d for d in decisions if d.action == "disconnect")
            local_hour = (disconnect.decided_at + timedelta(hours=2)).hour
            assert 8 <= local_hour < 18, "disconnected inside friendly hours"
            assert disconnect.command_id is not None

            async def disconnect_confirmed() -> bool:
                assert disconnect.command_id is not None
                status = await asyncio.to_thread(system.command_queue.status, disconnect.command_id)
                return status.state.value == "confirmed"

            await eventually(disconnect_confirmed, timeout_s=30)
            with factory() as session:
                kinds = set(
                    session.scalars(
                        select(Notification.kind).where(
                            Notification.account_id == accounts[ordinary.serial]
                        )
                    )
                )
            assert {"low_balance_30", "low_balance_10", "low_balance_0", "disconnect"} <= kinds

            protected_decisions = _decisions(factory, accounts[protected.serial])
            assert [d.action for d in protected_decisions] == ["operator_list"]
            assert fleet.models[protected.serial].relay_closed

            # The customer pays R50 at the bank: a signed purchase over the channel API.
            answer = await _pay_through_bank(system, ordinary.meter_number, "50.00")
            assert answer["status"] == 200, answer
            receipt = json.loads(answer["body"])
            # A central meter gets credit on its account, not a token.
            assert (receipt["status"], receipt["token"]) == ("completed", None)

            async def reconnected() -> bool:
                return fleet.models[ordinary.serial].relay_closed

            await eventually(reconnected, timeout_s=90)
            await asyncio.to_thread(checked)
            with factory() as session:
                assert balance_minor(session, accounts[ordinary.serial]) > 0
            assert _decisions(factory, accounts[ordinary.serial])[-1].action == "reconnect"


def _rated_count(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(RatedInterval)) or 0)


def _check_ledger(factory: sessionmaker[Session], account_id: int) -> None:
    """The ledger explains the balance: consumption and adjustments are exactly the rated
    charges (nothing rated twice), and every payment is one vend's."""
    assert _ledger_matches_rating(factory, account_id)
    with factory() as session:
        consumption_entries = session.scalar(
            select(func.count()).where(
                LedgerEntry.account_id == account_id, LedgerEntry.kind == "consumption"
            )
        )
        rated = session.scalar(select(func.count()).where(RatedInterval.account_id == account_id))
        payments = session.scalars(
            select(LedgerEntry.reference).where(
                LedgerEntry.account_id == account_id, LedgerEntry.kind == "payment"
            )
        ).all()
        vends = session.scalars(select(Vend.id).where(Vend.account_id == account_id)).all()
    assert consumption_entries == rated
    assert sorted(payments) == sorted(f"vend:{vend_id}" for vend_id in vends)


async def _pay_through_bank(system: System, meter_number: str, amount: str) -> dict[str, Any]:
    with system.session_factory() as session, session.begin():
        channel, secret = create_channel(
            session,
            NewChannelTerms(code="test-bank", name="Test Bank", currency="ZAR"),
            kek=system.kek,
            audit=system.audit,
            actor="test",
            now=datetime.now(UTC),
        )
        key_id = channel.key_id
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as http:
        outcome = await ChannelClient(http, key_id, secret).purchase(
            {
                "reference": "BANK-1",
                "amount": amount,
                "currency": "ZAR",
                "meter_number": meter_number,
            }
        )
    return {"status": outcome.status, "body": outcome.body}
