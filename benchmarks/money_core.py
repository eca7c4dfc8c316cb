"""Vends priced and intervals rated per second by the pure money core (no database, no API).

Cases: token vends on the residential stepped tariff (free units, blocks, pro-rata service
charge, levy, VAT) and on the commercial time-of-use tariff (capacity charge); 15-minute
and one-day intervals rated on both. The figures bound what the REST vend path and the
balance engine can reach: they spend this much CPU per vend/reading before any I/O.

Usage: python benchmarks/money_core.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.vending.factories import ZAR, commercial_tou, residential_stepped, utc
from vending.money import Money
from vending.pricing import VendAccount, price_vend
from vending.rating import rate_interval
from vending.tariffs import AccountTerms


def per_second(work: Callable[[int], object], seconds: float) -> tuple[float, int]:
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        work(done)
        done += 1
    return done / elapsed, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()

    residential, commercial = residential_stepped(), commercial_tou()
    new = VendAccount.new(ZAR)
    kva = VendAccount.new(
        ZAR, terms=AccountTerms(capacity_kva=Decimal(25)), fixed_charged_through=date(2026, 8, 2)
    )
    at = utc(2026, 8, 3, 8)
    cases: list[tuple[str, Callable[[int], object]]] = [
        (
            "vend, residential stepped, R 50-R 1 000",
            lambda i: price_vend(residential, Money(5_000 + (i % 96) * 1_000, ZAR), new, at),
        ),
        (
            "vend, commercial TOU + capacity, R 1 000",
            lambda i: price_vend(
                commercial, Money(100_000, ZAR), kva, at + timedelta(minutes=i % 1440)
            ),
        ),
        (
            "rate 15 min, residential stepped",
            lambda i: rate_interval(
                residential,
                at + timedelta(minutes=15 * (i % 2000)),
                at + timedelta(minutes=15 * (i % 2000 + 1)),
                Decimal("0.250"),
                Decimal(i % 600),
            ),
        ),
        (
            "rate 15 min, commercial TOU + capacity",
            lambda i: rate_interval(
                commercial,
                at + timedelta(minutes=15 * (i % 2000)),
                at + timedelta(minutes=15 * (i % 2000 + 1)),
                Decimal("3.125"),
                Decimal(0),
                AccountTerms(capacity_kva=Decimal(25)),
            ),
        ),
        (
            "rate 1 day, commercial TOU + capacity",
            lambda i: rate_interval(
                commercial,
                at + timedelta(days=i % 300),
                at + timedelta(days=i % 300 + 1),
                Decimal("300"),
                Decimal(0),
                AccountTerms(capacity_kva=Decimal(25)),
            ),
        ),
    ]
    print(f"{'case':45} {'per second':>12} {'ms each':>9} {'runs':>7}")
    for name, work in cases:
        rate, runs = per_second(work, args.seconds)
        print(f"{name:45} {rate:12.0f} {1000 / rate:9.3f} {runs:7d}")


if __name__ == "__main__":
    main()
