"""Estimation of missing interval reads: exact splits, replacement by late reads."""

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headend.estimation import estimate_gaps, from_steps, interpolate, to_steps
from headend.validation import (
    Quality,
    StoredRead,
    VeeSettings,
    boundaries,
    resolution_decimals,
)
from protocols.quantities import Quantity

T0 = datetime(2026, 3, 2, tzinfo=UTC)
INTERVAL = timedelta(minutes=15)
ENERGY = Quantity.ENERGY_IMPORT_KWH


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def real(minutes: float, value: str, quality: Quality = Quality.MEASURED) -> StoredRead:
    return StoredRead("M1", ENERGY, at(minutes), Decimal(value), quality)


def values_of(reads: tuple[StoredRead, ...]) -> list[str]:
    return [str(r.value) for r in reads]


# --- examples ----------------------------------------------------------------------------


def test_gap_is_split_in_register_steps_that_sum_to_the_delta() -> None:
    estimates = estimate_gaps([real(0, "100.000"), real(60, "100.010")], INTERVAL)
    assert [r.timestamp for r in estimates] == [at(15), at(30), at(45)]
    # Exact shares are 2.5 thousandths each; cumulative 2.5, 5, 7.5 round half up.
    assert values_of(estimates) == ["100.003", "100.005", "100.008"]
    assert all(r.quality is Quality.ESTIMATED for r in estimates)


def test_estimates_are_interpolated_in_time_not_by_count() -> None:
    # Anchors off the grid: 0:05 and 0:50, boundaries 0:15, 0:30, 0:45.
    estimates = estimate_gaps([real(5, "10.000"), real(50, "10.900")], INTERVAL)
    assert values_of(estimates) == ["10.200", "10.500", "10.800"]


def test_no_estimate_where_a_read_is_within_the_alignment_tolerance() -> None:
    reads = [real(0, "1"), real(15.5, "2"), real(45, "3")]
    estimates = estimate_gaps(reads, INTERVAL)
    assert [r.timestamp for r in estimates] == [at(30)]


def test_flagged_read_holds_its_boundary_but_is_no_anchor() -> None:
    reads = [real(0, "1"), real(30, "50", Quality.FLAGGED), real(60, "2")]
    assert estimate_gaps(reads, INTERVAL) == ()


def test_estimates_and_rejected_reads_are_not_anchors() -> None:
    reads = [
        real(0, "1.000"),
        real(15, "9", Quality.ESTIMATED),
        real(30, "7", Quality.REJECTED),
        real(45, "1.300"),
    ]
    assert values_of(estimate_gaps(reads, INTERVAL)) == ["1.100", "1.200"]


def test_no_estimate_across_a_register_that_went_backwards() -> None:
    assert estimate_gaps([real(0, "10"), real(60, "9")], INTERVAL) == ()


def test_no_estimate_across_a_gap_longer_than_the_limit() -> None:
    reads = [real(0, "10"), real(120, "12")]
    assert (
        len(estimate_gaps(reads, INTERVAL, VeeSettings(max_estimated_gap=timedelta(hours=2)))) == 7
    )
    assert (
        estimate_gaps(reads, INTERVAL, VeeSettings(max_estimated_gap=timedelta(minutes=119))) == ()
    )


def test_register_with_finer_reads_is_split_at_the_finer_resolution() -> None:
    estimates = estimate_gaps([real(0, "1.0000"), real(30, "1.0001")], INTERVAL)
    assert values_of(estimates) == ["1.0001"]  # half a step rounds up


def test_interpolation_at_the_anchors_gives_their_values() -> None:
    before, after = real(0, "5.5"), real(30, "7")
    assert interpolate(before, after, [at(0), at(30)]) == (Decimal("5.500"), Decimal("7.000"))


def test_interpolation_refuses_times_outside_its_span() -> None:
    with pytest.raises(ValueError, match="outside"):
        interpolate(real(0, "1"), real(30, "2"), [at(31)])
    with pytest.raises(ValueError, match="time order"):
        interpolate(real(30, "1"), real(0, "2"), [at(15)])


def test_interpolation_refuses_reads_of_two_registers() -> None:
    other = StoredRead("M1", Quantity.ENERGY_EXPORT_KWH, at(30), Decimal(2), Quality.MEASURED)
    with pytest.raises(ValueError, match="one register"):
        interpolate(real(0, "1"), other, [at(15)])


def test_estimation_refuses_mixed_registers_and_instantaneous_values() -> None:
    other = StoredRead("M2", ENERGY, at(30), Decimal(2), Quality.MEASURED)
    with pytest.raises(ValueError, match="more than one register"):
        estimate_gaps([real(0, "1"), other], INTERVAL)
    volts = [StoredRead("M1", Quantity.VOLTAGE_V, at(0), Decimal(230), Quality.MEASURED)]
    with pytest.raises(ValueError, match="cumulative"):
        estimate_gaps(volts, INTERVAL)


def test_estimation_refuses_two_real_reads_at_one_timestamp() -> None:
    with pytest.raises(ValueError, match="two real reads"):
        estimate_gaps([real(0, "1"), real(0, "2", Quality.FLAGGED)], INTERVAL)


def test_steps_round_trip_and_refuse_finer_values() -> None:
    assert to_steps(Decimal("12.345"), 3) == 12345
    assert from_steps(12345, 3) == Decimal("12.345")
    assert str(from_steps(0, 3)) == "0.000"
    with pytest.raises(ValueError, match="decimals"):
        to_steps(Decimal("1.0005"), 3)


def test_late_read_replaces_the_estimate_and_re_splits_around_it() -> None:
    before, after = real(0, "100.000"), real(60, "100.010")
    first = estimate_gaps([before, after], INTERVAL)
    late = real(30, "100.001")
    second = estimate_gaps([before, late, after], INTERVAL)
    assert at(30) in {r.timestamp for r in first}
    assert at(30) not in {r.timestamp for r in second}
    # Half of 0.001 and half of 0.009 (0.0005, 0.0045) both round up.
    assert values_of(second) == ["100.001", "100.006"]


# --- properties --------------------------------------------------------------------------


@st.composite
def anchor_pairs(draw: st.DrawFn) -> tuple[StoredRead, StoredRead]:
    decimals = draw(st.integers(0, 4))
    start = draw(st.integers(0, 10**9))
    delta = draw(st.integers(-(10**5), 10**6))
    t_before = draw(st.integers(0, 10**6))  # seconds
    span = draw(st.integers(1, 10**6))
    quantity = draw(st.sampled_from([Quantity.ENERGY_IMPORT_KWH, Quantity.ENERGY_EXPORT_KWH]))

    def make(seconds: int, steps: int) -> StoredRead:
        return StoredRead(
            "M1",
            quantity,
            T0 + timedelta(seconds=seconds),
            Decimal(steps).scaleb(-decimals),
            Quality.MEASURED,
        )

    return make(t_before, start), make(t_before + span, start + delta)


@settings(max_examples=300, deadline=None)
@given(pair=anchor_pairs(), data=st.data())
def test_estimates_telescope_exactly_to_the_delta_and_round_each_share_fairly(
    pair: tuple[StoredRead, StoredRead], data: st.DataObject
) -> None:
    before, after = pair
    interval = data.draw(st.sampled_from([timedelta(minutes=m) for m in (1, 5, 15, 30, 60)]))
    inner = list(boundaries(before.timestamp, after.timestamp, interval))[:500]
    points = [before.timestamp, *inner, after.timestamp]
    points = sorted(set(points))
    estimated = interpolate(before, after, points)
    assert estimated[0] == before.value and estimated[-1] == after.value
    shares = [b - a for a, b in itertools.pairwise(estimated)]
    assert sum(shares, Decimal(0)) == after.value - before.value
    decimals = resolution_decimals(before.quantity, before.value, after.value)
    step = Fraction(1, 10**decimals)
    span = (after.timestamp - before.timestamp) // timedelta(microseconds=1)
    for (t1, t2), share in zip(itertools.pairwise(points), shares, strict=True):
        exact = Fraction(after.value - before.value) * Fraction(
            (t2 - t1) // timedelta(microseconds=1), span
        )
        assert abs(Fraction(share) - exact) < step
        assert share == share.quantize(Decimal(1).scaleb(-decimals))
    if after.value >= before.value:
        assert all(s >= 0 for s in shares)


@st.composite
def register_histories(draw: st.DrawFn) -> list[StoredRead]:
    """Monotone real reads on a 15-minute grid with some boundaries missing and jitter."""
    slots = draw(st.lists(st.booleans(), min_size=2, max_size=40))
    reads, steps = [], draw(st.integers(0, 10**6))
    for i, present in enumerate(slots):
        steps += draw(st.integers(0, 3000))
        if present or i in (0, len(slots) - 1):
            jitter = draw(st.integers(-60, 60))
            reads.append(
                StoredRead(
                    "M1",
                    ENERGY,
                    T0 + i * INTERVAL + timedelta(seconds=jitter),
                    Decimal(steps).scaleb(-3),
                    Quality.MEASURED,
                )
            )
    return reads


@settings(max_examples=200, deadline=None)
@given(history=register_histories())
def test_every_boundary_is_covered_once_by_a_real_read_or_an_estimate(
    history: list[StoredRead],
) -> None:
    estimates = estimate_gaps(history, INTERVAL)
    tol = VeeSettings().tolerance_for(INTERVAL)
    grid = list(boundaries(history[0].timestamp - tol, history[-1].timestamp + tol, INTERVAL))
    for b in grid:
        covering = [r for r in history if abs(r.timestamp - b) <= tol]
        estimated = [e for e in estimates if e.timestamp == b]
        assert len(covering) + len(estimated) >= 1
        assert not (covering and estimated)
    merged = sorted([*history, *estimates], key=lambda r: r.timestamp)
    assert all(b.value >= a.value for a, b in itertools.pairwise(merged))


@settings(max_examples=200, deadline=None)
@given(history=register_histories(), data=st.data())
def test_a_late_read_changes_estimates_only_between_its_neighbours(
    history: list[StoredRead], data: st.DataObject
) -> None:
    if len(history) < 3:
        return
    late_index = data.draw(st.integers(1, len(history) - 2))
    late = history[late_index]
    without = [r for r in history if r is not late]
    before, after = history[late_index - 1], history[late_index + 1]

    def outside(estimates: tuple[StoredRead, ...]) -> set[StoredRead]:
        return {e for e in estimates if not before.timestamp < e.timestamp < after.timestamp}

    old, new = estimate_gaps(without, INTERVAL), estimate_gaps(history, INTERVAL)
    assert outside(old) == outside(new)
    # Recomputing the span between the neighbours alone gives the same estimates there.
    assert estimate_gaps([before, late, after], INTERVAL) == tuple(
        e for e in new if before.timestamp < e.timestamp < after.timestamp
    )
