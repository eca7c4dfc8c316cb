"""Estimation of missing interval reads (the E of VEE), exact in Decimal.

A missing interval boundary of a cumulative register is estimated by linear
interpolation between the real reads on either side. The register's delta is split in
whole resolution steps (0.001 kWh for a three-decimal register) by rounding the
*cumulative* share at each boundary, half up. Because every estimate is the first read
plus a rounded share of one fixed delta, the estimates never go backwards, each interval
gets the floor or the ceiling of its exact share, and the intervals of a gap sum exactly
to the real delta: no energy appears or vanishes, and nothing is folded into the
interval after the gap.

Estimates are recomputed from the real reads, never from other estimates, so when a late
real read arrives the caller replaces the estimates around it with a fresh
:func:`estimate_gaps` over the same span and gets exactly what a complete history gives.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from headend.validation import (
    DEFAULT_SETTINGS,
    Quality,
    StoredRead,
    VeeSettings,
    boundaries,
    check_interval,
    missing_boundaries,
    resolution_decimals,
)
from protocols.quantities import Kind

_MICROSECOND = timedelta(microseconds=1)
_by_time = operator.attrgetter("timestamp")
# Quality.is_anchor as a set: a property call per read was measurable in ingestion.
_ANCHORS = frozenset(q for q in Quality if q.is_anchor)


def interpolate(
    before: StoredRead, after: StoredRead, at: Sequence[datetime]
) -> tuple[Decimal, ...]:
    """The register's value at each time in ``at``, interpolated between two reads.

    Values are in the register's unit, with the register's resolution (the quantity's
    decimals, or more if either read has more). ``at`` may include the reads' own
    timestamps, which give back their values exactly.

    Raises:
        ValueError: the reads are of different meters or registers, not in time order,
            or a time in ``at`` lies outside ``[before.timestamp, after.timestamp]``.
    """
    if (before.meter_id, before.quantity) != (after.meter_id, after.quantity):
        raise ValueError("interpolation needs two reads of one register of one meter")
    if before.timestamp >= after.timestamp:
        raise ValueError(
            f"reads must be in time order: {before.timestamp} is not before {after.timestamp}"
        )
    decimals = resolution_decimals(before.quantity, before.value, after.value)
    first = to_steps(before.value, decimals)
    delta = to_steps(after.value, decimals) - first
    span = (after.timestamp - before.timestamp) // _MICROSECOND
    values = []
    for ts in at:
        if not before.timestamp <= ts <= after.timestamp:
            raise ValueError(
                f"{ts} is outside the interpolation span {before.timestamp}..{after.timestamp}"
            )
        elapsed = (ts - before.timestamp) // _MICROSECOND
        # Round half up (towards +inf), in integers: each boundary's error is in
        # (-1/2, 1/2], so every interval gets the floor or the ceiling of its exact share.
        share = (2 * delta * elapsed + span) // (2 * span)
        values.append(from_steps(first + share, decimals))
    return tuple(values)


def estimate_gaps(
    reads: Sequence[StoredRead],
    interval: timedelta,
    settings: VeeSettings = DEFAULT_SETTINGS,
) -> tuple[StoredRead, ...]:
    """The estimated reads that belong between the real reads of one register.

    ``reads`` are the stored reads of one cumulative register of one meter, in any
    order; only MEASURED and FLAGGED reads count (estimates and rejected reads are
    ignored). Every interval boundary that no real read covers (none within the
    alignment tolerance) and that lies between two MEASURED reads is estimated, when the
    register did not go backwards between them and they are at most
    ``settings.max_estimated_gap`` apart. Other holes stay without a stored estimate;
    :func:`headend.consumption.interval_consumption` still fills them, as FLAGGED.

    The caller replaces every stored ESTIMATED read strictly between the first and the
    last real read of ``reads`` with the result.

    Raises:
        ValueError: reads of more than one meter or register, of an instantaneous
            quantity, two real reads with one timestamp, or an unusable interval.
    """
    check_interval(interval)
    anchors = real_anchors(reads)
    tolerance = settings.tolerance_for(interval)
    estimates: list[StoredRead] = []
    for before, after in itertools.pairwise(anchors):
        span = missing_boundaries(before.timestamp, after.timestamp, interval, tolerance)
        if span is None or not is_estimable(before, after, settings):
            continue
        at = list(boundaries(span[0], span[1], interval))
        for ts, value in zip(at, interpolate(before, after, at), strict=True):
            estimates.append(
                StoredRead(before.meter_id, before.quantity, ts, value, Quality.ESTIMATED)
            )
    return tuple(estimates)


def is_estimable(before: StoredRead, after: StoredRead, settings: VeeSettings) -> bool:
    """Whether the boundaries between two real reads may be estimated (not held)."""
    return (
        before.quality is Quality.MEASURED
        and after.quality is Quality.MEASURED
        and after.value >= before.value
        and after.timestamp - before.timestamp <= settings.max_estimated_gap
    )


def real_anchors(reads: Sequence[StoredRead]) -> list[StoredRead]:
    """The MEASURED and FLAGGED reads of one cumulative register, in time order.

    Raises:
        ValueError: reads of more than one meter or register, an instantaneous quantity,
            or two real reads with one timestamp.
    """
    registers = {(r.meter_id, r.quantity) for r in reads}
    if len(registers) > 1:
        raise ValueError(f"reads of more than one register: {sorted(map(str, registers))}")
    anchors = sorted((r for r in reads if r.quality in _ANCHORS), key=_by_time)
    if anchors and anchors[0].quantity.info.kind is not Kind.CUMULATIVE:
        raise ValueError(f"{anchors[0].quantity} is not a cumulative register")
    for a, b in itertools.pairwise(anchors):
        if a.timestamp == b.timestamp:
            raise ValueError(f"two real reads at {a.timestamp}: {a.value} and {b.value}")
    return anchors


def to_steps(value: Decimal, decimals: int) -> int:
    """``value`` as a whole number of ``10**-decimals`` steps.

    Raises:
        ValueError: ``value`` has more decimals than that.
    """
    steps = value.scaleb(decimals)
    if steps != steps.to_integral_value():
        raise ValueError(f"{value} has more than {decimals} decimals")
    return int(steps)


def from_steps(steps: int, decimals: int) -> Decimal:
    """A whole number of ``10**-decimals`` steps as a Decimal written with ``decimals``."""
    return Decimal(steps).scaleb(-decimals)


__all__ = [
    "estimate_gaps",
    "from_steps",
    "interpolate",
    "is_estimable",
    "real_anchors",
    "to_steps",
]
