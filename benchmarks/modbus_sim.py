"""Reads per second against the Modbus meter simulator, next to a bare pymodbus baseline.

Both servers run in a child process (so the client's event loop is not shared with the
server's), on a free loopback TCP port, and the same client code reads from both:

* ``bare``: a pymodbus ``SimDevice`` with the SDM120 input registers and no action
  callback: what pymodbus costs on its own;
* ``sim``: ``serve_modbus_tcp`` with N simulated meters (unit ids 1..N); every read
  advances the meter model and encodes its values.

Cases: reads of the SDM120 input block (0x0000, 32 registers) over 1 and 4 connections;
a routine poll (``routine_points``) and a full poll (every readable point, identity and
event log included) of one prepaid meter, decoded as the head-end does; the same block
read over Modbus RTU through the pty bridge; and the server-side work per read without
any transport.

Each case runs ``--rounds`` times and the best rate is reported, because the machine
is shared: the best run is the one least disturbed by other load.

Usage: python benchmarks/modbus_sim.py [--reads 5000] [--meters 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from meter_sim.modbus_server import serve_modbus_rtu, serve_modbus_tcp
from meter_sim.model import MeterConfig, MeterModel
from meter_sim.serial_bridge import serial_pair
from protocols.modbus import decode_points, get_profile, plan_reads, routine_points

PROFILE = get_profile("eastron-sdm120-prepaid")
BLOCK_ADDRESS, BLOCK_COUNT = 0x0000, 32


def _models(count: int) -> list[MeterModel]:
    start = datetime(2026, 11, 24, tzinfo=UTC)
    return [
        MeterModel(
            MeterConfig(
                serial=f"BENCH-{i:04d}",
                meter_number=f"600727{i:011d}0",
                seed=i,
                initial_credit_kwh=Decimal(1000),
            ),
            start,
        )
        for i in range(1, count + 1)
    ]


def _bare_device() -> SimDevice:
    inputs = [SimData(0, count=0x015A // 2, values=230.0, datatype=DataType.FLOAT32)]
    bits = [SimData(0, values=False, datatype=DataType.BITS)]
    holding = [SimData(0, count=2, values=0, datatype=DataType.REGISTERS)]
    return SimDevice(id=1, simdata=(bits, bits, holding, inputs))


async def _serve(kind: str, meters: int, ready: mp.Queue, stop: mp.Event) -> None:  # type: ignore[type-arg]
    loop = asyncio.get_running_loop()
    speed = 3600.0
    origin = loop.time()
    start = datetime(2026, 11, 24, tzinfo=UTC)

    def now() -> datetime:
        from datetime import timedelta

        return start + timedelta(seconds=(loop.time() - origin) * speed)

    async def wait_stop() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.05)

    if kind == "bare-tcp":
        server = ModbusTcpServer(_bare_device(), address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        ready.put(server.transport.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await wait_stop()
        await server.shutdown()
    elif kind == "sim-tcp":
        async with serve_modbus_tcp(_models(meters), now=now, port=0, profile=PROFILE) as sim:
            assert sim.address is not None
            ready.put(sim.address[1])
            await wait_stop()
    elif kind in ("bare-rtu", "sim-rtu"):
        async with serial_pair() as pair:
            if kind == "bare-rtu":
                server = ModbusSerialServer(_bare_device(), port=pair.server_port, baudrate=9600)
                await server.serve_forever(background=True)
                ready.put(pair.client_port)
                await wait_stop()
                await server.shutdown()
            else:
                async with serve_modbus_rtu(
                    _models(meters), now=now, device=pair.server_port, profile=PROFILE
                ):
                    ready.put(pair.client_port)
                    await wait_stop()


def _server_process(kind: str, meters: int, ready: mp.Queue, stop: mp.Event) -> None:  # type: ignore[type-arg]
    asyncio.run(_serve(kind, meters, ready, stop))


async def _block_reads(client, reads: int, unit: int) -> None:  # type: ignore[no-untyped-def]
    for _ in range(reads):
        reply = await client.read_input_registers(BLOCK_ADDRESS, count=BLOCK_COUNT, device_id=unit)
        if reply.isError():
            raise RuntimeError(reply)


async def _tcp_rate(port: int, reads: int, connections: int, meters: int) -> float:
    clients = [AsyncModbusTcpClient("127.0.0.1", port=port, timeout=3) for _ in range(connections)]
    for client in clients:
        await client.connect()
    per = reads // connections
    began = time.perf_counter()
    await asyncio.gather(*(_block_reads(c, per, 1 + i % meters) for i, c in enumerate(clients)))
    elapsed = time.perf_counter() - began
    for client in clients:
        client.close()
    return per * connections / elapsed


async def _poll_rate(port: int, polls: int, meters: int, routine: bool) -> float:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=3)
    await client.connect()
    plan = plan_reads(PROFILE, routine_points(PROFILE) if routine else None)
    began = time.perf_counter()
    for i in range(polls):
        unit = 1 + i % meters
        for request in plan:
            if request.function_code == 1:
                reply = await client.read_coils(
                    request.address, count=request.count, device_id=unit
                )
                data = reply.bits
            elif request.function_code == 3:
                reply = await client.read_holding_registers(
                    request.address, count=request.count, device_id=unit
                )
                data = reply.registers
            else:
                reply = await client.read_input_registers(
                    request.address, count=request.count, device_id=unit
                )
                data = reply.registers
            decode_points(PROFILE, request, data)
    elapsed = time.perf_counter() - began
    client.close()
    return polls / elapsed


async def _rtu_rate(port: str, reads: int) -> float:
    client = AsyncModbusSerialClient(port, baudrate=9600, timeout=3)
    await client.connect()
    began = time.perf_counter()
    await _block_reads(client, reads, 1)
    elapsed = time.perf_counter() - began
    client.close()
    return reads / elapsed


async def _server_cost_us(device: SimDevice, reads: int) -> float:
    """Microseconds of server-side work per 32-register read, without any transport.

    Uses pymodbus's (internal) ``SimRuntime``, the object its server calls for each
    request, so the figure isolates datastore + action cost from framing and sockets.
    """
    from pymodbus.simulator.simruntime import SimRuntime

    runtime = SimRuntime(device)
    began = time.perf_counter()
    for _ in range(reads):
        await runtime.async_getValues(4, BLOCK_ADDRESS, BLOCK_COUNT)
    return (time.perf_counter() - began) / reads * 1e6


def _server_costs(reads: int) -> tuple[float, float]:
    from pymodbus import FramerType

    from meter_sim.modbus_server import ModbusMeter, ModbusSimServer

    start = datetime(2026, 11, 24, tzinfo=UTC)
    ticks = [start]

    def now() -> datetime:
        # One simulated second per read, so every read integrates a little consumption.
        from datetime import timedelta

        ticks[0] += timedelta(seconds=1)
        return ticks[0]

    sim = ModbusSimServer([ModbusMeter(1, _models(1)[0], PROFILE)], now, framer=FramerType.SOCKET)
    bare = min(asyncio.run(_server_cost_us(_bare_device(), reads)) for _ in range(3))
    simulated = min(asyncio.run(_server_cost_us(sim.devices[0], reads)) for _ in range(3))
    return bare, simulated


def _with_server(kind: str, meters: int, run):  # type: ignore[no-untyped-def]
    ctx = mp.get_context("spawn")
    ready: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    stop = ctx.Event()
    process = ctx.Process(target=_server_process, args=(kind, meters, ready, stop))
    process.start()
    try:
        endpoint = ready.get(timeout=60)
        return asyncio.run(run(endpoint))
    finally:
        stop.set()
        process.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=5000, help="reads per TCP case")
    parser.add_argument("--rtu-reads", type=int, default=1000, help="reads per RTU case")
    parser.add_argument("--polls", type=int, default=500, help="full meter polls")
    parser.add_argument("--meters", type=int, default=10, help="simulated meters (unit ids)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per case; the best counts")
    args = parser.parse_args()

    rows: list[tuple[str, str, str]] = []
    rounds = range(args.rounds)

    def best(kind: str, meters: int, run) -> float:  # type: ignore[no-untyped-def]
        return max(_with_server(kind, meters, run) for _ in rounds)

    for connections in (1, 4):
        bare = best("bare-tcp", 1, lambda port, c=connections: _tcp_rate(port, args.reads, c, 1))
        sim = best(
            "sim-tcp",
            args.meters,
            lambda port, c=connections: _tcp_rate(port, args.reads, c, args.meters),
        )
        case = f"TCP, read 32 input registers, {connections} connection(s)"
        rows.append((case, f"{bare:,.0f} reads/s", f"{sim:,.0f} reads/s ({sim / bare:.0%})"))
    for routine, label in ((True, "routine"), (False, "full")):
        polls = best(
            "sim-tcp",
            args.meters,
            lambda port, r=routine: _poll_rate(port, args.polls, args.meters, r),
        )
        requests = len(plan_reads(PROFILE, routine_points(PROFILE) if routine else None))
        rows.append(
            (
                f"TCP, {label} prepaid-meter poll ({requests} requests, decoded)",
                "-",
                f"{polls:,.0f} polls/s",
            )
        )
    bare_rtu = best("bare-rtu", 1, lambda port: _rtu_rate(port, args.rtu_reads))
    sim_rtu = best("sim-rtu", args.meters, lambda port: _rtu_rate(port, args.rtu_reads))
    rows.append(
        (
            "RTU via pty bridge, read 32 input registers",
            f"{bare_rtu:,.0f} reads/s",
            f"{sim_rtu:,.0f} reads/s ({sim_rtu / bare_rtu:.0%})",
        )
    )
    bare_us, sim_us = _server_costs(args.reads)
    rows.append(
        (
            "server-side work per 32-register read (in-process, no transport)",
            f"{bare_us:,.1f} µs",
            f"{sim_us:,.1f} µs",
        )
    )
    load = os.getloadavg()[0]
    print(f"Modbus simulator benchmark: {args.meters} meters, profile {PROFILE.name}")
    print(
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, best of {args.rounds} rounds,"
        f" load average at the end {load:.1f}"
    )
    print()
    print("| case | bare pymodbus | gridvend simulator |")
    print("| --- | --- | --- |")
    for case, bare_text, sim_text in rows:
        print(f"| {case} | {bare_text} | {sim_text} |")


if __name__ == "__main__":
    main()
