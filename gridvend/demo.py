"""``gridvend demo``: the whole system on embedded defaults, with a simulated fleet."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditLog
from gridvend.auth import NewUser, Role, User, create_user, set_password
from gridvend.broker import provide_broker
from gridvend.db import make_engine, make_session_factory, upgrade
from gridvend.demo_data import DEMO_CLERK, new_demo_keys, seed_vending
from gridvend.runtime import System, load_key_encryption_key
from gridvend.settings import Settings
from headend.models import Meter, MeterLifecycle, MeterProtocol, PrepaidMode
from headend.registry import MeterRegistration, register_meter
from meter_sim.fleet import MqttFleet, describe_fleet
from meter_sim.model import MeterConfig
from vending.keystore import KeyStore

DEMO_ADMIN = "admin"


async def run_demo(
    settings: Settings,
    *,
    meters: int,
    speed: float,
    seed: int,
    announce: Callable[[str], None] = print,
) -> None:
    """Run until Ctrl-C: broker, database, head-end, API, and ``meters`` MQTT meters."""
    keys = new_demo_keys()
    configs = describe_fleet(meters, seed, decoder=keys.decoder_settings())
    if settings.database_url is None:
        # The simulated meters start afresh on every run, so the demo's own database does too
        # (old readings would clash with the new run's at the same simulated times).
        for leftover in settings.data_dir.glob("gridvend.db*"):
            leftover.unlink()
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    session_factory = make_session_factory(engine)
    _register_fleet(session_factory, configs)
    password = _reset_demo_admin(session_factory)
    clerk_password = secrets.token_urlsafe(12)
    with session_factory() as session, session.begin():
        seed_vending(
            session,
            KeyStore(load_key_encryption_key(settings)),
            keys,
            configs,
            clerk_password,
            datetime.now(UTC),
        )
    engine.dispose()

    # The fleet runs simulated time from `start`; readings are validated against that time.
    start = datetime.now(UTC)

    def simulated_now() -> datetime:
        return start + (datetime.now(UTC) - start) * speed

    with provide_broker(settings.mqtt_url) as broker:
        async with (
            System(settings, broker, clock=simulated_now) as system,
            MqttFleet(
                broker.host,
                broker.port,
                configs,
                topic_prefix=settings.mqtt_topic_prefix,
                speed=speed,
                mqtt_v5=broker.supports_v5,
                start=start,
            ),
        ):
            announce(
                f"gridvend demo is ready on {system.base_url}  (API docs: {system.base_url}/docs)\n"
                f"  broker: {broker.kind} at {broker.url}\n"
                f"  database: {settings.effective_database_url}\n"
                f"  {len(configs)} simulated MQTT meters at x{speed:g} time, "
                f"a reading every 15 simulated minutes; meter numbers: "
                f"{', '.join(c.meter_number for c in configs[:3])}"
                f"{' ...' if len(configs) > 3 else ''}\n"
                f"  customer alerts: {settings.notification_channels} "
                "(record: written to the log)\n"
                f"  sign in: username {DEMO_ADMIN!r}, password {password!r}; "
                f"clerk {DEMO_CLERK!r}, password {clerk_password!r} (POST /api/auth/token)\n"
                "  Ctrl-C stops everything."
            )
            await system.wait_closed()


def _register_fleet(session_factory: sessionmaker[Session], configs: list[MeterConfig]) -> None:
    """Register the simulated meters as a technician would (idempotent across runs)."""
    with session_factory() as session, session.begin():
        known = set(session.scalars(select(Meter.serial)))
        for config in configs:
            if config.serial in known:
                continue
            register_meter(
                session,
                MeterRegistration(
                    serial=config.serial,
                    meter_number=config.meter_number,
                    model="gridvend-sim",
                    phases=config.phases,
                    protocol=MeterProtocol.MQTT,
                    prepaid_mode=PrepaidMode(config.prepaid_mode.value),
                    lifecycle=MeterLifecycle.INSTALLED,
                    supply_group_code=config.decoder.supply_group_code,
                    tariff_index=config.decoder.tariff_index,
                    key_revision=config.decoder.key_revision_number,
                ),
                actor="demo",
                audit=AuditLog(),
            )


def _reset_demo_admin(session_factory: sessionmaker[Session]) -> str:
    """A fresh random password for the demo's admin on every run, printed once."""
    password = secrets.token_urlsafe(12)
    with session_factory() as session, session.begin():
        user = session.scalar(select(User).where(User.username == DEMO_ADMIN))
        if user is None:
            create_user(session, NewUser(username=DEMO_ADMIN, role=Role.ADMIN, password=password))
            action = "user.create"
        else:
            set_password(session, DEMO_ADMIN, password, datetime.now(UTC))
            user.active = True  # whatever happened to it in an earlier demo run
            action = "user.password_reset"
        AuditLog().record(
            session,
            actor="demo",
            action=action,
            subject=f"user:{DEMO_ADMIN}",
            now=datetime.now(UTC),
        )
    return password
