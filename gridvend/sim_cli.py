"""``gridvend sim ...``: run simulated meters and type tokens into them.

- ``gridvend sim fleet --mqtt mqtt://127.0.0.1:1883 --meters 10 --speed 60 --seed 1``
  runs MQTT meters until Ctrl-C (or ``--duration``) with a status line;
  ``--modbus-tcp HOST:PORT`` or ``--modbus-rtu DEVICE`` serves them as Modbus unit ids
  1..N instead, like an RS-485 gateway.
- ``gridvend sim describe --meters 10 --seed 1`` prints the same fleet's identities and
  decoder settings without running it (to register the meters first).
- ``gridvend sim token SIM-00000001 12345678901234567890`` pushes a token to a running
  MQTT meter and prints its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import sys
import uuid
from dataclasses import fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import aiomqtt
import typer
from rich.console import Console
from rich.table import Table

from gridvend.broker import BrokerError, parse_mqtt_url
from meter_sim.clock import SimClock
from meter_sim.faults import NO_FAULTS, FaultConfig, FaultConfigError
from meter_sim.fleet import FleetError, MqttFleet, describe_fleet
from meter_sim.model import ConfigError, MeterConfig, MeterModel, PrepaidMode
from protocols.mqtt import (
    Command,
    CommandName,
    MeterChannel,
    PayloadError,
    TopicError,
    TopicScheme,
    parse_reply,
)

app = typer.Typer(
    help="Simulated prepaid meters: run a fleet, type tokens into a meter.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"


class ListFormat(StrEnum):
    AUTO = "auto"
    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    NONE = "none"


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _identity_rows(configs: list[MeterConfig]) -> list[dict[str, Any]]:
    rows = []
    for unit_id, config in enumerate(configs, start=1):
        model = MeterModel(config, datetime(2026, 1, 1, tzinfo=UTC))
        settings = config.decoder
        state = model.decoder_state
        rows.append(
            {
                "unit_id": unit_id,
                "serial": config.serial,
                "meter_number": config.meter_number,
                "drn": config.drn,
                "phases": config.phases,
                "prepaid_mode": config.prepaid_mode.value,
                "supply_group_code": settings.supply_group_code,
                "tariff_index": settings.tariff_index,
                "key_revision_number": settings.key_revision_number,
                "key_type": settings.key_type,
                "key_expiry_number": settings.key_expiry_number,
                "base_date": settings.base_date_year,
                "encryption_algorithm": settings.encryption_algorithm,
                "key_generation_algorithm": settings.key_generation_algorithm,
                "vending_key_hex": settings.key_config().vending_key.hex(),
                "decoder_key_hex": state.decoder_key_hex if state is not None else "",
                "initial_credit_kwh": str(config.initial_credit_kwh)
                if config.prepaid_mode is PrepaidMode.TOKEN
                else "",
            }
        )
    return rows


def _print_identities(configs: list[MeterConfig], fmt: ListFormat) -> None:
    if fmt is ListFormat.NONE or not configs:
        return
    rows = _identity_rows(configs)
    if fmt is ListFormat.AUTO:
        fmt = ListFormat.TABLE if len(rows) <= 50 else ListFormat.CSV
    if fmt is ListFormat.JSON:
        print(json.dumps(rows, indent=2))
        return
    if fmt is ListFormat.CSV:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        sys.stdout.flush()
        return
    first = rows[0]
    console.print(
        "Decoder settings (all meters): "
        f"SGC {first['supply_group_code']}  TI {first['tariff_index']}  "
        f"KRN {first['key_revision_number']}  KT {first['key_type']}  "
        f"KEN {first['key_expiry_number']}  base date {first['base_date']}  "
        f"EA{first['encryption_algorithm'].removeprefix('EA')}  "
        f"{first['key_generation_algorithm']}  "
        f"test vending key {first['vending_key_hex']} (public test key, simulation only)"
    )
    table = Table(show_edge=False)
    for name in ("unit", "serial", "STS meter number (PAN)", "DRN", "ph", "mode", "decoder key"):
        table.add_column(name)
    for row in rows:
        table.add_row(
            str(row["unit_id"]),
            row["serial"],
            row["meter_number"],
            row["drn"],
            str(row["phases"]),
            row["prepaid_mode"],
            row["decoder_key_hex"],
        )
    console.print(table)


def _faults(specs: list[str]) -> FaultConfig:
    """``["drop_rate=0.1", "clock_drift_ppm=50"]`` -> FaultConfig (exit 2 if invalid)."""
    kinds = {f.name: f.type for f in fields(FaultConfig)}
    values: dict[str, float | int] = {}
    for spec in specs:
        name, sep, raw = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in kinds:
            raise _fail(f"--fault takes NAME=VALUE with NAME one of {', '.join(kinds)}: {spec!r}")
        try:
            values[name] = int(raw) if kinds[name] in ("int", int) else float(raw)
        except ValueError:
            raise _fail(f"--fault {name} needs a number, got {raw!r}") from None
    try:
        return FaultConfig(**values)  # type: ignore[arg-type]
    except FaultConfigError as exc:
        raise _fail(str(exc)) from None


def _fleet_configs(
    meters: int,
    seed: int,
    prefix: str,
    central: bool,
    *,
    central_every: int = 0,
    faults: FaultConfig = NO_FAULTS,
) -> list[MeterConfig]:
    mode = PrepaidMode.CENTRAL if central else PrepaidMode.TOKEN
    try:
        return describe_fleet(
            meters, seed, prefix=prefix, prepaid_mode=mode, central_every=central_every,
            faults=faults,
        )  # fmt: skip
    except (FleetError, ConfigError) as exc:
        raise _fail(str(exc)) from None


@app.command("describe")
def describe(
    meters: int = typer.Option(10, min=1, max=100_000, help="How many meters."),
    seed: int = typer.Option(1, help="Same seed, same meters."),
    prefix: str = typer.Option("SIM", help="Serial number prefix."),
    central: bool = typer.Option(False, help="Central-balance meters instead of STS token."),
    central_every: int = typer.Option(
        0, min=0, help="Make every Nth meter a central-balance meter (mixed fleet)."
    ),
    list_format: ListFormat = typer.Option(ListFormat.AUTO, "--format", help="Output format."),
) -> None:
    """Print a fleet's serials, STS meter numbers and decoder settings without running it."""
    configs = _fleet_configs(meters, seed, prefix, central, central_every=central_every)
    _print_identities(configs, list_format)


def _host_port(text: str, option: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise _fail(f"{option} must be HOST:PORT, got {text!r}")
    return host, int(port)


@app.command("fleet")
def fleet(
    mqtt: str | None = typer.Option(
        None, help="Broker URL, e.g. mqtt://127.0.0.1:1883 (add ?protocol=3.1.1 for v3)."
    ),
    modbus_tcp: str | None = typer.Option(
        None, help="Serve the meters as Modbus TCP unit ids 1..N on HOST:PORT."
    ),
    modbus_rtu: str | None = typer.Option(
        None, help="Serve the meters as Modbus RTU unit ids 1..N on this serial device."
    ),
    profile: str = typer.Option(
        "eastron-sdm120-prepaid", help="Modbus meter profile (register map and quirks)."
    ),
    baudrate: int = typer.Option(9600, help="Modbus RTU baud rate."),
    meters: int = typer.Option(10, min=1, max=100_000, help="How many meters."),
    speed: float = typer.Option(60.0, min=0.001, help="Simulated seconds per real second."),
    seed: int = typer.Option(1, help="Same seed, same meters and same consumption."),
    prefix: str = typer.Option("SIM", help="Serial number prefix."),
    topic_prefix: str = typer.Option("", help="MQTT topic prefix, e.g. 'site1/'."),
    interval_s: int = typer.Option(900, min=1, help="Simulated seconds between readings."),
    upload_spread_s: int = typer.Option(
        0, min=0, help="Meters upload each reading up to this many simulated seconds late."
    ),
    central: bool = typer.Option(False, help="Central-balance meters instead of STS token."),
    central_every: int = typer.Option(
        0, min=0, help="Make every Nth meter a central-balance meter (mixed fleet)."
    ),
    fault: list[str] = typer.Option(
        [],
        help="Fault for every meter, NAME=VALUE, repeatable: drop_rate, latency_s, "
        "latency_jitter_s, duplicate_rate, reorder_rate, offline_rate, offline_intervals, "
        "clock_drift_ppm, tamper_per_day, modbus_exception_rate, modbus_exception_code, "
        "corrupt_frame_rate.",
    ),
    duration: float | None = typer.Option(
        None, min=0.0, help="Stop after this many real seconds (default: run until Ctrl-C)."
    ),
    list_format: ListFormat = typer.Option(
        ListFormat.AUTO, "--format", help="How to print the meter list."
    ),
) -> None:
    """Run simulated meters over MQTT or Modbus until Ctrl-C, with a status line."""
    chosen = [x for x in (mqtt, modbus_tcp, modbus_rtu) if x]
    if len(chosen) != 1:
        raise _fail("give exactly one of --mqtt URL, --modbus-tcp HOST:PORT, --modbus-rtu DEVICE")
    configs = _fleet_configs(
        meters, seed, prefix, central, central_every=central_every, faults=_faults(fault)
    )
    _print_identities(configs, list_format)
    try:
        if mqtt:
            try:
                endpoint = parse_mqtt_url(mqtt)
            except BrokerError as exc:
                raise _fail(str(exc)) from None
            runner = _run_mqtt(
                endpoint.host,
                endpoint.port,
                endpoint.supports_v5,
                configs,
                topic_prefix=topic_prefix,
                speed=speed,
                interval_s=interval_s,
                upload_spread_s=upload_spread_s,
                duration=duration,
            )
        else:
            runner = _run_modbus(
                configs,
                tcp=_host_port(modbus_tcp, "--modbus-tcp") if modbus_tcp else None,
                rtu=modbus_rtu,
                baudrate=baudrate,
                profile=profile,
                speed=speed,
                seed=seed,
                duration=duration,
            )
        asyncio.run(runner)
    except KeyboardInterrupt:
        console.print("stopped")
    except (FleetError, TopicError, OSError, ValueError) as exc:
        raise _fail(str(exc), 1) from None


async def _run_mqtt(
    host: str,
    port: int,
    v5: bool,
    configs: list[MeterConfig],
    *,
    topic_prefix: str,
    speed: float,
    interval_s: int,
    upload_spread_s: int,
    duration: float | None,
) -> None:
    with console.status(f"connecting {len(configs)} meters to mqtt://{host}:{port} ..."):
        fleet = MqttFleet(
            host,
            port,
            configs,
            topic_prefix=topic_prefix,
            speed=speed,
            interval_s=interval_s,
            upload_spread_s=upload_spread_s,
            mqtt_v5=v5,
            connect_timeout_s=max(60.0, len(configs) / 50),
        )
        await fleet.__aenter__()
    try:
        console.print(
            f"{len(configs)} meters online at mqtt://{host}:{port} "
            f"(topics {fleet.scheme.prefix}ami/v1/meters/<serial>/...), x{speed:g} time"
        )
        loop = asyncio.get_running_loop()
        stop_at = None if duration is None else loop.time() + duration
        with console.status("") as status:
            while stop_at is None or loop.time() < stop_at:
                stats = fleet.stats()
                status.update(
                    f"sim {stats.simulated_now:%Y-%m-%d %H:%M}  connected {stats.connected}/"
                    f"{stats.meters}  readings {stats.readings}  events {stats.events}  "
                    f"commands {stats.commands} ({stats.bad_commands} bad)  "
                    f"published {stats.published}  lag {stats.lag_s:.1f}s"
                )
                await asyncio.sleep(1.0 if stop_at is None else min(1.0, duration or 1.0))
    finally:
        with console.status("disconnecting ..."):
            await fleet.__aexit__(None, None, None)


async def _run_modbus(
    configs: list[MeterConfig],
    *,
    tcp: tuple[str, int] | None,
    rtu: str | None,
    baudrate: int,
    profile: str,
    speed: float,
    seed: int,
    duration: float | None,
) -> None:
    from meter_sim.modbus_server import serve_modbus_rtu, serve_modbus_tcp, sim_clock_now

    if len(configs) > 247:
        raise FleetError("a Modbus line or gateway addresses at most 247 unit ids")
    loop = asyncio.get_running_loop()
    start = datetime.now(UTC).replace(microsecond=0)
    clock = SimClock(start, speed, real_origin=loop.time())
    models = [MeterModel(config, start) for config in configs]
    now = sim_clock_now(clock)
    if tcp is not None:
        server = serve_modbus_tcp(
            models, now=now, host=tcp[0], port=tcp[1], profile=profile, seed=seed
        )
        where = f"Modbus TCP {tcp[0]}:{tcp[1]}"
    else:
        assert rtu is not None
        server = serve_modbus_rtu(
            models, now=now, device=rtu, baudrate=baudrate, profile=profile, seed=seed
        )
        where = f"Modbus RTU {rtu} {baudrate} 8N1"
    async with server:
        console.print(f"{len(models)} meters on {where} as unit ids 1..{len(models)} ({profile})")
        stop_at = None if duration is None else loop.time() + duration
        with console.status("") as status:
            while stop_at is None or loop.time() < stop_at:
                sim_now = clock.now(loop.time())
                energy = sum(m.energy_import_kwh for m in models)
                status.update(
                    f"sim {sim_now:%Y-%m-%d %H:%M}  meters {len(models)}  "
                    f"energy {energy:.3f} kWh (as last read)"
                )
                await asyncio.sleep(1.0 if stop_at is None else min(1.0, duration or 1.0))


@app.command("token")
def token(
    meter: str = typer.Argument(..., help="The meter's serial (its MQTT meter id)."),
    token_digits: str = typer.Argument(..., metavar="TOKEN", help="20 digits (spaces allowed)."),
    mqtt: str = typer.Option(DEFAULT_MQTT_URL, help="Broker URL the meter is connected to."),
    topic_prefix: str = typer.Option("", help="MQTT topic prefix the fleet uses."),
    timeout: float = typer.Option(10.0, min=0.1, help="Seconds to wait for the meter's answer."),
    as_json: bool = typer.Option(False, "--json", help="Print the meter's reply as JSON."),
) -> None:
    """Type a token into a running simulated MQTT meter and print what the meter shows.

    Exit code 0 when the meter accepts the token, 1 when it refuses it, 2 on no answer.
    """
    digits = "".join(token_digits.split()).replace("-", "")
    try:
        endpoint = parse_mqtt_url(mqtt)
        scheme = TopicScheme(prefix=topic_prefix)
        scheme.meter_topic(meter, MeterChannel.COMMAND)
    except (BrokerError, TopicError) as exc:
        raise _fail(str(exc)) from None
    try:
        reply = asyncio.run(
            _push_token(
                endpoint.host, endpoint.port, endpoint.supports_v5, scheme, meter, digits, timeout
            )
        )
    except (TimeoutError, aiomqtt.MqttError, PayloadError) as exc:
        raise _fail(f"no answer from meter {meter}: {exc or 'timed out'}") from None
    if as_json:
        print(json.dumps(reply, indent=2, default=str))
    else:
        result = reply.get("result", {})
        status = result.get("token_status", reply["status"])
        style = "green" if reply["status"] == "ok" else "red"
        console.print(f"meter {meter}: [{style}]{status}[/{style}]")
        if reply.get("reason"):
            console.print(f"  {reply['reason']}")
        for key in ("credit_added_kwh", "credit_kwh", "relay_closed", "tid"):
            if key in result:
                console.print(f"  {key}: {result[key]}")
    raise typer.Exit(0 if reply["status"] == "ok" else 1)


async def _push_token(
    host: str,
    port: int,
    v5: bool,
    scheme: TopicScheme,
    meter: str,
    digits: str,
    timeout: float,
) -> dict[str, Any]:
    instance = f"sim-cli-{uuid.uuid4().hex[:12]}"
    reply_topic = scheme.replies(instance)
    command = Command(
        id=uuid.uuid4().hex,
        name=CommandName.PUSH_TOKEN,
        params={"token": digits},
        reply_to=reply_topic,
    )
    protocol = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client(host, port, identifier=instance, protocol=protocol) as client:
        await client.subscribe(reply_topic, qos=1)
        await client.publish(
            scheme.meter_topic(meter, MeterChannel.COMMAND), command.to_bytes(), qos=1
        )
        async with asyncio.timeout(timeout):
            async for message in client.messages:
                payload = message.payload
                if not isinstance(payload, bytes):
                    continue
                with contextlib.suppress(PayloadError):
                    reply = parse_reply(payload)
                    if reply.id == command.id:
                        return reply.model_dump(mode="json")
    raise TimeoutError("timed out")


__all__ = ["app"]
