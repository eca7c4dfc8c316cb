"""``gridvend sim``: describe a fleet, run one, push a token to a meter."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from typer.testing import CliRunner

from gridvend.broker import BrokerEndpoint
from gridvend.sim_cli import app
from meter_sim.fleet import MqttFleet, describe_fleet
from protocols.sts import parse_meter_number
from tests.meter_sim.vend import Vendor

runner = CliRunner()


def _url(broker: BrokerEndpoint) -> str:
    suffix = "" if broker.supports_v5 else "?protocol=3.1.1"
    return f"mqtt://{broker.host}:{broker.port}{suffix}"


def test_describe_prints_every_meter_with_its_sts_settings_as_json() -> None:
    result = runner.invoke(app, ["describe", "--meters", "3", "--seed", "4", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    configs = describe_fleet(3, 4)
    assert [r["serial"] for r in rows] == [c.serial for c in configs]
    for row in rows:
        assert parse_meter_number(row["meter_number"]).drn == row["drn"]
        assert len(row["decoder_key_hex"]) == 16
        assert row["supply_group_code"] == "123456"


def test_fleet_refuses_no_or_two_transports() -> None:
    result = runner.invoke(app, ["fleet", "--meters", "1"])
    assert result.exit_code == 2
    assert "exactly one" in result.output


def test_fleet_runs_for_a_duration_and_stops(mqtt_broker: BrokerEndpoint) -> None:
    result = runner.invoke(
        app,
        [
            "fleet", "--mqtt", _url(mqtt_broker), "--meters", "2", "--duration", "0.5",
            "--topic-prefix", f"cli-{uuid.uuid4().hex[:6]}/", "--format", "csv",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 meters online" in result.output


async def test_token_command_types_a_token_into_a_running_meter(
    mqtt_broker: BrokerEndpoint,
) -> None:
    prefix = f"cli-{uuid.uuid4().hex[:6]}/"
    config = describe_fleet(1, seed=9)[0]
    token = Vendor(config).credit(Decimal(7), datetime(2026, 3, 2, tzinfo=UTC))
    args = ["token", config.serial, token, "--mqtt", _url(mqtt_broker), "--topic-prefix", prefix]
    async with MqttFleet(
        mqtt_broker.host,
        mqtt_broker.port,
        [config],
        topic_prefix=prefix,
        mqtt_v5=mqtt_broker.supports_v5,
        start=datetime(2026, 3, 2, 6, 0, tzinfo=UTC),
    ):
        first = await asyncio.to_thread(runner.invoke, app, args)
        second = await asyncio.to_thread(runner.invoke, app, [*args, "--json"])
    assert first.exit_code == 0, first.output
    assert "accept" in first.output
    assert second.exit_code == 1
    assert json.loads(second.output)["result"]["token_status"] == "used"


def test_token_command_without_an_answer_exits_2(mqtt_broker: BrokerEndpoint) -> None:
    result = runner.invoke(
        app,
        ["token", "NOBODY-1", "1" * 20, "--mqtt", _url(mqtt_broker), "--timeout", "0.3"],
    )
    assert result.exit_code == 2
    assert "no answer" in result.output


async def test_fleet_serves_modbus_tcp_unit_ids_like_a_gateway() -> None:
    from pymodbus.client import AsyncModbusTcpClient

    from tests.meter_sim.conftest import _free_port

    port = _free_port()
    args = ["fleet", "--modbus-tcp", f"127.0.0.1:{port}", "--meters", "2", "--duration", "3"]
    run = asyncio.create_task(asyncio.to_thread(runner.invoke, app, args))
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=1)
    try:
        for _ in range(50):
            if await client.connect():
                break
            await asyncio.sleep(0.05)
        energies = []
        for unit in (1, 2):
            reply = await client.read_input_registers(0x0048, count=2, device_id=unit)
            assert not reply.isError()
            energies.append(client.convert_from_registers(reply.registers, client.DATATYPE.FLOAT32))
        configs = describe_fleet(2, seed=1)
        for energy, config in zip(energies, configs, strict=True):
            assert abs(Decimal(str(energy)) - config.initial_energy_kwh) < 1
    finally:
        client.close()
    result = await run
    assert result.exit_code == 0, result.output
    assert "Modbus TCP" in result.output


def test_fault_options_are_checked() -> None:
    bad = runner.invoke(app, ["fleet", "--mqtt", "mqtt://127.0.0.1:1", "--fault", "drop_rate=2"])
    assert bad.exit_code == 2
    assert "drop_rate" in bad.output
    unknown = runner.invoke(app, ["fleet", "--mqtt", "mqtt://127.0.0.1:1", "--fault", "boom=1"])
    assert unknown.exit_code == 2


def test_describe_mixes_central_meters_when_asked() -> None:
    result = runner.invoke(
        app, ["describe", "--meters", "4", "--central-every", "2", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    modes = [row["prepaid_mode"] for row in json.loads(result.output)]
    assert modes == ["token", "central", "token", "central"]


def test_describe_derives_decoder_keys_from_the_given_vending_key() -> None:
    from protocols.sts import KeyConfig, derive_decoder_key

    key = "0102030405060708090a0b0c0d0e0f1011121314"
    args = [
        "describe",
        "--meters",
        "1",
        "--vending-key",
        key,
        "--sgc",
        "654321",
        "--format",
        "json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    expected = derive_decoder_key(
        KeyConfig(
            vending_key=bytes.fromhex(key), supply_group_code="654321", tariff_index="01",
            key_revision=1,
        ),
        parse_meter_number(row["meter_number"]),
    )  # fmt: skip
    assert row["decoder_key_hex"] == expected.hex
