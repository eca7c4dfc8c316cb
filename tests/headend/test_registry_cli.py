"""``gridvend meter ...`` on a real database, with a simulated meter served over Modbus TCP."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from gridvend.audit import AuditLog
from gridvend.broker import BrokerEndpoint
from gridvend.meter_cli import app
from headend.commands import CommandQueue
from headend.commands.models import MeterCommand
from headend.models import Meter
from headend.registry import MeterRegistration, meter_pan, register_meter
from meter_sim import MqttFleet, describe_fleet
from meter_sim.modbus_server import serve_modbus_tcp
from meter_sim.model import MeterConfig, MeterModel
from tests.headend.commands_support import LIVE_POLICY, dispatcher_for, running

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
DRN = "01234567897"
runner = CliRunner()


@pytest.fixture(autouse=True)
def configured(database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRIDVEND_DATABASE_URL", database_url)
    monkeypatch.setenv("GRIDVEND_DATA_DIR", str(tmp_path))


@pytest.fixture
def sim_address() -> Iterator[tuple[str, int]]:
    """A simulated meter served from a thread of its own, since the CLI runs its own loop."""
    ready = threading.Event()
    stop: list[asyncio.Event] = []
    address: list[tuple[str, int]] = []

    async def serve() -> None:
        model = MeterModel(
            MeterConfig(
                serial="SIM-000001",
                meter_number=meter_pan(DRN),
                initial_energy_kwh=Decimal("7"),
                initial_credit_kwh=Decimal(5),
            ),
            T0,
        )
        async with serve_modbus_tcp([model], now=lambda: T0, port=0) as server:
            address.append(server.address)
            stop.append(asyncio.Event())
            ready.set()
            await stop[0].wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield address[0]
    loop.call_soon_threadsafe(stop[0].set)
    thread.join(10)
    loop.close()


def test_import_shows_the_refused_rows_and_exits_1(
    tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    csv_file = tmp_path / "fleet.csv"
    csv_file.write_text("serial,meter_number\nM-1,01234567897\nM-2,01234567890\n")
    result = runner.invoke(app, ["import", str(csv_file)])
    assert result.exit_code == 1, result.output
    assert "2 rows: 1 imported, 1 refused" in result.output
    assert "check digit" in result.output
    with session_factory() as session:
        assert session.scalars(select(Meter.serial)).all() == ["M-1"]


def test_an_unusable_file_exits_2(tmp_path: Path) -> None:
    csv_file = tmp_path / "fleet.csv"
    csv_file.write_text("colour\nred\n")
    result = runner.invoke(app, ["import", str(csv_file)])
    assert result.exit_code == 2
    assert "unknown column" in result.output


def test_commission_runs_every_step_against_the_meter(
    session_factory: sessionmaker[Session], sim_address: tuple[str, int]
) -> None:
    host, port = sim_address
    with session_factory() as session, session.begin():
        register_meter(
            session,
            MeterRegistration(
                serial="SIM-000001",
                meter_number=DRN,
                protocol="modbus_tcp",  # type: ignore[arg-type]
                modbus_profile="eastron-sdm120-prepaid",
                modbus_host=host,
                modbus_port=port,
                modbus_unit=1,
                lifecycle="installed",  # type: ignore[arg-type]
            ),
        )
    result = runner.invoke(app, ["commission", DRN, "--technician", "thabo"])
    assert result.exit_code == 0, result.output
    assert "install reading 7.000000 kWh" in result.output
    assert "meter 01234567897 is commissioned" in result.output
    again = runner.invoke(app, ["commission", "SIM-000001"])
    assert again.exit_code == 2
    assert "only an installed meter" in again.output
    listed = runner.invoke(app, ["list", "--lifecycle", "commissioned"])
    assert "SIM-000001" in listed.output
    with session_factory() as session, session.begin():
        # Commissioning heard from the meter just now; make it two hours quiet since.
        session.execute(update(Meter).values(last_seen_at=datetime.now(UTC) - timedelta(hours=2)))
    health = runner.invoke(app, ["health", "--interval-s", "900", "--intervals", "4"])
    assert health.exit_code == 0, health.output
    assert "SIM-000001" in health.output


async def test_commission_reaches_an_mqtt_meter_through_a_running_dispatcher(
    session_factory: sessionmaker[Session], mqtt_broker: BrokerEndpoint, topic_prefix: str
) -> None:
    (config,) = describe_fleet(1, seed=31)
    with session_factory() as session, session.begin():
        register_meter(
            session,
            MeterRegistration(
                serial=config.serial,
                meter_number=config.drn,
                phases=config.phases,
                protocol="mqtt",  # type: ignore[arg-type]
                prepaid_mode=config.prepaid_mode.value,  # type: ignore[arg-type]
                lifecycle="installed",  # type: ignore[arg-type]
            ),
        )
    # What a running `gridvend serve` does: dispatch the queued commands to the meter.
    queue = CommandQueue(session_factory, audit=AuditLog(), policy=LIVE_POLICY)
    dispatcher = dispatcher_for(queue, mqtt_broker, topic_prefix, f"he-{config.serial}")
    async with (
        running(dispatcher),
        MqttFleet(
            mqtt_broker.host,
            mqtt_broker.port,
            [config],
            topic_prefix=topic_prefix,
            speed=1.0,
            mqtt_v5=mqtt_broker.supports_v5,
        ),
    ):
        result = await asyncio.to_thread(runner.invoke, app, ["commission", config.serial])
    assert result.exit_code == 0, result.output
    assert "keys will not be loaded: GRIDVEND_COMMISSIONING_DELIVERY_KEY" in result.output
    assert f"meter {config.serial} is commissioned" in result.output
    with session_factory() as session:
        commands = session.scalars(select(MeterCommand.requested_by)).all()
    assert set(commands) == {"commissioning"}
