"""Interval consumption from cumulative register reads, aligned to interval boundaries.

This is what the head-end publishes as "new interval consumption for meter M from t1 to
t2": for each interval ``[b, b + interval)`` between the first and the last real read of a
register, the register's value at both boundaries and their difference.

The value at a boundary is the real read within the alignment tolerance of it (the
closest, the earlier on a tie), or else the exact interpolation between the real reads on
either side (:func:`headend.estimation.interpolate`, the same split stored estimates use).
The quality of an interval is the worse of its two boundaries':

* MEASURED: both boundaries are accepted reads.
* ESTIMATED: a boundary was interpolated between two accepted reads at most
  ``max_estimated_gap`` apart between which the register did not go backwards.
* FLAGGED (held for an operator, never charged silently): a boundary is a flagged read or
  was interpolated from one, the gap was longer than ``max_estimated_gap``, or the
  interval's consumption is negative.

Because every interval is the difference of two boundary values, the intervals of any
span sum exactly to the register's advance over it, and a gap is spread over its own
intervals instead of landing in the one after it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from headend.estimation import from_steps, interpolate, is_estimable, real_anchors, to_steps
from headend.validation import (
    DEFAULT_SETTINGS,
    Quality,
    StoredRead,
    VeeSettings,
    boundaries,
    ceil_boundary,
    check_interval,
    floor_boundary,
    resolution_decimals,
    worst_quality,
)
from protocols.quantities import Quantity

_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class IntervalConsumption:
    """Energy registered in one interval ``[t_start, t_end)`` (UTC) by one register.

    ``energy_kwh`` is exact, with the register's resolution; it may be negative only when
    ``quality`` is FLAGGED. ``reason`` says why a record is estimated or flagged.
    The record is identified by :attr:`key`; a later record with the same key supersedes
    it (a late read, a re-estimate, an operator's decision).
    """

    meter_id: str
    quantity: Quantity
    t_start: datetime
    t_end: datetime
    energy_kwh: Decimal
    quality: Quality
    reason: str = ""

    @property
    def key(self) -> tuple[str, Quantity, datetime]:
        return (self.meter_id, self.quantity, self.t_start)


# Not frozen: made per boundary and never shared, and a frozen __init__ costs more.
@dataclass(slots=True)
class _Point:
    value: Decimal
    quality: Quality
    reason: str


def interval_consumption(
    reads: Sequence[StoredRead],
    interval: timedelta,
    settings: VeeSettings = DEFAULT_SETTINGS,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
) -> tuple[IntervalConsumption, ...]:
    """Every whole interval of one register that the real reads determine, in order.

    ``reads`` are stored reads of one cumulative register of one meter, in any order;
    MEASURED and FLAGGED reads are the points, ESTIMATED and REJECTED reads are ignored
    (estimates are recomputed here from the same real reads, so they agree). Intervals run
    from the first boundary the reads reach (within the alignment tolerance of the first
    read) to the last, and only those inside ``[start, end]`` when given.

    Raises:
        ValueError: reads of more than one meter or register, an instantaneous quantity,
            two real reads with one timestamp, an unusable interval, or a naive
            ``start`` / ``end``.
    """
    check_interval(interval)
    for bound in (start, end):
        if bound is not None and bound.utcoffset() is None:
            raise ValueError(f"start and end must be timezone-aware, got {bound!r}")
    anchors = real_anchors(reads)
    if not anchors:
        return ()
    tolerance = settings.tolerance_for(interval)
    first = ceil_boundary(anchors[0].timestamp - tolerance, interval)
    last = floor_boundary(anchors[-1].timestamp + tolerance, interval)
    if start is not None:
        first = max(first, ceil_boundary(start.astimezone(UTC), interval))
    if end is not None:
        last = min(last, floor_boundary(end.astimezone(UTC), interval))
    if last <= first:
        return ()

    decimals = resolution_decimals(anchors[0].quantity, *(a.value for a in anchors))
    times = [a.timestamp for a in anchors]
    meter_id, quantity = anchors[0].meter_id, anchors[0].quantity
    records: list[IntervalConsumption] = []
    # A boundary's steps are kept for the next interval, which starts there.
    previous: tuple[datetime, _Point, int] | None = None
    for b in boundaries(first, last, interval):
        point = _point_at(b, anchors, times, tolerance, settings)
        steps = to_steps(point.value, decimals)
        if previous is not None:
            t_start, start_point, start_steps = previous
            energy = from_steps(steps - start_steps, decimals)
            quality = worst_quality(start_point.quality, point.quality)
            reasons = [r for r in (start_point.reason, point.reason) if r]
            if energy < 0:
                quality = Quality.FLAGGED
                reasons.append(f"negative consumption {energy}")
            records.append(
                IntervalConsumption(
                    meter_id,
                    quantity,
                    t_start,
                    b,
                    energy,
                    quality,
                    "; ".join(dict.fromkeys(reasons)),
                )
            )
        previous = (b, point, steps)
    return tuple(records)


def _point_at(
    b: datetime,
    anchors: list[StoredRead],
    times: list[datetime],
    tolerance: timedelta,
    settings: VeeSettings,
) -> _Point:
    """The register's value at boundary ``b``, its quality and why."""
    lo = bisect.bisect_left(times, b - tolerance)
    hi = bisect.bisect_right(times, b + tolerance)
    if lo < hi:
        # One read within the tolerance is the usual case: nothing to choose between.
        read = (
            anchors[lo]
            if hi - lo == 1
            else min(anchors[lo:hi], key=lambda r: (abs(r.timestamp - b), r.timestamp))
        )
        reason = "" if read.quality is Quality.MEASURED else f"flagged read at {_fmt(read)}"
        return _Point(read.value, read.quality, reason)
    i = bisect.bisect_left(times, b)
    before, after = anchors[i - 1], anchors[i]
    (value,) = interpolate(before, after, [b])
    between = f"between {_fmt(before)} and {_fmt(after)}"
    if is_estimable(before, after, settings):
        return _Point(value, Quality.ESTIMATED, f"estimated {between}")
    if Quality.FLAGGED in (before.quality, after.quality):
        why = "interpolated from a flagged read"
    elif after.value < before.value:
        why = "interpolated across a register that went backwards"
    else:
        why = f"gap longer than {settings.max_estimated_gap}"
    return _Point(value, Quality.FLAGGED, f"{why} {between}")


def _fmt(read: StoredRead) -> str:
    return read.timestamp.isoformat().replace("+00:00", "Z")


def derivation_span(
    changed_from: datetime,
    changed_to: datetime,
    previous_real: datetime | None,
    next_real: datetime | None,
    interval: timedelta,
    settings: VeeSettings = DEFAULT_SETTINGS,
) -> tuple[datetime, datetime]:
    """The boundaries ``(start, end)`` outside which a change to real reads alters nothing.

    A change is real reads of one register added, removed or re-qualified with
    timestamps in ``[changed_from, changed_to]``; ``previous_real`` and ``next_real`` are
    the timestamps of the nearest real (MEASURED or FLAGGED) reads strictly before and
    after that span, or None. Re-derive with every real read from the latest one at or
    before ``start - tolerance`` to the earliest one at or after ``end + tolerance``
    (tolerance: ``settings.tolerance_for(interval)``), passing ``start`` and ``end``, and
    publish :func:`superseding` and :func:`withdrawals` against what was published in
    ``[start, end]`` before.

    Raises:
        ValueError: an unusable interval, or ``changed_to`` before ``changed_from``.
    """
    check_interval(interval)
    if changed_to < changed_from:
        raise ValueError(f"changed_to {changed_to} is before changed_from {changed_from}")
    tolerance = settings.tolerance_for(interval)
    # Strictly beyond the neighbours' own tolerance: a boundary exactly one tolerance from a
    # neighbour could otherwise be won by a changed read that is closer to it.
    low = (previous_real if previous_real is not None else changed_from) - tolerance
    high = (next_real if next_real is not None else changed_to) + tolerance
    start = floor_boundary(low.astimezone(UTC) - _MICROSECOND, interval)
    end = ceil_boundary(high.astimezone(UTC) + _MICROSECOND, interval)
    return start, end


def superseding(
    published: Iterable[IntervalConsumption], derived: Iterable[IntervalConsumption]
) -> tuple[IntervalConsumption, ...]:
    """The derived records that are new or differ from the published ones.

    A record differs when its energy, quality, end or reason changed (an operator needs
    the current reason for a held interval). These are the records to append to the
    consumption stream; a consumer treats a record with a key it has seen as a
    correction of the earlier one.
    """
    seen = {r.key: r for r in published}
    return tuple(r for r in derived if seen.get(r.key) != r)


def withdrawals(
    published: Iterable[IntervalConsumption],
    derived: Iterable[IntervalConsumption],
    start: datetime,
    end: datetime,
) -> tuple[IntervalConsumption, ...]:
    """Corrections for published intervals in ``[start, end]`` that are no longer derived.

    This happens when the real reads that determined an interval went away (an operator
    rejected the last read of a register, say). Each correction has the published key,
    zero energy and quality FLAGGED, so the consumer reverses what it rated and holds the
    interval for an operator. Published records outside ``[start, end]`` are left alone,
    since the derivation did not look there.
    """
    kept = {r.key for r in derived}
    return tuple(
        IntervalConsumption(
            r.meter_id,
            r.quantity,
            r.t_start,
            r.t_end,
            Decimal(0).quantize(r.energy_kwh),
            Quality.FLAGGED,
            "withdrawn: no longer determined by real reads",
        )
        for r in published
        if start <= r.t_start and r.t_end <= end and r.key not in kept
    )


__all__ = [
    "IntervalConsumption",
    "derivation_span",
    "interval_consumption",
    "superseding",
    "withdrawals",
]
