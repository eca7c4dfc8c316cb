"""Interval consumption from cumulative reads: aligned, exact, with the quality it deserves."""

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from headend.consumption import (
    IntervalConsumption,
    derivation_span,
    interval_consumption,
    superseding,
    withdrawals,
)
from headend.estimation import estimate_gaps
from headend.validation import Quality, StoredRead, VeeSettings
from protocols.quantities import Quantity

T0 = datetime(2026, 3, 2, tzinfo=UTC)
INTERVAL = timedelta(minutes=15)
ENERGY = Quantity.ENERGY_IMPORT_KWH
TOLERANCE = VeeSettings().tolerance_for(INTERVAL)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def real(minutes: float, value: str, quality: Quality = Quality.MEASURED) -> StoredRead:
    return StoredRead("M1", ENERGY, at(minutes), Decimal(value), quality)


def rows(records: tuple[IntervalConsumption, ...]) -> list[tuple[int, int, str, str]]:
    """(start minute, end minute, kWh, quality) per record, for readable assertions."""
    return [
        (
            (r.t_start - T0) // timedelta(minutes=1),
            (r.t_end - T0) // timedelta(minutes=1),
            str(r.energy_kwh),
            r.quality.value,
        )
        for r in records
    ]


# --- examples ----------------------------------------------------------------------------


def test_boundary_reads_give_measured_intervals() -> None:
    reads = [real(0, "100.000"), real(15, "100.250"), real(30, "100.300")]
    assert rows(interval_consumption(reads, INTERVAL)) == [
        (0, 15, "0.250", "measured"),
        (15, 30, "0.050", "measured"),
    ]


def test_record_carries_meter_register_and_utc_bounds() -> None:
    (record,) = interval_consumption([real(0, "1"), real(15, "2")], INTERVAL)
    assert record.meter_id == "M1" and record.quantity is ENERGY
    assert (record.t_start, record.t_end) == (at(0), at(15))
    assert record.key == ("M1", ENERGY, at(0))
    assert record.reason == ""


def test_gap_is_spread_over_its_own_intervals_never_folded_into_the_next() -> None:
    reads = [real(0, "100.000"), real(60, "100.010"), real(75, "100.020")]
    assert rows(interval_consumption(reads, INTERVAL)) == [
        (0, 15, "0.003", "estimated"),
        (15, 30, "0.002", "estimated"),
        (30, 45, "0.003", "estimated"),
        (45, 60, "0.002", "estimated"),
        (60, 75, "0.010", "measured"),
    ]


def test_reads_within_the_alignment_tolerance_count_for_their_boundary() -> None:
    reads = [real(0.5, "1.000"), real(14.2, "1.100"), real(30.9, "1.300")]
    assert rows(interval_consumption(reads, INTERVAL)) == [
        (0, 15, "0.100", "measured"),
        (15, 30, "0.200", "measured"),
    ]


def test_the_closer_of_two_reads_near_one_boundary_wins() -> None:
    reads = [real(0, "1.000"), real(14.5, "1.100"), real(15.25, "1.150"), real(30, "1.200")]
    assert rows(interval_consumption(reads, INTERVAL))[0] == (0, 15, "0.150", "measured")


def test_off_boundary_read_between_two_boundary_reads_changes_nothing() -> None:
    reads = [real(0, "1.000"), real(15, "1.100")]
    with_extra = [*reads, real(7, "1.090")]
    assert interval_consumption(with_extra, INTERVAL) == interval_consumption(reads, INTERVAL)


def test_off_boundary_read_anchors_the_estimate_of_a_missing_boundary() -> None:
    reads = [real(0, "1.000"), real(20, "1.200"), real(30, "1.300")]
    # 0:15 interpolated between 0:00 and 0:20: 1.150
    assert rows(interval_consumption(reads, INTERVAL)) == [
        (0, 15, "0.150", "estimated"),
        (15, 30, "0.150", "estimated"),
    ]


def test_interval_touching_a_flagged_read_is_flagged_with_its_reason() -> None:
    reads = [real(0, "100"), real(15, "200", Quality.FLAGGED), real(30, "101")]
    records = interval_consumption(reads, INTERVAL)
    assert rows(records) == [
        (0, 15, "100.000", "flagged"),
        (15, 30, "-99.000", "flagged"),
    ]
    assert "flagged read at 2026-03-02T00:15:00Z" in records[0].reason
    assert "negative consumption -99.000" in records[1].reason


def test_negative_interval_between_measured_reads_is_flagged() -> None:
    records = interval_consumption([real(0, "10"), real(15, "9")], INTERVAL)
    assert rows(records) == [(0, 15, "-1.000", "flagged")]


def test_gap_interpolated_from_a_flagged_read_is_flagged() -> None:
    records = interval_consumption([real(0, "1"), real(30, "2", Quality.FLAGGED)], INTERVAL)
    assert [r.quality for r in records] == [Quality.FLAGGED, Quality.FLAGGED]
    assert "interpolated from a flagged read" in records[0].reason


def test_gap_across_a_register_that_went_backwards_is_flagged() -> None:
    records = interval_consumption([real(0, "2"), real(30, "1")], INTERVAL)
    assert rows(records) == [(0, 15, "-0.500", "flagged"), (15, 30, "-0.500", "flagged")]
    assert "went backwards" in records[0].reason


def test_gap_longer_than_the_estimation_limit_is_flagged_but_still_spread() -> None:
    vee = VeeSettings(max_estimated_gap=timedelta(minutes=30))
    records = interval_consumption([real(0, "1.000"), real(45, "1.300")], INTERVAL, vee)
    assert rows(records) == [
        (0, 15, "0.100", "flagged"),
        (15, 30, "0.100", "flagged"),
        (30, 45, "0.100", "flagged"),
    ]
    assert "gap longer than 0:30:00" in records[0].reason


def test_stored_estimates_and_rejected_reads_are_ignored() -> None:
    reads = [real(0, "1.000"), real(30, "1.200")]
    noisy = [*reads, real(15, "5", Quality.ESTIMATED), real(20, "0", Quality.REJECTED)]
    assert interval_consumption(noisy, INTERVAL) == interval_consumption(reads, INTERVAL)


def test_first_read_off_the_grid_starts_consumption_at_the_next_boundary() -> None:
    reads = [real(7, "1.000"), real(15, "1.100"), real(30, "1.200")]
    assert rows(interval_consumption(reads, INTERVAL)) == [(15, 30, "0.100", "measured")]


def test_start_and_end_clip_to_whole_intervals() -> None:
    reads = [real(0, "1"), real(15, "2"), real(30, "3"), real(45, "4")]
    clipped = interval_consumption(reads, INTERVAL, start=at(10), end=at(44))
    assert rows(clipped) == [(15, 30, "1.000", "measured")]


def test_fewer_than_two_boundaries_give_no_records() -> None:
    assert interval_consumption([], INTERVAL) == ()
    assert interval_consumption([real(0, "1")], INTERVAL) == ()
    assert interval_consumption([real(2, "1"), real(13, "2")], INTERVAL) == ()


def test_hourly_interval_is_aligned_to_the_hour() -> None:
    reads = [real(0, "1"), real(150, "3.5")]
    assert rows(interval_consumption(reads, timedelta(hours=1))) == [
        (0, 60, "1.000", "estimated"),
        (60, 120, "1.000", "estimated"),
    ]


def test_consumption_refuses_ambiguous_or_foreign_input() -> None:
    with pytest.raises(ValueError, match="two real reads"):
        interval_consumption([real(0, "1"), real(0, "2")], INTERVAL)
    with pytest.raises(ValueError, match="more than one register"):
        other = StoredRead("M1", Quantity.ENERGY_EXPORT_KWH, at(0), Decimal(1), Quality.MEASURED)
        interval_consumption([real(15, "1"), other], INTERVAL)
    with pytest.raises(ValueError, match="cumulative"):
        volts = StoredRead("M1", Quantity.VOLTAGE_V, at(0), Decimal(230), Quality.MEASURED)
        interval_consumption([volts], INTERVAL)
    with pytest.raises(ValueError, match="interval"):
        interval_consumption([real(0, "1")], timedelta(minutes=7))
    with pytest.raises(ValueError, match="aware"):
        interval_consumption([real(0, "1")], INTERVAL, start=datetime(2026, 3, 2))


def test_late_read_supersedes_the_estimated_records_it_corrects() -> None:
    before = [real(0, "1.000"), real(60, "1.400")]
    published = interval_consumption(before, INTERVAL)
    after = interval_consumption([*before, real(30, "1.100")], INTERVAL)
    revised = superseding(published, after)
    assert rows(revised) == [
        (0, 15, "0.050", "estimated"),
        (15, 30, "0.050", "estimated"),
        (30, 45, "0.150", "estimated"),
        (45, 60, "0.150", "estimated"),
    ]
    assert superseding(after, after) == ()


def test_quality_change_alone_is_a_revision() -> None:
    flagged = interval_consumption([real(0, "1"), real(15, "2", Quality.FLAGGED)], INTERVAL)
    accepted = interval_consumption([real(0, "1"), real(15, "2")], INTERVAL)
    assert superseding(flagged, accepted) == accepted


def test_derivation_span_reaches_one_interval_past_the_neighbours() -> None:
    assert derivation_span(at(40), at(40), at(30), at(60), INTERVAL) == (at(15), at(75))
    assert derivation_span(at(40), at(50), None, None, INTERVAL) == (at(30), at(60))
    with pytest.raises(ValueError, match="before"):
        derivation_span(at(50), at(40), None, None, INTERVAL)


# --- properties --------------------------------------------------------------------------


@st.composite
def monotone_reads(draw: st.DrawFn) -> list[StoredRead]:
    """Boundary reads (some missing, jittered) plus off-grid reads, never going backwards.

    The first and last reads sit within the tolerance of a boundary.
    """
    slots = draw(st.integers(2, 30))
    seconds = {0, slots * 900 + draw(st.integers(-60, 60))}
    seconds |= {
        i * 900 + draw(st.integers(-60, 60)) for i in range(1, slots) if draw(st.booleans())
    }
    seconds |= set(draw(st.lists(st.integers(1, slots * 900 - 61), max_size=5)))
    steps = draw(st.integers(0, 10**6))
    reads = []
    for s in sorted(seconds):
        steps += draw(st.integers(0, 5000))
        reads.append(
            StoredRead(
                "M1", ENERGY, T0 + timedelta(seconds=s), Decimal(steps).scaleb(-3), Quality.MEASURED
            )
        )
    return reads


@settings(max_examples=200, deadline=None, derandomize=True)
@given(reads=monotone_reads())
def test_intervals_tile_the_span_and_sum_exactly_to_last_minus_first(
    reads: list[StoredRead],
) -> None:
    records = interval_consumption(reads, INTERVAL)
    assert records[0].t_start == T0
    for a, b in itertools.pairwise(records):
        assert a.t_end == b.t_start
    assert all(r.t_end - r.t_start == INTERVAL for r in records)
    assert sum((r.energy_kwh for r in records), Decimal(0)) == reads[-1].value - reads[0].value
    assert all(r.energy_kwh >= 0 for r in records)
    assert all(r.quality in (Quality.MEASURED, Quality.ESTIMATED) for r in records)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(reads=monotone_reads(), data=st.data())
def test_consumption_over_any_split_at_a_boundary_read_is_the_whole(
    reads: list[StoredRead], data: st.DataObject
) -> None:
    def nearest(r: StoredRead) -> datetime:
        return T0 + round((r.timestamp - T0) / INTERVAL) * INTERVAL

    # A read splits cleanly where it alone holds its boundary (else the closer one wins).
    on_grid = [
        i
        for i, r in enumerate(reads)
        if [abs(o.timestamp - nearest(r)) <= TOLERANCE for o in reads].count(True) == 1
        and abs(r.timestamp - nearest(r)) <= TOLERANCE
    ]
    assume(on_grid)
    k = data.draw(st.sampled_from(on_grid))
    whole = interval_consumption(reads, INTERVAL)
    parts = interval_consumption(reads[: k + 1], INTERVAL) + interval_consumption(
        reads[k:], INTERVAL
    )
    assert parts == whole


@settings(max_examples=200, deadline=None, derandomize=True)
@given(reads=monotone_reads())
def test_estimated_boundaries_equal_the_stored_estimates(reads: list[StoredRead]) -> None:
    estimates = {e.timestamp: e.value for e in estimate_gaps(reads, INTERVAL)}
    records = interval_consumption([*reads, *map(_as_estimate, estimates.items())], INTERVAL)
    value = reads[0].value
    for record in records:
        value += record.energy_kwh
        if record.t_end in estimates:
            assert value == estimates[record.t_end]
            assert record.quality is Quality.ESTIMATED


def _as_estimate(item: tuple[datetime, Decimal]) -> StoredRead:
    return StoredRead("M1", ENERGY, item[0], item[1], Quality.ESTIMATED)


any_read = st.builds(
    lambda s, steps, q: StoredRead(
        "M1", ENERGY, T0 + timedelta(seconds=s), Decimal(steps).scaleb(-3), q
    ),
    st.integers(0, 6 * 3600),
    st.integers(0, 50_000),
    st.sampled_from(Quality),
)


@st.composite
def changes(draw: st.DrawFn) -> tuple[list[StoredRead], list[StoredRead]]:
    """A register history before and after one change: reads added, removed or re-judged."""
    old = draw(st.lists(any_read, max_size=20, unique_by=lambda r: r.timestamp))
    kind = draw(st.sampled_from(["add", "remove", "requalify"]))
    anchors = [r for r in old if r.quality.is_anchor]
    if kind == "add" or not anchors:
        taken = {r.timestamp for r in old}
        added = draw(st.lists(any_read, min_size=1, max_size=3, unique_by=lambda r: r.timestamp))
        return old, [*old, *(r for r in added if r.timestamp not in taken)]
    target = draw(st.sampled_from(anchors))
    rest = [r for r in old if r is not target]
    if kind == "remove":
        return old, rest
    quality = draw(st.sampled_from([q for q in Quality if q is not target.quality]))
    requalified = StoredRead(target.meter_id, ENERGY, target.timestamp, target.value, quality)
    return old, [*rest, requalified]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(change=changes())
def test_publishing_over_the_derivation_span_keeps_the_stream_equal_to_the_reads(
    change: tuple[list[StoredRead], list[StoredRead]],
) -> None:
    """The documented procedure: span, window, derive, supersede, withdraw."""
    old_reads, new_reads = change
    old_anchors = {(r.timestamp, r.value, r.quality) for r in old_reads if r.quality.is_anchor}
    new_anchors = {(r.timestamp, r.value, r.quality) for r in new_reads if r.quality.is_anchor}
    changed = sorted(t for t, _, _ in old_anchors ^ new_anchors)
    assume(changed)
    unchanged = sorted(t for t, _, _ in old_anchors & new_anchors)
    previous = [t for t in unchanged if t < changed[0]]
    following = [t for t in unchanged if t > changed[-1]]
    start, end = derivation_span(
        changed[0],
        changed[-1],
        previous[-1] if previous else None,
        following[0] if following else None,
        INTERVAL,
    )

    published = {r.key: r for r in interval_consumption(old_reads, INTERVAL)}
    truth = {r.key: r for r in interval_consumption(new_reads, INTERVAL)}
    for key in published.keys() | truth.keys():
        if published.get(key) != truth.get(key):
            record = truth.get(key) or published[key]
            assert start <= record.t_start and record.t_end <= end

    real = sorted((r for r in new_reads if r.quality.is_anchor), key=lambda r: r.timestamp)
    lo = max((i for i, r in enumerate(real) if r.timestamp <= start - TOLERANCE), default=0)
    hi = min(
        (i for i, r in enumerate(real) if r.timestamp >= end + TOLERANCE), default=len(real) - 1
    )
    derived = interval_consumption(real[lo : hi + 1], INTERVAL, start=start, end=end)
    assert derived == tuple(r for r in truth.values() if start <= r.t_start and r.t_end <= end)

    in_span = [r for r in published.values() if start <= r.t_start and r.t_end <= end]
    stream = dict(published)
    stream.update((r.key, r) for r in superseding(in_span, derived))
    withdrawn = withdrawals(in_span, derived, start, end)
    stream.update((r.key, r) for r in withdrawn)
    for key, record in stream.items():
        if key in truth:
            assert record == truth[key]
        else:
            assert record.energy_kwh == 0 and record.quality is Quality.FLAGGED


def test_withdrawal_reverses_an_interval_no_longer_determined() -> None:
    published = interval_consumption([real(0, "1"), real(15, "2"), real(30, "3")], INTERVAL)
    derived = interval_consumption([real(0, "1"), real(15, "2")], INTERVAL)
    (withdrawn,) = withdrawals(published, derived, at(0), at(45))
    assert rows((withdrawn,)) == [(15, 30, "0.000", "flagged")]
    assert withdrawn.reason.startswith("withdrawn")
    assert withdrawals(published, derived, at(0), at(15)) == ()
