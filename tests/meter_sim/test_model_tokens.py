"""STS tokens typed into the meter model: every result a real meter shows."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from meter_sim.fleet import sts_meter_pan
from meter_sim.model import DecoderSettings, RelayReason, TamperKind, TokenStatus
from protocols.mqtt import EventKind
from tests.meter_sim.factories import T0, config, token_meter
from tests.meter_sim.vend import Vendor

AT = T0 + timedelta(minutes=10)


def test_credit_token_is_accepted_and_adds_its_kwh() -> None:
    meter = token_meter(initial_credit_kwh=Decimal(0))
    vendor = Vendor(meter.config)
    result = meter.enter_token(vendor.credit(Decimal("25.5"), AT), AT)
    assert result.status is TokenStatus.ACCEPT
    assert result.credit_added_kwh == Decimal("25.5")
    assert result.tid == vendor.tid(AT)
    assert meter.credit_kwh == Decimal("25.5")
    assert meter.relay_closed
    assert meter.relay_reason is RelayReason.CREDIT_RESTORED
    assert meter.events[-1].kind is EventKind.TOKEN_ACCEPTED


def test_the_same_token_twice_is_used() -> None:
    meter = token_meter()
    token = Vendor(meter.config).credit(Decimal(10), AT)
    meter.enter_token(token, AT)
    credit = meter.credit_kwh
    result = meter.enter_token(token, AT)
    assert result.status is TokenStatus.USED
    assert result.sts_status == "Used error"
    assert meter.credit_kwh == credit
    assert meter.events[-1].kind is EventKind.TOKEN_REJECTED


def test_a_token_older_than_the_tid_memory_is_old() -> None:
    meter = token_meter(decoder=DecoderSettings(tid_memory_size=3))
    vendor = Vendor(meter.config)
    base = vendor.tid(AT)
    for step in range(1, 4):
        assert meter.enter_token(vendor.credit_with_tid(Decimal(1), base + step), AT).accepted
    result = meter.enter_token(vendor.credit_with_tid(Decimal(1), base), AT)
    assert result.status is TokenStatus.OLD


def test_a_token_for_another_meter_is_rejected() -> None:
    meter = token_meter()
    other = config(meter_number=sts_meter_pan(2))
    result = meter.enter_token(Vendor(other).credit(Decimal(10), AT), AT)
    assert result.status is TokenStatus.REJECT
    assert result.sts_status == "CRC error"


def test_a_token_after_the_key_expiry_number_is_key_expired() -> None:
    meter = token_meter(decoder=DecoderSettings(key_expiry_number=0))
    result = meter.enter_token(Vendor(meter.config).credit(Decimal(10), AT), AT)
    assert result.status is TokenStatus.KEY_EXPIRED


def test_a_credit_token_on_a_default_key_meter_is_an_error() -> None:
    meter = token_meter(decoder=DecoderSettings(key_type=1))
    result = meter.enter_token(Vendor(meter.config).credit(Decimal(10), AT), AT)
    assert result.status is TokenStatus.ERROR
    assert result.sts_status == "DDTK error"


def test_power_limit_token_sets_the_limit() -> None:
    meter = token_meter()
    result = meter.enter_token(Vendor(meter.config).power_limit(1500, AT), AT)
    assert result.status is TokenStatus.ACCEPT
    assert meter.power_limit_w == 1500


def test_clear_credit_token_empties_the_register_and_opens_the_relay() -> None:
    meter = token_meter(initial_credit_kwh=Decimal(40))
    meter.enter_token(Vendor(meter.config).clear_credit(AT), AT)
    assert meter.credit_kwh == 0
    assert not meter.relay_closed
    assert meter.relay_reason is RelayReason.CREDIT_EXHAUSTED


def test_clear_tamper_token_clears_the_tamper_and_closes_the_relay() -> None:
    meter = token_meter(open_relay_on_tamper=True)
    meter.raise_tamper(TamperKind.MAGNETIC, AT)
    assert not meter.relay_closed
    meter.enter_token(Vendor(meter.config).clear_tamper(AT), AT)
    assert meter.tamper == frozenset()
    assert meter.relay_closed


def test_key_change_installs_the_new_key_and_old_key_tokens_stop_working() -> None:
    meter = token_meter()
    vendor = Vendor(meter.config)
    stale = Vendor(meter.config)  # still believes in the old key
    first, second = vendor.key_change(key_revision=2)
    assert meter.enter_token(first, AT).status is TokenStatus.KEY_CHANGE_1ST
    assert meter.enter_token(second, AT).status is TokenStatus.ACCEPT
    assert meter.decoder_state is not None and meter.decoder_state.key_revision == 2
    later = AT + timedelta(minutes=1)
    assert meter.enter_token(vendor.credit(Decimal(5), later), later).accepted
    assert meter.enter_token(stale.credit(Decimal(5), later), later).status is TokenStatus.REJECT


def test_rollover_key_change_moves_to_base_date_2014_and_clears_tid_memory() -> None:
    meter = token_meter(decoder=DecoderSettings(base_date_year=1993))
    vendor = Vendor(meter.config)
    at = T0
    token = vendor.credit_with_tid(Decimal(1), 0xFFFFF0)  # near the end of base 1993
    assert meter.enter_token(token, at).accepted
    for section in vendor.rollover(new_key_revision=2):
        result = meter.enter_token(section, at)
    assert result.status is TokenStatus.ACCEPT
    assert meter.base_date_year == 2014
    assert meter.decoder_state is not None and meter.decoder_state.tid_memory == ()
    assert meter.enter_token(vendor.credit(Decimal(3), at), at).status is TokenStatus.ACCEPT


def test_a_meter_whose_pan_fails_its_check_digit_takes_no_tokens() -> None:
    meter = token_meter(meter_number="600727000000000010")
    result = meter.enter_token("0" * 20, AT)
    assert result.status is TokenStatus.NOT_SUPPORTED
    assert "check digit" in result.reason
