"""Validation of register reads: one behaviour per test, built from small factories."""

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from headend.validation import (
    Category,
    Flag,
    MeterProfile,
    Quality,
    RegisterRead,
    Status,
    StoredRead,
    VeeSettings,
    Verdict,
    ceil_boundary,
    count_boundaries,
    floor_boundary,
    missing_boundaries,
    validate_read,
    validate_reads,
)
from protocols.quantities import Quantity

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=10)
ENERGY = Quantity.ENERGY_IMPORT_KWH
# 1 phase, 230 V, 60 A: 13.8 kW, so at most 3.45 kWh in 15 minutes (3.795 with the margin).
PROFILE = MeterProfile("M1", phases=1, rated_max_current_a=Decimal(60))


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def read(
    minutes: float,
    value: str,
    quantity: Quantity = ENERGY,
    unit: str | None = None,
    meter: str = "M1",
) -> RegisterRead:
    return RegisterRead(meter, quantity, at(minutes), Decimal(value), unit)


def stored(
    minutes: float,
    value: str,
    quality: Quality = Quality.MEASURED,
    quantity: Quantity = ENERGY,
) -> StoredRead:
    return StoredRead("M1", quantity, at(minutes), Decimal(value), quality)


def judge(
    new: RegisterRead,
    history: list[StoredRead] | None = None,
    profile: MeterProfile = PROFILE,
    settings: VeeSettings | None = None,
    now: datetime = NOW,
) -> Verdict:
    return validate_read(new, history or [], profile, now, settings or VeeSettings())


# --- accepted reads ----------------------------------------------------------------------


def test_first_read_of_a_register_is_accepted_clean() -> None:
    verdict = judge(read(0, "1234.567"))
    assert verdict.status is Status.ACCEPTED
    assert verdict.findings == ()
    assert verdict.quality is Quality.MEASURED
    assert verdict.to_stored() == stored(0, "1234.567")


def test_next_interval_read_within_rating_is_accepted() -> None:
    verdict = judge(read(15, "1003.000"), [stored(0, "1000.000")])
    assert verdict.status is Status.ACCEPTED
    assert verdict.flags == frozenset()


def test_reported_unit_equal_to_the_quantity_unit_is_accepted() -> None:
    assert judge(read(0, "230.1", Quantity.VOLTAGE_V, unit="V")).status is Status.ACCEPTED


def test_timestamp_with_another_offset_is_the_same_instant() -> None:
    plus_two = timezone(timedelta(hours=2))
    new = RegisterRead("M1", ENERGY, at(15).astimezone(plus_two), Decimal("1001"))
    verdict = judge(new, [stored(15, "1001")])
    assert verdict.status is Status.DUPLICATE


# --- record checks: rejected -------------------------------------------------------------


def test_read_for_another_meter_is_rejected() -> None:
    verdict = judge(read(0, "1", meter="M2"))
    assert verdict.status is Status.REJECTED
    assert verdict.flags == {Flag.WRONG_METER}


def test_unknown_quantity_is_rejected_not_raised() -> None:
    bogus = RegisterRead("M1", "gas_m3", at(0), Decimal(1))  # type: ignore[arg-type]
    verdict = judge(bogus)
    assert verdict.flags == {Flag.UNKNOWN_QUANTITY}
    assert verdict.status is Status.REJECTED
    assert verdict.to_stored() is None


def test_unit_differing_from_the_quantity_unit_is_a_mismatch() -> None:
    verdict = judge(read(0, "1234567", unit="Wh"))
    assert verdict.flags == {Flag.UNIT_MISMATCH}
    assert "'kWh'" in verdict.reason and "'Wh'" in verdict.reason


def test_naive_timestamp_is_rejected_as_invalid() -> None:
    new = RegisterRead("M1", ENERGY, datetime(2026, 3, 2), Decimal(1))
    verdict = judge(new)
    assert verdict.flags == {Flag.INVALID_TIMESTAMP}
    assert verdict.to_stored() is None


def test_timestamp_beyond_the_clock_tolerance_is_future() -> None:
    settings = VeeSettings(clock_tolerance=timedelta(minutes=5))
    within = judge(read(0, "1"), now=at(-5), settings=settings)
    beyond = judge(read(0, "1"), now=at(-5) - timedelta(seconds=1), settings=settings)
    assert within.status is Status.ACCEPTED
    assert beyond.flags == {Flag.FUTURE_TIMESTAMP}


def test_timestamp_older_than_max_age_is_stale() -> None:
    settings = VeeSettings(max_read_age=timedelta(days=90))
    verdict = judge(read(0, "1"), now=T0 + timedelta(days=90, seconds=1), settings=settings)
    assert verdict.flags == {Flag.STALE_TIMESTAMP}
    assert judge(read(0, "1"), now=T0 + timedelta(days=90), settings=settings).flags == set()


def test_read_stamped_before_installation_is_rejected() -> None:
    profile = MeterProfile("M1", 1, Decimal(60), installed_at=at(10))
    assert judge(read(9, "1"), profile=profile).flags == {Flag.BEFORE_INSTALL}
    assert judge(read(10, "1"), profile=profile).flags == set()


def test_reads_of_a_previous_register_epoch_are_not_context() -> None:
    # The register restarted at 0 when the meter was exchanged at 0:10.
    profile = MeterProfile("M1", 1, Decimal(60), installed_at=at(10))
    verdict = judge(read(15, "0.400"), [stored(0, "52000")], profile=profile)
    assert verdict.status is Status.ACCEPTED


@pytest.mark.parametrize(
    "value",
    [Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), 1.5, "12", None, Decimal("1E+15")],
)
def test_value_that_is_not_a_finite_decimal_is_invalid(value: object) -> None:
    new = RegisterRead("M1", ENERGY, at(0), value)  # type: ignore[arg-type]
    verdict = judge(new, [stored(-15, "1")])
    assert verdict.flags == {Flag.INVALID_VALUE}
    assert verdict.status is Status.REJECTED


def test_value_with_more_than_nine_decimals_is_invalid() -> None:
    assert judge(read(0, "1.0000000001")).flags == {Flag.INVALID_VALUE}
    assert judge(read(0, "1.000000001")).status is Status.ACCEPTED


@pytest.mark.parametrize(
    ("quantity", "value", "ok"),
    [
        (Quantity.VOLTAGE_V, "0", True),
        (Quantity.VOLTAGE_V, "460", True),  # 2 x 230 V: a lost neutral can do this
        (Quantity.VOLTAGE_V, "460.1", False),
        (Quantity.VOLTAGE_V, "-1", False),
        (Quantity.FREQUENCY_HZ, "45", True),
        (Quantity.FREQUENCY_HZ, "55", True),
        (Quantity.FREQUENCY_HZ, "44.99", False),
        (Quantity.FREQUENCY_HZ, "60", False),
        (Quantity.POWER_FACTOR, "-1", True),
        (Quantity.POWER_FACTOR, "1", True),
        (Quantity.POWER_FACTOR, "1.001", False),
        (Quantity.CURRENT_A, "90", True),  # 1.5 x Imax 60 A
        (Quantity.CURRENT_A, "90.001", False),
        (Quantity.CURRENT_A, "-0.1", False),
        (Quantity.ACTIVE_POWER_W, "-20700", True),  # export, 1.5 x 13.8 kW
        (Quantity.ACTIVE_POWER_W, "20700.1", False),
        (Quantity.CREDIT_KWH, "-12.5", True),  # emergency credit in use
        (Quantity.ENERGY_IMPORT_KWH, "-0.001", False),
    ],
)
def test_instantaneous_values_outside_the_physical_range_are_out_of_range(
    quantity: Quantity, value: str, ok: bool
) -> None:
    verdict = judge(read(0, value, quantity))
    assert verdict.flags == (frozenset() if ok else {Flag.OUT_OF_RANGE})


def test_sixty_hertz_meter_has_its_own_frequency_range() -> None:
    profile = MeterProfile(
        "M1", 3, Decimal(100), nominal_voltage_v=Decimal(120), nominal_frequency_hz=Decimal(60)
    )
    assert judge(read(0, "60.02", Quantity.FREQUENCY_HZ), profile=profile).flags == set()
    assert judge(read(0, "50", Quantity.FREQUENCY_HZ), profile=profile).flags == {Flag.OUT_OF_RANGE}


def test_register_at_or_above_its_capacity_is_out_of_range() -> None:
    profile = MeterProfile("M1", 1, Decimal(60), register_capacity_kwh=Decimal(1000000))
    assert judge(read(0, "999999.999"), profile=profile).status is Status.ACCEPTED
    assert judge(read(0, "1000000"), profile=profile).flags == {Flag.OUT_OF_RANGE}


# --- duplicates and conflicts ------------------------------------------------------------


def test_same_timestamp_and_value_is_a_duplicate_not_stored_again() -> None:
    verdict = judge(read(15, "1001.0"), [stored(0, "1000"), stored(15, "1001")])
    assert verdict.status is Status.DUPLICATE
    assert verdict.flags == {Flag.DUPLICATE}
    assert verdict.quality is None and verdict.to_stored() is None


def test_same_timestamp_with_another_value_is_a_conflict_and_the_first_is_kept() -> None:
    verdict = judge(read(15, "1002"), [stored(0, "1000"), stored(15, "1001")])
    assert verdict.status is Status.REJECTED
    assert verdict.flags == {Flag.CONFLICT}
    assert "1001" in verdict.reason and "first is kept" in verdict.reason


def test_rejected_read_does_not_block_a_good_read_at_its_timestamp() -> None:
    # The first send said Wh; the resend in kWh is judged on its own.
    history = [stored(0, "1000"), stored(15, "1001000", Quality.REJECTED)]
    assert judge(read(15, "1001"), history).status is Status.ACCEPTED


def test_resend_of_a_conflicting_read_is_rejected_again() -> None:
    history = [stored(15, "1001"), stored(15, "1002", Quality.REJECTED)]
    assert judge(read(15, "1001"), history).status is Status.DUPLICATE
    again = judge(read(15, "1002"), history)
    assert again.flags == {Flag.CONFLICT}
    assert "a read of 1001 is already stored" in again.reason


def test_real_read_at_an_estimated_timestamp_replaces_the_estimate() -> None:
    history = [stored(0, "1000"), stored(15, "1000.5", Quality.ESTIMATED), stored(30, "1001")]
    verdict = judge(read(15, "1000.7"), history)
    assert verdict.status is Status.ACCEPTED
    assert verdict.flags == {Flag.REPLACES_ESTIMATE}


def test_real_read_near_an_estimated_boundary_replaces_that_estimate() -> None:
    history = [stored(0, "1000"), stored(15, "1000.5", Quality.ESTIMATED), stored(30, "1001")]
    verdict = judge(read(15.5, "1000.7"), history)
    assert verdict.flags == {Flag.REPLACES_ESTIMATE}
    assert "estimate at 2026-03-02T00:15:00Z" in verdict.reason
    assert Flag.REPLACES_ESTIMATE not in judge(read(17, "1000.7"), history).flags


def test_second_read_of_a_batch_at_one_timestamp_conflicts_with_the_first() -> None:
    verdicts = validate_reads([read(15, "1001"), read(15, "1009")], [], PROFILE, NOW)
    assert [v.status for v in verdicts] == [Status.ACCEPTED, Status.REJECTED]
    assert verdicts[1].flags == {Flag.CONFLICT}


# --- energy going backwards --------------------------------------------------------------


def test_register_going_backwards_is_negative_consumption() -> None:
    verdict = judge(read(15, "999.999"), [stored(0, "1000.000")])
    assert verdict.status is Status.FLAGGED
    assert verdict.flags == {Flag.NEGATIVE_CONSUMPTION}
    assert verdict.quality is Quality.FLAGGED


def test_backwards_read_is_judged_against_the_last_accepted_not_a_flagged_one() -> None:
    history = [stored(0, "1000"), stored(15, "5000", Quality.FLAGGED)]
    assert judge(read(30, "1001"), history).status is Status.ACCEPTED


def test_wrap_at_register_capacity_is_a_rollover_not_a_negative() -> None:
    profile = MeterProfile("M1", 1, Decimal(60), register_capacity_kwh=Decimal(1000000))
    verdict = judge(read(15, "1.200"), [stored(0, "999998.500")], profile=profile)
    assert verdict.flags == {Flag.ROLLOVER}
    assert verdict.status is Status.FLAGGED
    assert "2.700" in verdict.reason


def test_implausible_wrap_is_still_negative_consumption() -> None:
    profile = MeterProfile("M1", 1, Decimal(60), register_capacity_kwh=Decimal(1000000))
    verdict = judge(read(15, "500.000"), [stored(0, "999998.500")], profile=profile)
    assert verdict.flags == {Flag.NEGATIVE_CONSUMPTION}


def test_late_read_above_the_following_read_is_negative_consumption() -> None:
    history = [stored(0, "1000"), stored(30, "1002")]
    verdict = judge(read(15, "1003"), history)
    assert verdict.flags == {Flag.NEGATIVE_CONSUMPTION}
    assert "later read" in verdict.reason


# --- spikes ------------------------------------------------------------------------------


def test_advance_beyond_rated_power_is_a_spike() -> None:
    # 13.8 kW x 0.25 h x 1.1 = 3.795 kWh, plus one 0.001 step of slack.
    assert judge(read(15, "1003.796"), [stored(0, "1000")]).status is Status.ACCEPTED
    spike = judge(read(15, "1003.797"), [stored(0, "1000")])
    assert spike.flags == {Flag.SPIKE}
    assert spike.status is Status.FLAGGED


def test_three_phase_meter_may_advance_three_times_as_fast() -> None:
    three_phase = MeterProfile("M1", phases=3, rated_max_current_a=Decimal(60))
    assert judge(read(15, "1011"), [stored(0, "1000")], profile=three_phase).flags == set()
    assert judge(read(15, "1011"), [stored(0, "1000")]).flags == {Flag.SPIKE}


def test_stated_rated_power_overrides_the_nameplate_product() -> None:
    profile = MeterProfile("M1", 1, Decimal(60), rated_max_power_w=Decimal(4000))
    assert judge(read(15, "1001.2"), [stored(0, "1000")], profile=profile).flags == {Flag.SPIKE}


def test_spike_is_measured_over_the_whole_elapsed_time() -> None:
    # 10 kWh in 1 hour from a 13.8 kW meter is fine even though it crosses a gap.
    verdict = judge(read(60, "1010"), [stored(0, "1000")])
    assert Flag.SPIKE not in verdict.flags


def test_late_read_leaving_too_much_for_the_following_interval_is_a_spike() -> None:
    history = [stored(0, "1000"), stored(30, "1010")]
    assert judge(read(15, "1001"), history).flags == {Flag.SPIKE}


# --- zero consumption --------------------------------------------------------------------


def test_register_unchanged_for_the_threshold_is_zero_consumption() -> None:
    settings = VeeSettings(zero_consumption_after=timedelta(hours=1))
    history = [stored(-15, "999"), stored(0, "1000"), stored(45, "1000")]
    assert judge(read(59, "1000"), history, settings=settings).flags == set()
    verdict = judge(read(60, "1000"), history, settings=settings)
    assert verdict.flags == {Flag.ZERO_CONSUMPTION}
    assert verdict.status is Status.ACCEPTED  # the read is right: the alarm is the point


def test_zero_consumption_run_ignores_flagged_reads_inside_it() -> None:
    settings = VeeSettings(zero_consumption_after=timedelta(hours=1))
    history = [stored(0, "1000"), stored(30, "1400", Quality.FLAGGED), stored(45, "1000")]
    assert judge(read(60, "1000"), history, settings=settings).flags == {Flag.ZERO_CONSUMPTION}


def test_zero_consumption_check_can_be_turned_off() -> None:
    settings = VeeSettings(zero_consumption_after=None)
    verdict = judge(read(60 * 24 * 7, "1000"), [stored(0, "1000")], settings=settings)
    assert Flag.ZERO_CONSUMPTION not in verdict.flags


# --- gaps --------------------------------------------------------------------------------


def test_missing_intervals_before_a_read_are_reported_as_a_gap() -> None:
    verdict = judge(read(60, "1002"), [stored(0, "1000")])
    assert verdict.flags == {Flag.GAP}
    assert verdict.status is Status.ACCEPTED
    assert "3 interval boundaries missing" in verdict.reason


def test_clock_jitter_within_the_alignment_tolerance_is_not_a_gap() -> None:
    history = [stored(0 + 0.5, "1000")]
    assert judge(read(15 - 0.5, "1001"), history).flags == set()


def test_boundary_held_by_a_flagged_read_is_not_missing() -> None:
    history = [stored(0, "1000"), stored(15, "1400", Quality.FLAGGED)]
    verdict = judge(read(45, "1001"), history)
    assert "1 interval boundary missing" in verdict.reason


def test_late_read_reports_the_gaps_left_on_both_sides() -> None:
    verdict = judge(read(45, "1001"), [stored(0, "1000"), stored(120, "1004")])
    assert verdict.flags == {Flag.GAP}
    assert "2 interval boundaries missing after" in verdict.reason
    assert "4 interval boundaries missing before" in verdict.reason


def test_instantaneous_values_are_not_checked_for_gaps_or_spikes() -> None:
    history = [stored(0, "230", quantity=Quantity.VOLTAGE_V)]
    assert judge(read(600, "231", Quantity.VOLTAGE_V), history).flags == set()


# --- several flags, batches --------------------------------------------------------------


def test_every_record_problem_is_reported_at_once() -> None:
    new = RegisterRead("M2", Quantity.VOLTAGE_V, datetime(2026, 3, 2), Decimal("NaN"), "kV")
    verdict = judge(new)
    assert verdict.flags == {
        Flag.WRONG_METER,
        Flag.UNIT_MISMATCH,
        Flag.INVALID_TIMESTAMP,
        Flag.INVALID_VALUE,
    }
    assert all(f.flag.category is Category.RECORD for f in verdict.findings)


def test_rejected_read_is_not_judged_for_consumption() -> None:
    verdict = judge(read(15, "1", unit="Wh"), [stored(0, "1000")])
    assert verdict.flags == {Flag.UNIT_MISMATCH}


def test_accepted_read_of_a_batch_is_context_for_the_next() -> None:
    verdicts = validate_reads(
        [read(15, "1003"), read(30, "1006"), read(45, "1005")],
        [stored(0, "1000")],
        PROFILE,
        NOW,
    )
    assert [v.status for v in verdicts] == [Status.ACCEPTED, Status.ACCEPTED, Status.FLAGGED]
    assert verdicts[2].flags == {Flag.NEGATIVE_CONSUMPTION}


def test_batch_may_mix_registers_of_one_meter() -> None:
    verdicts = validate_reads(
        [
            read(15, "1003"),
            read(15, "231.2", Quantity.VOLTAGE_V),
            read(15, "2", Quantity.ENERGY_EXPORT_KWH),
        ],
        [stored(0, "1000")],
        PROFILE,
        NOW,
    )
    assert all(v.status is Status.ACCEPTED for v in verdicts)


def test_context_reads_of_other_meters_are_not_used() -> None:
    other = StoredRead("M2", ENERGY, at(0), Decimal(5000), Quality.MEASURED)
    assert judge(read(15, "1000"), [other]).flags == set()


def test_naive_now_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="now"):
        validate_read(read(0, "1"), [], PROFILE, datetime(2026, 3, 2))


# --- the building blocks -----------------------------------------------------------------


def test_stored_read_refuses_malformed_values() -> None:
    with pytest.raises(ValueError, match="aware"):
        StoredRead("M1", ENERGY, datetime(2026, 1, 1), Decimal(1), Quality.MEASURED)
    with pytest.raises(ValueError, match="finite"):
        StoredRead("M1", ENERGY, T0, Decimal("NaN"), Quality.MEASURED)
    with pytest.raises(ValueError, match="quality"):
        StoredRead("M1", ENERGY, T0, Decimal(1), "good")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"phases": 2},
        {"phases": True},
        {"rated_max_current_a": Decimal(0)},
        {"nominal_voltage_v": Decimal("NaN")},
        {"interval": timedelta(minutes=7)},
        {"interval": timedelta(seconds=90.5)},
        {"interval": timedelta(0)},
        {"register_capacity_kwh": Decimal(-1)},
        {"installed_at": datetime(2026, 1, 1)},
    ],
)
def test_meter_profile_refuses_impossible_ratings(kwargs: dict[str, object]) -> None:
    values: dict[str, object] = {"meter_id": "M1", "phases": 1, "rated_max_current_a": Decimal(60)}
    values.update(kwargs)
    with pytest.raises(ValueError):
        MeterProfile(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clock_tolerance": timedelta(seconds=-1)},
        {"spike_margin": Decimal(0)},
        {"frequency_tolerance": Decimal(1)},
        {"overload_factor": 2},
    ],
)
def test_settings_refuse_nonsense_thresholds(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        VeeSettings(**kwargs)  # type: ignore[arg-type]


def test_alignment_tolerance_is_capped_at_a_quarter_interval() -> None:
    settings = VeeSettings(alignment_tolerance=timedelta(minutes=10))
    assert settings.tolerance_for(timedelta(minutes=15)) == timedelta(minutes=3, seconds=45)


def test_boundaries_are_aligned_to_utc_midnight() -> None:
    interval = timedelta(minutes=15)
    assert floor_boundary(at(14.9), interval) == at(0)
    assert ceil_boundary(at(0.1), interval) == at(15)
    assert ceil_boundary(at(15), interval) == at(15)
    assert count_boundaries(at(0), at(60), interval) == 5
    assert count_boundaries(at(60), at(0), interval) == 0


def test_missing_boundaries_exclude_those_covered_by_either_read() -> None:
    interval, tol = timedelta(minutes=15), timedelta(minutes=1)
    assert missing_boundaries(at(0), at(15), interval, tol) is None
    assert missing_boundaries(at(0), at(60), interval, tol) == (at(15), at(45))
    assert missing_boundaries(at(1), at(16), interval, tol) is None
    assert missing_boundaries(at(-1.5), at(16.5), interval, tol) == (at(0), at(15))


def test_quantity_given_by_its_wire_name_is_understood() -> None:
    new = RegisterRead("M1", "energy_import_kwh", at(15), Decimal("1001"))  # type: ignore[arg-type]
    verdict = judge(new, [stored(0, "1000")])
    assert verdict.status is Status.ACCEPTED
    assert verdict.to_stored() == stored(15, "1001")


def test_read_for_another_meter_cannot_become_context_for_this_one() -> None:
    verdicts = validate_reads(
        [read(15, "5000", meter="M2"), read(30, "1001")], [stored(0, "1000")], PROFILE, NOW
    )
    assert verdicts[0].status is Status.REJECTED
    assert verdicts[1].status is Status.ACCEPTED


def test_late_read_inside_an_estimated_gap_replaces_its_estimate() -> None:
    history = [
        stored(0, "1000.000"),
        stored(15, "1000.003", Quality.ESTIMATED),
        stored(30, "1000.005", Quality.ESTIMATED),
        stored(45, "1000.008", Quality.ESTIMATED),
        stored(60, "1000.010"),
    ]
    verdict = judge(read(30, "1000.009"), history)
    assert verdict.status is Status.ACCEPTED
    assert verdict.flags == {Flag.REPLACES_ESTIMATE, Flag.GAP}


def test_verdict_reason_joins_every_finding_with_its_flag() -> None:
    verdict = judge(read(60, "999", unit="Wh"), [stored(0, "1000")])
    assert verdict.reason.startswith("unit_mismatch: energy_import_kwh is in 'kWh'")
