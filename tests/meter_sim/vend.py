"""A tiny vending side for tests: real STS tokens for a simulated meter's configuration."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from decimal import Decimal

from meter_sim.model import MeterConfig
from protocols.sts import (
    BaseDate,
    ClearCreditToken,
    ClearTamperToken,
    CreditToken,
    CreditType,
    KeyConfig,
    SetMaximumPowerLimitToken,
    Token,
    build_key_change,
    build_rollover_key_change,
    derive_decoder_key,
    encode_token,
    parse_meter_number,
    round_up_amount,
    tid_from_datetime,
)
from protocols.sts.tokens import CLEAR_ALL_REGISTERS


class Vendor:
    """Issues tokens for one meter, keeping the key configuration it believes the meter has."""

    def __init__(self, config: MeterConfig) -> None:
        self.pan = parse_meter_number(config.meter_number)
        self.keys: KeyConfig = config.decoder.key_config()

    @property
    def base_date(self) -> BaseDate:
        return BaseDate(self.keys.base_date)

    def _encode(self, token: Token) -> str:
        return encode_token(token, derive_decoder_key(self.keys, self.pan))

    def tid(self, at: datetime) -> int:
        return tid_from_datetime(at, self.base_date)

    def credit(self, kwh: Decimal, at: datetime) -> str:
        amount = round_up_amount(int(kwh * 10))
        return self._encode(CreditToken(CreditType.ELECTRICITY, self.tid(at), amount))

    def credit_with_tid(self, kwh: Decimal, tid: int) -> str:
        return self._encode(
            CreditToken(CreditType.ELECTRICITY, tid, round_up_amount(int(kwh * 10)))
        )

    def power_limit(self, watts: int, at: datetime) -> str:
        return self._encode(SetMaximumPowerLimitToken(self.tid(at), round_up_amount(watts)))

    def clear_credit(self, at: datetime) -> str:
        return self._encode(ClearCreditToken(self.tid(at), CLEAR_ALL_REGISTERS))

    def clear_tamper(self, at: datetime) -> str:
        return self._encode(ClearTamperToken(self.tid(at)))

    def key_change(self, **changes: object) -> tuple[str, ...]:
        new = dataclasses.replace(self.keys, **changes)  # type: ignore[arg-type]
        change = build_key_change(self.keys, new, self.pan)
        self.keys = new
        return change.tokens

    def rollover(self, new_key_revision: int) -> tuple[str, ...]:
        change = build_rollover_key_change(self.keys, self.pan, new_key_revision=new_key_revision)
        self.keys = dataclasses.replace(
            self.keys, key_revision=new_key_revision, base_date=BaseDate.Y2014
        )
        return change.tokens
