"""Notification dispatcher figures: outbox rows delivered per second.

N pending rows for one account are delivered by ``NotificationDispatcher.run_once``
rounds until none is left, through (a) the recording adapter, which costs nothing, so
the figure is the dispatcher's own database work (claim, then one transaction per
outcome), and (b) the webhook adapter against a local stdlib HTTP receiver (HMAC signing,
one HTTP request per row). With ``--dispatchers 2`` two dispatchers run in threads on
the same rows (the claim must keep them apart: every row is checked to be received once).

Usage: python benchmarks/notification_dispatch.py [--rows 2000] [--dispatchers 1]
       [--database-url URL]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.db import make_engine, make_session_factory, upgrade
from vending.models import Account, Customer, Notification, TariffRecord
from vending.notifications import (
    NotificationAdapter,
    NotificationDispatcher,
    RecordingAdapter,
    WebhookAdapter,
)

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _account(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as session, session.begin():
        session.add(
            TariffRecord(code="BENCH", name="bench", currency="ZAR", timezone="UTC", created_at=NOW)
        )
        customer = Customer(name="Bench", category="residential", created_at=NOW)
        session.add(customer)
        session.flush()
        account = Account(
            account_number="BENCH-1",
            customer_id=customer.id,
            currency="ZAR",
            tariff_code="BENCH",
            created_at=NOW,
        )
        session.add(account)
        session.flush()
        return account.id


def _fill(session_factory: sessionmaker[Session], account_id: int, rows: int, channel: str) -> None:
    with session_factory() as session, session.begin():
        session.execute(delete(Notification))
        session.add_all(
            Notification(
                account_id=account_id,
                kind="low_balance_30",
                channel=channel,
                message="Meter 01234567890: balance 12.00 ZAR, at or below 30% of your "
                "last top-up. Please top up soon.",
                created_at=NOW,
                status="pending",
                attempts=0,
            )
            for _ in range(rows)
        )


def _drain(
    session_factory: sessionmaker[Session], adapters: list[NotificationAdapter], rows: int
) -> float:
    dispatchers = [
        NotificationDispatcher(session_factory, [adapter], worker_id=f"bench-{n}")
        for n, adapter in enumerate(adapters)
    ]

    def work(dispatcher: NotificationDispatcher) -> None:
        while dispatcher.run_once().delivered:
            pass

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(d,)) for d in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    with session_factory() as session:
        delivered = session.scalar(select(func.count()).where(Notification.status == "delivered"))
    assert delivered == rows, f"{delivered} of {rows} delivered"
    return elapsed


def _receiver() -> tuple[ThreadingHTTPServer, Counter[str]]:
    keys: Counter[str] = Counter()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                keys[self.headers["Idempotency-Key"]] += 1
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, keys


def run(database_url: str, rows: int, dispatchers: int) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    session_factory = make_session_factory(engine)
    account_id = _account(session_factory)

    _fill(session_factory, account_id, rows, "record")
    recorders: list[NotificationAdapter] = [RecordingAdapter() for _ in range(dispatchers)]
    elapsed = _drain(session_factory, recorders, rows)
    print(
        f"recording adapter: {rows} rows, {dispatchers} dispatcher(s): "
        f"{rows / elapsed:,.0f} rows/s ({elapsed * 1000 / rows:.2f} ms each)"
    )

    server, keys = _receiver()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    _fill(session_factory, account_id, rows, "webhook")
    hooks: list[NotificationAdapter] = [
        WebhookAdapter(url, b"bench-secret") for _ in range(dispatchers)
    ]
    elapsed = _drain(session_factory, hooks, rows)
    for hook in hooks:
        hook.close()
    server.shutdown()
    duplicates = sum(count - 1 for count in keys.values())
    print(
        f"webhook adapter:   {rows} rows, {dispatchers} dispatcher(s): "
        f"{rows / elapsed:,.0f} rows/s ({elapsed * 1000 / rows:.2f} ms each); "
        f"received {len(keys)} distinct keys, {duplicates} duplicates"
    )
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--dispatchers", type=int, default=1)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    if args.database_url:
        run(args.database_url, args.rows, args.dispatchers)
        return
    with tempfile.TemporaryDirectory() as tmp:
        run(f"sqlite:///{Path(tmp) / 'bench.db'}", args.rows, args.dispatchers)


if __name__ == "__main__":
    main()
