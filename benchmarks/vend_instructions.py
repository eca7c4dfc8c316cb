"""Instructions per counter vend, counted by valgrind's callgrind: a figure that does not
move with the machine's load (wall-clock and CPU-time rates on this shared machine swing
by a factor of two between runs).

    .venv/bin/python benchmarks/vend_instructions.py [--tree PATH]

The utility, its 50 token meters and the clerk's shift are set up natively (SQLite file in
a temporary directory), then the vend transaction (``vending.api.counter_vend``, no HTTP,
as ``benchmarks/vend_api.py --in-process``) runs under callgrind twice from a copy of that
database: 50 warm-up vends and then N = 10, and then N = 60 vends. Start-up, imports and
warm-up are the same in both runs, so the difference over 50 is one vend's instructions.
``--tree`` measures another checkout (e.g. an older commit in a git worktree) with this
interpreter, for a before/after pair. Takes about three minutes a tree.

``--rest`` counts a whole vend through the REST API instead: the tree's
``benchmarks.vend_api`` server (uvicorn, one process) runs under callgrind, 60 vends warm
it up, its counters are zeroed (``callgrind_control -z``), one client sends 50 vends one
after the other and the counters are dumped (``-d``): HTTP, the token check, the vend and
the answer, both of uvicorn's threads. Threads take turns under valgrind, so what
contention between threads costs is not in this figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARM_UP = 50


def _setup(tree: Path, url: str, out: Path) -> None:
    sys.path[:0] = [str(tree), str(tree / "benchmarks")]
    import vend_api

    made = vend_api._setup(url, 50, 1)
    out.write_text(json.dumps({"kek": made.kek_b64, "meters": made.meters}))


def _vend(tree: Path, url: str, setup_file: Path, vends: int) -> None:
    sys.path[:0] = [str(tree)]
    from gridvend.audit import AuditLog
    from gridvend.collector import tune_for_service
    from gridvend.db import make_engine, make_read_only_session_factory, make_session_factory
    from vending.api import counter_vend
    from vending.counter import PaymentMethod, VendLimits
    from vending.keystore import KeyEncryptionKey, KeyStore
    from vending.security_module import SoftwareSecurityModule

    made = json.loads(setup_file.read_text())
    engine = make_engine(url)
    factory = make_session_factory(engine)
    module = SoftwareSecurityModule(
        KeyStore(KeyEncryptionKey.from_base64(made["kek"])),
        make_read_only_session_factory(engine),
    )
    audit = AuditLog()
    meters = made["meters"]

    def one(i: int) -> None:
        counter_vend(
            factory,
            clerk="clerk-0",
            clerk_key="bench",
            meter_number=meters[i % len(meters)],
            amount=Decimal(f"{50 + i % 50}.00"),
            payment_method=PaymentMethod.CASH,
            reference=f"counted-{i}",
            security_module=module,
            audit=audit,
            clock=lambda: datetime.now(UTC),
            limits=VendLimits(),
        )

    for i in range(WARM_UP):  # every meter's key cached, statements compiled
        one(i)
    tune_for_service()  # as `gridvend serve` runs
    for i in range(WARM_UP, WARM_UP + vends):
        one(i)


def _counted(tree: Path, database: Path, pristine: Path, setup_file: Path, vends: int) -> int:
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(pristine, database)
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={scratch}/callgrind.out",
                *_this_script(tree, database, setup_file, "--vend", str(vends)),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no total:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def _this_script(tree: Path, database: Path, setup_file: Path, *mode: str) -> list[str]:
    return [
        sys.executable,
        __file__,
        *mode,
        "--tree",
        str(tree),
        "--url",
        f"sqlite:///{database}",
        "--setup-file",
        str(setup_file),
    ]


def measure(tree: Path) -> int:
    with tempfile.TemporaryDirectory() as work:
        database = Path(work) / "vends.db"
        setup_file = Path(work) / "setup.json"
        subprocess.run(_this_script(tree, database, setup_file, "--setup-only"), check=True)
        pristine = Path(work) / "pristine.db"
        shutil.copyfile(database, pristine)
        few = _counted(tree, database, pristine, setup_file, 10)
        many = _counted(tree, database, pristine, setup_file, 60)
    return (many - few) // 50


def measure_rest(tree: Path, warm_up: int = 60, vends: int = 50) -> int:
    sys.path[:0] = [str(tree), str(tree / "benchmarks")]
    import aiohttp
    import vend_api

    with tempfile.TemporaryDirectory() as work:
        made = vend_api._setup(f"sqlite:///{work}/vends.db", 50, 1)
        port = vend_api._free_port()
        out = f"{work}/callgrind.out"
        server = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "uvicorn",
                "benchmarks.vend_api:app_factory",
                "--factory",
                f"--port={port}",
                "--log-level=error",
                "--no-access-log",
            ],
            cwd=tree,
            env={
                **os.environ,
                "BENCH_DATABASE_URL": made.url,
                "BENCH_KEK": made.kek_b64,
                "PYTHONPATH": str(tree),
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        async def sell(first: int, count: int) -> None:
            headers = {"Authorization": f"Bearer {made.tokens[0]}"}
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
                for i in range(first, first + count):
                    body = {
                        "meter_number": made.meters[i % len(made.meters)],
                        "amount": f"{50 + i % 50}.00",
                        "reference": f"counted-{i}",
                    }
                    async with http.post("/api/vending/vends", json=body, headers=headers) as r:
                        if r.status != 201:
                            raise SystemExit(f"vend answered {r.status}: {await r.text()}")

        try:
            _wait_for(port, server)
            asyncio.run(sell(0, warm_up))
            subprocess.run(
                ["callgrind_control", "-z", str(server.pid)], check=True, capture_output=True
            )
            asyncio.run(sell(warm_up, vends))
            subprocess.run(
                ["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True
            )
        finally:
            server.terminate()
            server.wait(120)
        summary = re.search(r"^summary: (\d+)", Path(f"{out}.1").read_text(), re.MULTILINE)
        if summary is None:
            raise SystemExit("callgrind's dump has no summary")
        return int(summary.group(1)) // vends


def _callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


def _wait_for(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 600  # imports under valgrind take a minute or two
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the server exited while starting under valgrind")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit("the server did not start under valgrind")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to measure")
    parser.add_argument(
        "--rest", action="store_true", help="a whole vend through the REST API (see above)"
    )
    parser.add_argument("--setup-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vend", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--setup-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    tree = args.tree.resolve()
    if args.setup_only:
        _setup(tree, args.url, args.setup_file)
        return
    if args.vend is not None:
        _vend(tree, args.url, args.setup_file, args.vend)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    if args.rest:
        print(f"instructions per REST vend (callgrind, the server), tree {tree}", flush=True)
        print(f"  {measure_rest(tree):,} instructions/vend", flush=True)
        return
    print(f"instructions per counter vend (callgrind), tree {tree}", flush=True)
    print(f"  {measure(tree):,} instructions/vend", flush=True)


if __name__ == "__main__":
    main()
