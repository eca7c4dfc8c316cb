"""The documented ingestion steps, end to end, over an in-memory store.

A meter's true register is delivered with drops, duplicates, late batches, a spike and a
conflicting re-send. After each batch the store validates, replaces estimates and
publishes corrections over the derivation span, as docs/readings.md describes. At the end
the published stream must equal a derivation from scratch, and no read may be lost.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from headend.consumption import (
    IntervalConsumption,
    derivation_span,
    interval_consumption,
    superseding,
    withdrawals,
)
from headend.estimation import estimate_gaps
from headend.validation import (
    MeterProfile,
    Quality,
    RegisterRead,
    Status,
    StoredRead,
    VeeSettings,
    validate_reads,
)
from protocols.quantities import Quantity

T0 = datetime(2026, 3, 2, tzinfo=UTC)
ENERGY = Quantity.ENERGY_IMPORT_KWH
PROFILE = MeterProfile("M1", 1, Decimal(60))
VEE = VeeSettings()
INTERVAL = PROFILE.interval
TOLERANCE = VEE.tolerance_for(INTERVAL)


@dataclass
class Store:
    """What headend/ingest.py keeps for one register, reduced to lists and dicts."""

    reads: list[StoredRead] = field(default_factory=list)  # real: measured/flagged/rejected
    estimates: dict[datetime, StoredRead] = field(default_factory=dict)
    published: dict[tuple[str, Quantity, datetime], IntervalConsumption] = field(
        default_factory=dict
    )
    stream: list[IntervalConsumption] = field(default_factory=list)
    duplicates: int = 0
    quarantined: int = 0

    def anchors(self) -> list[StoredRead]:
        return sorted((r for r in self.reads if r.quality.is_anchor), key=lambda r: r.timestamp)

    def ingest(self, batch: list[RegisterRead], now: datetime) -> None:
        context = [*self.reads, *self.estimates.values()]
        before = {r.timestamp for r in self.anchors()}
        for verdict in validate_reads(batch, context, PROFILE, now, VEE):
            if verdict.status is Status.DUPLICATE:
                self.duplicates += 1
                continue
            kept = verdict.to_stored()
            if kept is None:
                self.quarantined += 1
            else:
                self.reads.append(kept)
        changed = sorted({r.timestamp for r in self.anchors()} - before)
        if changed:
            self._republish(changed[0], changed[-1])

    def _republish(self, changed_from: datetime, changed_to: datetime) -> None:
        anchors = self.anchors()
        previous = [r.timestamp for r in anchors if r.timestamp < changed_from]
        following = [r.timestamp for r in anchors if r.timestamp > changed_to]
        start, end = derivation_span(
            changed_from,
            changed_to,
            previous[-1] if previous else None,
            following[0] if following else None,
            INTERVAL,
            VEE,
        )
        lo = max((i for i, r in enumerate(anchors) if r.timestamp <= start - TOLERANCE), default=0)
        hi = min(
            (i for i, r in enumerate(anchors) if r.timestamp >= end + TOLERANCE),
            default=len(anchors) - 1,
        )
        window = anchors[lo : hi + 1]

        first, last = window[0].timestamp, window[-1].timestamp
        for ts in [ts for ts in self.estimates if first < ts < last]:
            del self.estimates[ts]
        self.estimates.update((e.timestamp, e) for e in estimate_gaps(window, INTERVAL, VEE))

        derived = interval_consumption(window, INTERVAL, VEE, start=start, end=end)
        in_span = [r for r in self.published.values() if start <= r.t_start and r.t_end <= end]
        for record in (*superseding(in_span, derived), *withdrawals(in_span, derived, start, end)):
            self.stream.append(record)
            self.published[record.key] = record


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[list[RegisterRead]], int]:
    """Batches of reads of a true register over 12 hours, with the faults of a real field."""
    slots = 48
    steps, truth = 10**6, []
    for i in range(slots + 1):
        truth.append(RegisterRead("M1", ENERGY, T0 + i * INTERVAL, Decimal(steps).scaleb(-3)))
        steps += draw(st.integers(0, 3000))  # at most 12 kW over 15 minutes
    delivered = [r for r in truth if draw(st.integers(0, 3)) > 0]  # about a quarter dropped
    delivered += draw(st.lists(st.sampled_from(truth), max_size=5))  # at-least-once resends
    faults = draw(st.lists(st.sampled_from(["spike", "conflict", "future"]), max_size=2))
    for fault in faults:
        real = draw(st.sampled_from(truth))
        if fault == "spike":
            at = real.timestamp + timedelta(minutes=7)
            delivered.append(RegisterRead("M1", ENERGY, at, real.value + 50))
        elif fault == "conflict":
            delivered.append(RegisterRead("M1", ENERGY, real.timestamp, real.value + 1))
        else:
            delivered.append(RegisterRead("M1", ENERGY, T0 + timedelta(days=30), real.value))
    order = draw(st.permutations(delivered))
    cuts = sorted(draw(st.lists(st.integers(0, len(order)), max_size=6)))
    batches = [list(order[a:b]) for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True)]
    return [b for b in batches if b], len(delivered)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(delivery=deliveries())
def test_stream_after_every_batch_equals_a_derivation_from_scratch(
    delivery: tuple[list[list[RegisterRead]], int],
) -> None:
    batches, delivered = delivery
    store = Store()
    now = T0 + timedelta(hours=13)
    for batch in batches:
        store.ingest(batch, now)

    assert len(store.reads) + store.duplicates + store.quarantined == delivered
    from_scratch = {r.key: r for r in interval_consumption(store.reads, INTERVAL, VEE)}
    assert store.published == from_scratch
    assert store.estimates == {e.timestamp: e for e in estimate_gaps(store.reads, INTERVAL, VEE)}

    anchors = store.anchors()
    on_grid = [r for r in anchors if (r.timestamp - T0) % INTERVAL == timedelta(0)]
    if len(on_grid) >= 2 and on_grid[0] is anchors[0] and on_grid[-1] is anchors[-1]:
        total = sum((r.energy_kwh for r in from_scratch.values()), Decimal(0))
        assert total == anchors[-1].value - anchors[0].value
    if all(r.quality is Quality.MEASURED for r in store.reads):
        assert all(r.quality is not Quality.FLAGGED for r in from_scratch.values())


def test_a_late_batch_turns_estimates_into_measurements_in_the_stream() -> None:
    def read(minutes: int, value: str) -> RegisterRead:
        return RegisterRead("M1", ENERGY, T0 + timedelta(minutes=minutes), Decimal(value))

    store = Store()
    now = T0 + timedelta(hours=2)
    store.ingest([read(0, "10.000"), read(60, "10.400")], now)
    assert [r.quality for r in store.stream] == [Quality.ESTIMATED] * 4
    assert sorted(store.estimates) == [T0 + timedelta(minutes=m) for m in (15, 30, 45)]

    store.ingest([read(30, "10.100"), read(15, "10.050"), read(45, "10.300")], now)
    latest = {r.key: r for r in store.stream}
    assert [str(r.energy_kwh) for r in latest.values()] == ["0.050", "0.050", "0.200", "0.100"]
    assert all(r.quality is Quality.MEASURED for r in latest.values())
    assert store.estimates == {}
    assert len(store.stream) == 8  # four estimates, then four corrections
