"""How long deriving a customer's grade facts takes (it runs on every GET /accounts/{n}).

One central-balance customer with ``--years`` of half-hourly consumption entries in the
ledger (plus a top-up a week, a disconnection a month), on SQLite or, with
``--database-url``, PostgreSQL. Prints the median and worst of ``--rounds`` derivations.

    .venv/bin/python benchmarks/grading_bench.py --years 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import insert, text
from sqlalchemy.orm import Session, sessionmaker

from gridvend.db import make_engine, make_session_factory, upgrade
from vending.customer_grades import grading_facts
from vending.models import (
    Account,
    BalanceDecision,
    Customer,
    LedgerEntry,
    RatedInterval,
    TariffRecord,
)

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _fill(session_factory: sessionmaker[Session], years: int) -> int:
    with session_factory() as session, session.begin():
        session.add(
            TariffRecord(
                code="T",
                name="T",
                currency="ZAR",
                currency_minor_digits=2,
                timezone="UTC",
                created_at=NOW,
            )
        )
        customer = Customer(name="bench", category="residential", created_at=NOW)
        session.add(customer)
        session.flush()
        account = Account(
            account_number="BENCH1",
            customer_id=customer.id,
            currency="ZAR",
            tariff_code="T",
            debt_recovery={},
            created_at=NOW,
        )
        session.add(account)
        session.flush()
        start = NOW - timedelta(days=365 * years)
        ledger, rated, decisions = [], [], []
        for step in range(365 * years * 48):
            at = start + timedelta(minutes=30 * step)
            ledger.append(
                {"account_id": account.id, "kind": "consumption", "amount_minor": -40,
                 "reference": f"c{step}", "detail": {}, "created_at": at}
            )  # fmt: skip
            rated.append(
                {"account_id": account.id, "meter_id": 1, "quantity": "energy_import",
                 "t_start": at, "t_end": at + timedelta(minutes=30),
                 "energy_kwh": Decimal("0.25"), "charge_minor": 40, "source_offset": step,
                 "rated_at": at}
            )  # fmt: skip
            if step % (48 * 7) == 0:
                ledger.append(
                    {"account_id": account.id, "kind": "payment", "amount_minor": 12_000,
                     "reference": f"p{step}", "detail": {}, "created_at": at}
                )  # fmt: skip
            if step % (48 * 30) == 0:
                decisions.append(
                    {"account_id": account.id, "meter_id": 1, "decided_at": at,
                     "action": "disconnect", "reason": "bench", "balance_minor": 0}
                )  # fmt: skip
        session.execute(insert(LedgerEntry), ledger)
        session.execute(insert(RatedInterval), rated)
        session.execute(insert(BalanceDecision), decisions)
        return customer.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--years", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    schema = None
    if args.database_url:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = make_engine(args.database_url)
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = f"{args.database_url}?options=-csearch_path%3D{schema}"
    else:
        url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    engine = make_engine(url)
    try:
        upgrade(engine)
        session_factory = make_session_factory(engine)
        customer_id = _fill(session_factory, args.years)
        timings = []
        with session_factory() as session:
            customer = session.get_one(Customer, customer_id)
            for _ in range(args.rounds):
                began = time.perf_counter()
                facts = grading_facts(session, customer, NOW)
                timings.append(time.perf_counter() - began)
        print(f"database: {engine.dialect.name}, {args.years} years of half-hourly entries")
        print(f"facts: {facts}")
        print(
            f"grading_facts: median {statistics.median(timings) * 1000:.1f} ms, "
            f"worst {max(timings) * 1000:.1f} ms over {args.rounds} rounds"
        )
    finally:
        engine.dispose()
        if schema:
            with admin.begin() as connection:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


if __name__ == "__main__":
    main()
