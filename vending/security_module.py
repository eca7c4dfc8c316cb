"""The security module: the one narrow door through which vending gets STS tokens.

Real vending systems keep their STS keys inside a certified hardware security module and
ask it for tokens; the vending logic never sees a vending or decoder key. This module
defines that interface (:class:`SecurityModule`) and ships a software implementation on
top of ``protocols.sts`` and the encrypted :class:`~vending.keystore.KeyStore`. An adapter
for a hardware module implements the same four methods (see docs/vending.md).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from protocols.sts import (
    BaseDate,
    CreditToken,
    CreditType,
    DecoderKey,
    EncryptionAlgorithm,
    KeyConfig,
    Token,
    build_key_change,
    derive_decoder_key,
    encode_token,
    group_digits,
    parse_meter_number,
)
from vending.keystore import KeyStore


@dataclass(frozen=True, slots=True)
class MeterKeyRef:
    """Which decoder key a meter holds, without any secret: PAN/DRN, SGC, TI, KRN."""

    meter_number: str
    supply_group_code: str
    tariff_index: str
    key_revision: int


@dataclass(frozen=True, slots=True)
class KeyAttributes:
    """What vending needs to allocate TIDs for a meter's key (no secrets)."""

    base_date: BaseDate
    key_expiry_number: int
    algorithm: EncryptionAlgorithm


@dataclass(frozen=True, slots=True)
class IssuedToken:
    digits: str
    token_class: int
    subclass: int
    tid: int | None
    description: str

    @property
    def grouped(self) -> str:
        """The token as printed on receipts: five groups of four digits."""
        return group_digits(self.digits)


class SecurityModule(Protocol):
    def key_attributes(self, meter: MeterKeyRef) -> KeyAttributes:
        """Base date, KEN and algorithm of the meter's key; KeyStoreError if unknown."""
        ...

    def credit_token(
        self, meter: MeterKeyRef, *, credit_type: CreditType, amount: int, tid: int
    ) -> IssuedToken:
        """A class 0 credit token; ``amount`` in the credit type's base units (0.1 kWh)."""
        ...

    def management_token(self, meter: MeterKeyRef, token: Token) -> IssuedToken:
        """A class 2 meter-specific management token (power limit, clear credit...)."""
        ...

    def key_change_tokens(
        self, current: MeterKeyRef, new: MeterKeyRef, *, rollover: bool | None = None
    ) -> list[IssuedToken]:
        """The key change section tokens moving a meter from ``current`` to ``new``."""
        ...


class SoftwareSecurityModule:
    """The :class:`SecurityModule` in software, with derived decoder keys cached.

    Cached decoder keys expire after ``cache_ttl_s`` so a retired vending key stops
    working everywhere within that time; ``invalidate()`` clears the cache at once.
    ``session_factory`` must give read-only sessions that do not wait for the caller's
    own open transaction (see gridvend.db.make_read_only_session_factory): the module is
    called in the middle of a vend.
    """

    def __init__(
        self,
        keystore: KeyStore,
        session_factory: sessionmaker[Session],
        *,
        cache_size: int = 10_000,
        cache_ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keystore = keystore
        self._session_factory = session_factory
        self._cache: OrderedDict[MeterKeyRef, tuple[float, KeyConfig, DecoderKey]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_ttl_s = cache_ttl_s
        self._clock = clock
        self._lock = threading.Lock()  # vends run in several threads

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()

    def key_attributes(self, meter: MeterKeyRef) -> KeyAttributes:
        config, _ = self._keys(meter)
        return KeyAttributes(config.base_date, config.key_expiry_number, config.algorithm)

    def credit_token(
        self, meter: MeterKeyRef, *, credit_type: CreditType, amount: int, tid: int
    ) -> IssuedToken:
        _, decoder_key = self._keys(meter)
        token = CreditToken(credit_type=credit_type, tid=tid, amount=amount)
        return _issued(token, encode_token(token, decoder_key), f"credit {credit_type.name}")

    def management_token(self, meter: MeterKeyRef, token: Token) -> IssuedToken:
        _, decoder_key = self._keys(meter)
        return _issued(token, encode_token(token, decoder_key), type(token).__name__)

    def key_change_tokens(
        self, current: MeterKeyRef, new: MeterKeyRef, *, rollover: bool | None = None
    ) -> list[IssuedToken]:
        current_config, _ = self._keys(current)
        new_config, _ = self._keys(new)
        pan = parse_meter_number(current.meter_number)
        change = build_key_change(current_config, new_config, pan, rollover=rollover)
        return [
            _issued(section, digits, f"key change section {index}")
            for index, (section, digits) in enumerate(
                zip(change.sections, change.tokens, strict=True), start=1
            )
        ]

    def _keys(self, meter: MeterKeyRef) -> tuple[KeyConfig, DecoderKey]:
        now = self._clock()
        with self._lock:
            cached = self._cache.get(meter)
            if cached is not None and now - cached[0] < self._cache_ttl_s:
                self._cache.move_to_end(meter)
                return cached[1], cached[2]
        with self._session_factory() as session:
            config = self._keystore.key_config(
                session, meter.supply_group_code, meter.key_revision, meter.tariff_index
            )
        decoder_key = derive_decoder_key(config, parse_meter_number(meter.meter_number))
        with self._lock:
            self._cache[meter] = (now, config, decoder_key)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return config, decoder_key


def _issued(token: object, digits: str, description: str) -> IssuedToken:
    return IssuedToken(
        digits=digits,
        token_class=int(getattr(token, "token_class", 0)),
        subclass=int(getattr(token, "subclass", 0)),
        tid=getattr(token, "tid", None),
        description=description,
    )
