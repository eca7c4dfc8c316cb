"""How many simulated MQTT meters one process runs: N meters, 15-minute readings, x60.

Starts a private mosquitto (or uses --broker HOST:PORT), runs an MqttFleet of N meters
in this process, and counts the readings that reach a subscriber running in a separate
process. Prints connect time, readings expected vs received per simulated interval,
the schedule lag, CPU time and peak memory of the fleet process.

    .venv/bin/python benchmarks/sim_mqtt_fleet.py --meters 10000 --speed 60 --intervals 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meter_sim.fleet import MqttFleet, describe_fleet


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _mosquitto() -> Iterator[tuple[str, int]]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\n"
            "max_queued_messages 100000\npersistence false\nmax_keepalive 3600\n"
        )
        proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                time.sleep(0.05)
            yield "127.0.0.1", port
        finally:
            proc.terminate()
            proc.wait(10)


def _count_readings(host: str, port: int, prefix: str, out: Any, stop: Any) -> None:
    """Subscriber process: count telemetry messages until ``stop`` is set, then report."""
    import aiomqtt

    async def main() -> None:
        total = 0
        async with aiomqtt.Client(host, port, identifier=f"bench-counter-{os.getpid()}") as client:
            await client.subscribe(f"{prefix}ami/v1/meters/+/telemetry", qos=1)
            out.send("ready")

            async def count() -> None:
                nonlocal total
                async for _ in client.messages:
                    total += 1

            counter = asyncio.create_task(count())
            while not stop.is_set():
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # let in-flight readings land
            counter.cancel()
        out.send(total)

    asyncio.run(main())


async def _run(args: argparse.Namespace, host: str, port: int) -> None:
    prefix = f"bench-{os.getpid()}/"
    configs = describe_fleet(args.meters, seed=args.seed)
    interval_real = args.interval_s / args.speed
    parent, child = multiprocessing.Pipe()
    stop = multiprocessing.Event()
    counter = multiprocessing.Process(
        target=_count_readings, args=(host, port, prefix, child, stop), daemon=True
    )
    counter.start()
    assert parent.recv() == "ready"
    cpu0 = time.process_time()
    t0 = time.monotonic()
    # Start on an interval end, so the run covers exactly --intervals readings after the first.
    now_s = int(datetime.now(UTC).timestamp())
    start = datetime.fromtimestamp(now_s - now_s % args.interval_s, UTC)
    async with MqttFleet(
        host,
        port,
        configs,
        topic_prefix=prefix,
        speed=args.speed,
        interval_s=args.interval_s,
        start=start,
        poll_s=args.poll_s,
        upload_spread_s=args.upload_spread_s,
        keepalive_s=args.keepalive_s,
        connect_timeout_s=600,
    ) as fleet:
        connected = time.monotonic()
        cpu_connect = time.process_time() - cpu0
        print(
            f"connected {args.meters} meters in {connected - t0:.1f} s (CPU {cpu_connect:.1f} s)",
            flush=True,
        )
        run_t0 = time.monotonic()
        cpu_run0 = time.process_time()
        max_lag = 0.0
        max_boundary = 0.0
        # Run past the last interval end by half an interval so its readings complete.
        while time.monotonic() - run_t0 < interval_real * (args.intervals + 0.5):
            await asyncio.sleep(1.0)
            stats = fleet.stats()
            max_lag = max(max_lag, stats.lag_s)
            max_boundary = max(max_boundary, stats.boundary_s)
            print(
                f"  t={time.monotonic() - run_t0:5.1f}s sim={stats.simulated_now:%H:%M} "
                f"readings={stats.readings} published={stats.published} "
                f"lag={stats.lag_s:.2f}s boundary={stats.boundary_s:.2f}s",
                flush=True,
            )
        run_real_elapsed = time.monotonic() - run_t0
        cpu_run = time.process_time() - cpu_run0
        stats = fleet.stats()
        stop_t0 = time.monotonic()
    stopped = time.monotonic() - stop_t0
    stop.set()
    received = parent.recv() if parent.poll(60) else -1
    counter.join(5)
    expected = args.meters * (args.intervals + 1)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print()
    print(f"meters                {args.meters}")
    print(
        f"speed                 x{args.speed:g} "
        f"({args.interval_s} s interval = {interval_real:.1f} s real)"
    )
    print(f"connect               {connected - t0:.1f} s")
    print(f"run                   {run_real_elapsed:.1f} s real, {args.intervals} intervals")
    print(f"readings taken        {stats.readings} (start + every interval)")
    print(
        f"readings received     {received} by a subscriber in another process ({expected} expected)"
    )
    print(f"reading rate          {args.meters / interval_real:.0f} msg/s needed")
    print(f"upload spread         {args.upload_spread_s} simulated s")
    print(f"max schedule lag      {max_lag:.2f} s")
    print(f"slowest interval end  {max_boundary:.2f} s to take and queue {args.meters} readings")
    print(f"fleet CPU while running {cpu_run / run_real_elapsed * 100:.0f}% of one core")
    print(f"fleet peak RSS        {rss_mb:.0f} MiB")
    print(f"clean shutdown        {stopped:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--speed", type=float, default=60.0)
    parser.add_argument("--interval-s", type=int, default=900)
    parser.add_argument("--intervals", type=int, default=2)
    parser.add_argument("--poll-s", type=int, default=60)
    parser.add_argument(
        "--upload-spread-s",
        type=int,
        default=0,
        help="each meter uploads its reading up to this many simulated seconds late",
    )
    parser.add_argument("--keepalive-s", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--broker", help="HOST:PORT of a running broker (default: own mosquitto)")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.broker:
        host, port = args.broker.rsplit(":", 1)
        asyncio.run(_run(args, host, int(port)))
    else:
        with _mosquitto() as (host, port):
            asyncio.run(_run(args, host, port))


if __name__ == "__main__":
    main()
