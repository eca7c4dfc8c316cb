"""The meter model, sans-IO: energy, credit, relay, power limit, tamper, clock, events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from meter_sim.faults import FaultConfig
from meter_sim.model import (
    CommandRefused,
    ConfigError,
    InvalidSetting,
    MeterError,
    MeterModel,
    RelayReason,
    TamperKind,
    TokenStatus,
)
from protocols.mqtt import EventKind
from protocols.quantities import Quantity
from tests.meter_sim.factories import T0, central_meter, config, token_meter

HOUR = timedelta(hours=1)


def kinds(model: MeterModel) -> list[EventKind]:
    return [e.kind for e in model.events]


def test_a_new_meter_logs_power_up_with_sequence_one() -> None:
    meter = token_meter()
    assert [(e.seq, e.kind, e.ts) for e in meter.events] == [(1, EventKind.POWER_UP, T0)]


def test_energy_is_the_same_however_time_is_sliced() -> None:
    once, sliced = token_meter(), token_meter()
    once.advance(T0 + 5 * HOUR)
    for step in range(1, 5 * 3600 // 37 + 1):
        sliced.advance(T0 + timedelta(seconds=37 * step))
    sliced.advance(T0 + 5 * HOUR)
    assert once.energy_import_kwh == sliced.energy_import_kwh
    assert once.credit_kwh == sliced.credit_kwh


def test_consumption_decrements_credit_by_exactly_the_energy_used() -> None:
    meter = token_meter(initial_credit_kwh=Decimal(50))
    meter.advance(T0 + 3 * HOUR)
    used = meter.energy_import_kwh - Decimal(100)
    assert used > 0
    assert meter.credit_kwh is not None
    assert abs(Decimal(50) - meter.credit_kwh - used) <= Decimal("0.000001")


def test_relay_opens_with_credit_exhausted_when_credit_reaches_zero() -> None:
    meter = token_meter(initial_credit_kwh=Decimal("0.5"))
    meter.advance(T0 + 24 * HOUR)
    assert meter.credit_kwh == 0
    assert not meter.relay_closed
    assert meter.relay_reason is RelayReason.CREDIT_EXHAUSTED
    assert meter.energy_import_kwh == Decimal("100.5")
    assert kinds(meter)[-2:] == [EventKind.CREDIT_EXHAUSTED, EventKind.RELAY_CHANGED]
    assert meter.measurements()[Quantity.ACTIVE_POWER_W] == 0


def test_low_credit_is_reported_once_when_credit_falls_below_the_threshold() -> None:
    meter = token_meter(initial_credit_kwh=Decimal(8), low_credit_kwh=Decimal(5))
    meter.advance(T0 + 48 * HOUR)
    assert kinds(meter).count(EventKind.LOW_CREDIT) == 1


def test_adding_credit_closes_a_relay_opened_by_exhausted_credit() -> None:
    meter = token_meter(initial_credit_kwh=Decimal("0.1"))
    meter.advance(T0 + 10 * HOUR)
    assert not meter.relay_closed
    meter.add_credit(Decimal(20))
    assert meter.relay_closed
    assert meter.relay_reason is RelayReason.CREDIT_RESTORED


def test_adding_credit_does_not_close_a_relay_opened_by_the_head_end() -> None:
    meter = token_meter()
    meter.set_relay(False)
    meter.add_credit(Decimal(20))
    assert not meter.relay_closed
    assert meter.relay_reason is RelayReason.REMOTE


def test_connecting_a_token_meter_without_credit_is_refused() -> None:
    meter = token_meter(initial_credit_kwh=Decimal(0))
    assert not meter.relay_closed
    with pytest.raises(CommandRefused, match="no credit"):
        meter.set_relay(True)
    assert not meter.relay_closed


def test_open_relay_stops_consumption() -> None:
    meter = central_meter()
    meter.set_relay(False)
    meter.advance(T0 + 12 * HOUR)
    assert meter.energy_import_kwh == Decimal(100)
    assert meter.measurements()[Quantity.CURRENT_A] == 0


def test_central_meter_has_no_credit_register_and_obeys_commands() -> None:
    meter = central_meter()
    assert meter.credit_kwh is None
    assert Quantity.CREDIT_KWH not in meter.measurements()
    events = meter.set_relay(False)
    assert [e.kind for e in events] == [EventKind.RELAY_CHANGED]
    assert meter.set_relay(False) == []
    meter.set_relay(True)
    assert meter.relay_closed


def test_power_above_the_limit_for_the_trip_time_opens_the_relay_then_reconnects() -> None:
    meter = central_meter(power_limit_w=100, power_limit_trip_s=60, power_limit_reconnect_s=300)
    meter.advance(T0 + timedelta(seconds=60))
    assert not meter.relay_closed
    assert meter.relay_reason is RelayReason.POWER_LIMIT
    exceeded = [e for e in meter.events if e.kind is EventKind.POWER_LIMIT_EXCEEDED]
    assert exceeded[0].ts == T0 + timedelta(seconds=60)
    assert exceeded[0].detail["limit_w"] == 100
    meter.advance(T0 + timedelta(seconds=360))
    assert meter.relay_closed
    assert meter.relay_reason is RelayReason.AUTO_RECONNECT


def test_power_limit_without_auto_reconnect_stays_open() -> None:
    meter = central_meter(power_limit_w=100, power_limit_reconnect_s=None)
    meter.advance(T0 + 5 * HOUR)
    assert not meter.relay_closed
    assert kinds(meter).count(EventKind.POWER_LIMIT_EXCEEDED) == 1


def test_power_limit_above_demand_never_trips() -> None:
    meter = central_meter(power_limit_w=100_000)
    meter.advance(T0 + 24 * HOUR)
    assert meter.relay_closed


@pytest.mark.parametrize("watts", [0, -1, 1_000_001, True, 1.5])
def test_out_of_range_power_limit_is_refused_and_changes_nothing(watts: object) -> None:
    meter = central_meter(power_limit_w=2000)
    with pytest.raises(InvalidSetting):
        meter.set_power_limit(watts)  # type: ignore[arg-type]
    assert meter.power_limit_w == 2000


def test_tamper_opens_the_relay_when_configured_and_clearing_closes_it() -> None:
    meter = central_meter(open_relay_on_tamper=True)
    events = meter.raise_tamper(TamperKind.COVER_OPEN, T0 + HOUR)
    assert [e.kind for e in events] == [EventKind.COVER_OPEN, EventKind.RELAY_CHANGED]
    with pytest.raises(CommandRefused, match="tamper"):
        meter.set_relay(True)
    meter.clear_tamper()
    assert meter.relay_closed
    assert meter.tamper == frozenset()


def test_seeded_tamper_fault_raises_tamper_events() -> None:
    meter = central_meter(faults=FaultConfig(tamper_per_day=24))
    meter.advance(T0 + 24 * HOUR)
    tampers = [
        e for e in meter.events if e.kind in (EventKind.COVER_OPEN, EventKind.MAGNETIC_TAMPER)
    ]
    assert 5 <= len(tampers) <= 60
    again = central_meter(faults=FaultConfig(tamper_per_day=24))
    again.advance(T0 + 24 * HOUR)
    assert [e.ts for e in again.events] == [e.ts for e in meter.events]


def test_supply_outage_stops_consumption_and_logs_power_down_and_up() -> None:
    meter = central_meter()
    meter.power_down(T0 + HOUR)
    energy = meter.energy_import_kwh
    assert meter.measurements()[Quantity.VOLTAGE_V] == 0
    meter.power_up(T0 + 3 * HOUR)
    assert meter.energy_import_kwh == energy
    assert kinds(meter)[-2:] == [EventKind.POWER_DOWN, EventKind.POWER_UP]


def test_clock_drift_moves_the_meter_clock_away_from_true_time() -> None:
    meter = central_meter(faults=FaultConfig(clock_drift_ppm=1000))
    meter.advance(T0 + 10 * HOUR)
    assert meter.meter_time - meter.now == timedelta(seconds=36)


def test_set_clock_sets_the_meter_clock_and_restarts_drift() -> None:
    meter = central_meter(faults=FaultConfig(clock_drift_ppm=1000))
    meter.advance(T0 + 10 * HOUR)
    meter.set_clock(meter.now)
    assert meter.meter_time == meter.now
    with pytest.raises(InvalidSetting):
        meter.set_clock(datetime(2026, 1, 1))  # naive


def test_events_are_stamped_with_the_meter_clock() -> None:
    meter = central_meter()
    meter.set_clock(T0 + timedelta(minutes=5))
    meter.set_relay(False)
    assert meter.events[-1].ts == T0 + timedelta(minutes=5)


def test_time_going_backwards_is_refused() -> None:
    meter = token_meter()
    meter.advance(T0 + HOUR)
    with pytest.raises(MeterError, match="backwards"):
        meter.advance(T0)
    with pytest.raises(MeterError, match="aware"):
        meter.advance(datetime(2026, 3, 2, 2, 0))


def test_three_phase_values_add_up_to_the_total() -> None:
    meter = central_meter(phases=3)
    meter.advance(T0 + 18 * HOUR)
    phases = meter.phase_values()
    assert len(phases) == 3
    assert sum(p.active_power_w for p in phases) == meter.measurements()[Quantity.ACTIVE_POWER_W]
    assert all(p.voltage_v > 200 for p in phases)


def test_measurements_use_each_quantity_resolution() -> None:
    meter = token_meter()
    meter.advance(T0 + timedelta(hours=7, seconds=13))
    for quantity, value in meter.measurements().items():
        assert value.as_tuple().exponent == -quantity.info.decimals, quantity


@pytest.mark.parametrize("digits", ["123", "1234567890123456789a", "123456789012345678901", ""])
def test_malformed_token_gives_error_and_changes_nothing(digits: str) -> None:
    meter = token_meter()
    credit = meter.credit_kwh
    result = meter.enter_token(digits, T0)
    assert result.status is TokenStatus.ERROR
    assert meter.credit_kwh == credit
    assert meter.events[-1].kind is EventKind.TOKEN_REJECTED


def test_central_meter_does_not_take_tokens() -> None:
    result = central_meter().enter_token("1" * 20, T0)
    assert result.status is TokenStatus.NOT_SUPPORTED


@pytest.mark.parametrize(
    "changes",
    [
        {"serial": "bad/serial"},
        {"meter_number": "12345"},
        {"phases": 2},
        {"initial_credit_kwh": Decimal(-1)},
        {"initial_energy_kwh": Decimal("NaN")},
        {"power_limit_w": 0},
        {"rated_max_current_a": 0},
    ],
)
def test_invalid_configuration_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        config(**changes)


def test_naive_start_time_is_refused() -> None:
    with pytest.raises(ConfigError):
        MeterModel(config(), datetime(2026, 1, 1))


def test_take_events_hands_each_event_out_once() -> None:
    meter = central_meter()
    assert [e.kind for e in meter.take_events()] == [EventKind.POWER_UP]
    assert meter.take_events() == []
    meter.set_relay(False)
    assert [e.seq for e in meter.take_events()] == [2]
    assert meter.event_count == 2


def test_same_seed_same_readings_different_seed_different_readings() -> None:
    a, b, c = central_meter(), central_meter(), central_meter(seed=43)
    for m in (a, b, c):
        m.advance(T0 + 6 * HOUR)
    assert a.measurements() == b.measurements()
    assert a.energy_import_kwh != c.energy_import_kwh


def test_datetime_in_another_zone_is_taken_as_the_same_instant() -> None:
    meter = central_meter()
    later = (T0 + HOUR).astimezone(UTC)
    meter.advance(later)
    assert meter.now == later
