"""Properties of validation over generated reads: it never raises, and what it accepts is sane."""

import itertools
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from headend.validation import (
    Category,
    Flag,
    MeterProfile,
    Quality,
    RegisterRead,
    Status,
    StoredRead,
    Verdict,
    max_energy_kwh,
    validate_read,
    validate_reads,
)
from protocols.quantities import Quantity

T0 = datetime(2026, 3, 2, tzinfo=UTC)
NOW = T0 + timedelta(days=2)
ENERGY = Quantity.ENERGY_IMPORT_KWH
PROFILE = MeterProfile("M1", 1, Decimal(60), register_capacity_kwh=Decimal(1000000))

timezones = st.one_of(
    st.none(),
    st.just(UTC),
    st.builds(
        timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
    ),
)
anything = st.one_of(
    st.none(), st.integers(), st.floats(), st.text(max_size=5), st.booleans(), st.binary(max_size=4)
)
values = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.decimals(min_value=-5, max_value=2000, places=3),
    anything,
)
timestamps = st.one_of(
    st.datetimes(timezones=timezones),
    st.datetimes(
        min_value=datetime(2026, 3, 1), max_value=datetime(2026, 3, 6), timezones=timezones
    ),
    anything,
)
raw_reads = st.builds(
    RegisterRead,
    meter_id=st.one_of(st.just("M1"), st.text(max_size=3), anything),
    quantity=st.one_of(st.sampled_from(Quantity), st.text(max_size=8), anything),
    timestamp=timestamps,
    value=values,
    unit=st.one_of(st.none(), st.sampled_from(["kWh", "V", "Hz", "A", "W", "", "Wh"]), anything),
)
stored_reads = st.builds(
    StoredRead,
    meter_id=st.sampled_from(["M1", "M2"]),
    quantity=st.sampled_from(Quantity),
    timestamp=st.datetimes(
        min_value=datetime(2026, 3, 1), max_value=datetime(2026, 3, 6), timezones=st.just(UTC)
    ),
    value=st.decimals(min_value=-10, max_value=2000, places=3),
    quality=st.sampled_from(Quality),
)


def _consistent(verdict: Verdict) -> bool:
    categories = {f.flag.category for f in verdict.findings}
    if verdict.status is Status.DUPLICATE:
        return verdict.flags == {Flag.DUPLICATE}
    if verdict.status is Status.REJECTED:
        return Category.RECORD in categories
    if verdict.status is Status.FLAGGED:
        return categories >= {Category.CONSUMPTION} and Category.RECORD not in categories
    return categories <= {Category.INFO}


@settings(max_examples=400, deadline=None)
@given(
    reads=st.lists(raw_reads, min_size=1, max_size=4),
    history=st.lists(stored_reads, max_size=12),
)
def test_validation_never_raises_and_the_status_follows_the_flags(
    reads: list[RegisterRead], history: list[StoredRead]
) -> None:
    verdicts = validate_reads(reads, history, PROFILE, NOW)
    assert [v.read for v in verdicts] == reads
    for verdict in verdicts:
        assert _consistent(verdict)
        assert all(f.reason for f in verdict.findings)
        stored = verdict.to_stored()
        if verdict.status is Status.ACCEPTED:
            assert stored is not None and stored.quality is Quality.MEASURED


def _energy_read(minute: int, steps: int) -> RegisterRead:
    return RegisterRead("M1", ENERGY, T0 + timedelta(minutes=minute), Decimal(steps).scaleb(-3))


energy_reads = st.lists(
    st.builds(_energy_read, st.integers(min_value=0, max_value=24 * 60), st.integers(0, 20_000)),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(reads=energy_reads)
def test_batch_equals_reads_judged_one_by_one_and_stored(reads: list[RegisterRead]) -> None:
    batch = validate_reads(reads, [], PROFILE, NOW)
    history: list[StoredRead] = []
    for new, from_batch in zip(reads, batch, strict=True):
        alone = validate_read(new, history, PROFILE, NOW)
        assert alone == from_batch
        kept = alone.to_stored()
        if kept is not None:
            history.append(kept)


@settings(max_examples=200, deadline=None)
@given(reads=energy_reads)
def test_accepted_reads_never_go_backwards_nor_exceed_the_rating(
    reads: list[RegisterRead],
) -> None:
    """Whatever order and values arrive, the accepted register is a plausible meter."""
    verdicts = validate_reads(reads, [], PROFILE, NOW)
    accepted = sorted(
        (v.read for v in verdicts if v.status is Status.ACCEPTED), key=lambda r: r.timestamp
    )
    for a, b in itertools.pairwise(accepted):
        assert a.timestamp < b.timestamp
        assert b.value >= a.value
        limit = max_energy_kwh(PROFILE, b.timestamp - a.timestamp) * Fraction("1.1")
        assert Fraction(b.value - a.value) <= limit + Fraction(1, 1000)


@settings(max_examples=100, deadline=None)
@given(reads=energy_reads)
def test_every_read_gets_one_verdict_and_none_is_dropped(reads: list[RegisterRead]) -> None:
    verdicts = validate_reads(reads, [], PROFILE, NOW)
    assert len(verdicts) == len(reads)
    kept = [v.to_stored() for v in verdicts if v.status is not Status.DUPLICATE]
    assert all(k is not None for k in kept)
    # Stored reads are unique per timestamp: duplicates are the only ones not kept.
    stamps = [k.timestamp for k in kept if k is not None and k.quality is not Quality.REJECTED]
    assert len(stamps) == len(set(stamps))
