"""Invariants of the meter model under random operation sequences (hypothesis)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from meter_sim.load import LoadProfile
from meter_sim.model import MeterError, PrepaidMode
from tests.meter_sim.factories import T0, central_meter, token_meter

_steps = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.integers(0, 6 * 3600)),
        st.tuples(st.just("relay"), st.booleans()),
        st.tuples(st.just("credit"), st.integers(1, 5000)),
        st.tuples(st.just("limit"), st.one_of(st.none(), st.integers(1, 5000))),
        st.tuples(st.just("outage"), st.booleans()),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(
    steps=_steps,
    seed=st.integers(0, 2**32),
    credit_milli=st.integers(0, 20_000),
    mode=st.sampled_from(PrepaidMode),
)
def test_energy_never_decreases_and_credit_never_goes_negative(
    steps: list[tuple[str, object]], seed: int, credit_milli: int, mode: PrepaidMode
) -> None:
    factory = token_meter if mode is PrepaidMode.TOKEN else central_meter
    meter = factory(seed=seed, initial_credit_kwh=Decimal(credit_milli).scaleb(-3))
    now = T0
    last_energy = meter.energy_import_kwh
    for action, arg in steps:
        try:
            if action == "advance":
                assert isinstance(arg, int)
                now += timedelta(seconds=arg)
                meter.advance(now)
            elif action == "relay":
                meter.set_relay(bool(arg))
            elif action == "credit":
                assert isinstance(arg, int)
                meter.add_credit(Decimal(arg).scaleb(-2))
            elif action == "limit":
                meter.set_power_limit(arg)  # type: ignore[arg-type]
            elif action == "outage":
                (meter.power_down if arg else meter.power_up)(now)
        except MeterError:
            pass  # a refused command; the invariants below must hold all the same
        assert meter.energy_import_kwh >= last_energy
        last_energy = meter.energy_import_kwh
        if mode is PrepaidMode.TOKEN:
            assert meter.credit_kwh is not None and meter.credit_kwh >= 0
            if meter.credit_kwh == 0:
                assert not meter.relay_closed
        else:
            assert meter.credit_kwh is None


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), hours=st.integers(1, 72), phases=st.sampled_from([1, 3]))
def test_an_open_relay_means_no_consumption(seed: int, hours: int, phases: int) -> None:
    meter = central_meter(seed=seed, phases=phases)
    meter.set_relay(False)
    before = meter.energy_import_kwh
    meter.advance(T0 + timedelta(hours=hours))
    assert meter.energy_import_kwh == before
    assert all(p.active_power_w == 0 and p.current_a == 0 for p in meter.phase_values())


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    credit_milli=st.integers(1, 3000),
    base=st.integers(0, 500),
    extra=st.integers(0, 5000),
)
def test_energy_used_equals_credit_used_in_token_mode(
    seed: int, credit_milli: int, base: int, extra: int
) -> None:
    credit = Decimal(credit_milli).scaleb(-3)
    meter = token_meter(
        seed=seed,
        initial_credit_kwh=credit,
        load=LoadProfile(base_load_w=base, peak_load_w=base + extra),
    )
    start_energy = meter.energy_import_kwh
    meter.advance(T0 + timedelta(hours=30))
    assert meter.credit_kwh is not None
    used = meter.energy_import_kwh - start_energy
    assert abs((credit - meter.credit_kwh) - used) <= Decimal("0.000001")
