"""STS token generation speed on one core.

Run: ``.venv/bin/python benchmarks/sts_bench.py [--tokens N]``

Prints tokens per second for: EA07 credit tokens with a known decoder key (the vending hot
path: build the value, CRC, encrypt, transpose, 20 digits), the same with EA11 MISTY1 and
EA09 DEA, EA07 with DKGA02 / DKGA04 key derivation for every token (a different meter each
time, so no per-key cache helps), and meter-side decoding. Single process, single thread;
each figure is the best of three runs, timed in CPU time of this process
(``time.process_time``) so that other work on a shared machine does not count against it.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

from protocols.sts import (
    CreditToken,
    CreditType,
    DecoderKey,
    KeyConfig,
    MeterPan,
    decode_token,
    derive_decoder_key,
    encode_token,
    parse_meter_number,
)

PAN = parse_meter_number("600727000000000009")
STA_KEY = DecoderKey.from_hex("e653341f9d5bf36f", "07")
DEA_KEY = DecoderKey.from_hex("e653341f9d5bf36f", "09")
MISTY_KEY = DecoderKey.from_hex("f94b6ed353c3bfdb113e2d3a7ea3c41d", "11")
DKGA02 = KeyConfig(bytes.fromhex("abababababababab"), "123456", "01", 1, dkga="02")
DKGA04 = KeyConfig(bytes.fromhex("abababababababab949494949494949401234567"), "123457", "01", 1)
TID0 = 5_871_715


def _rate(work: Callable[[int], object], count: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for i in range(count):
            work(i)
        best = min(best, time.process_time() - start)
    return count / best


def _credit(key: DecoderKey) -> Callable[[int], object]:
    def work(i: int) -> object:
        return encode_token(
            CreditToken(CreditType.ELECTRICITY, TID0 + i, 100 + i % 10_000, i & 15), key
        )

    return work


def _credit_with_derivation(config: KeyConfig, count: int) -> Callable[[int], object]:
    # A different meter for every token, so every token needs a fresh decoder key (and
    # STA's per-key round tables are rebuilt): the worst case for a vending service.
    pans = [MeterPan.from_parts("12", f"{i:08d}") for i in range(count)]

    def work(i: int) -> object:
        key = derive_decoder_key(config, pans[i])
        return encode_token(
            CreditToken(CreditType.ELECTRICITY, TID0 + i, 100 + i % 10_000, i & 15), key
        )

    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=20_000, help="tokens per run")
    count = parser.parse_args().tokens
    tokens = [_credit(STA_KEY)(i) for i in range(count)]
    rows = [
        ("EA07 credit token, known decoder key", _rate(_credit(STA_KEY), count)),
        ("EA11 (MISTY1) credit token, known key", _rate(_credit(MISTY_KEY), count)),
        ("EA09 (DEA) credit token, known key", _rate(_credit(DEA_KEY), count)),
        (
            "EA07 credit token + DKGA02, new meter each",
            _rate(_credit_with_derivation(DKGA02, count), count),
        ),
        (
            "EA07 credit token + DKGA04, new meter each",
            _rate(_credit_with_derivation(DKGA04, count), count),
        ),
        (
            "EA07 decode (meter side, parse + decrypt + CRC)",
            _rate(lambda i: decode_token(tokens[i], STA_KEY), count),
        ),
    ]
    print(
        f"STS token generation, one core ({platform.python_implementation()} "
        f"{platform.python_version()}, {platform.machine()}), {count} tokens per run, best of 3"
    )
    print(f"{'operation':<50} {'tokens/s':>12}")
    for name, rate in rows:
        print(f"{name:<50} {rate:>12,.0f}")


if __name__ == "__main__":
    main()
