"""Validation of meter register reads (the V of VEE), as a meter-data system does it.

A read is judged against the meter's ratings and the reads already stored for the same
register, and the answer is a :class:`Verdict`: accepted, flagged (kept, but the
consumption it implies is held for an operator), rejected (kept with its flags, never used
as a point of the register), or a duplicate of a read already stored. Nothing is dropped:
every verdict carries the read and the reasons, and the caller stores it.

Everything here is pure: no clock (``now`` is a parameter), no storage, no I/O.
:func:`validate_read` never raises for anything a meter can send; only the caller's own
objects (:class:`StoredRead`, :class:`MeterProfile`, :class:`VeeSettings`) refuse to be
built from bad values.

This module also holds the types the estimation and consumption modules share: the
stored read, its quality, the per-meter profile, the settings and the interval grid.
"""

from __future__ import annotations

import bisect
import enum
import functools
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from protocols.quantities import Kind, Quantity

# Values outside these bounds are not readings a meter can produce; refusing them up front
# keeps every Decimal operation below exact under the default 28-digit context.
MAX_ABS_VALUE = Decimal(10) ** 15
MAX_DECIMALS = 9

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Marks a lazily computed slot as not computed yet (None is a valid answer).
_UNSET: Any = object()
_MICROSECOND = timedelta(microseconds=1)
_DAY = timedelta(days=1)
_MICROSECONDS_PER_HOUR = 3_600_000_000


# --- qualities, flags, verdicts -----------------------------------------------------------


class Quality(enum.StrEnum):
    """How far a stored read or a consumption interval can be trusted, best first."""

    MEASURED = "measured"  # a real read that passed validation
    ESTIMATED = "estimated"  # interpolated for a missing interval boundary
    FLAGGED = "flagged"  # a real read whose implied consumption is suspect: held for review
    REJECTED = "rejected"  # a real read that is unusable (bad time, value, unit, conflict)

    @property
    def rank(self) -> int:
        return _QUALITY_RANK[self]

    @property
    def is_real(self) -> bool:
        """True for a read the meter sent (not an estimate)."""
        return self is not Quality.ESTIMATED

    @property
    def is_anchor(self) -> bool:
        """True for a read that fixes the register's value at its timestamp."""
        return self in (Quality.MEASURED, Quality.FLAGGED)


_QUALITY_RANK = {q: i for i, q in enumerate(Quality)}
# Sort key of reads by time (an attrgetter is cheaper than a lambda per read).
_by_time = operator.attrgetter("timestamp")


def worst_quality(*qualities: Quality) -> Quality:
    return max(qualities, key=_QUALITY_RANK.__getitem__)


class Category(enum.StrEnum):
    """What a flag does to a read's verdict."""

    RECORD = "record"  # the read itself is unusable: verdict REJECTED
    CONSUMPTION = "consumption"  # the read is plausible but its consumption is suspect: FLAGGED
    INFO = "info"  # worth knowing (alarms, estimation), the read is accepted


class Flag(enum.StrEnum):
    """Validation flag codes. Stored with the read; documented in docs/readings.md."""

    WRONG_METER = "wrong_meter"
    UNKNOWN_QUANTITY = "unknown_quantity"
    UNIT_MISMATCH = "unit_mismatch"
    INVALID_TIMESTAMP = "invalid_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    STALE_TIMESTAMP = "stale_timestamp"
    BEFORE_INSTALL = "before_install"
    INVALID_VALUE = "invalid_value"
    OUT_OF_RANGE = "out_of_range"
    CONFLICT = "conflict"
    NEGATIVE_CONSUMPTION = "negative_consumption"
    ROLLOVER = "rollover"
    SPIKE = "spike"
    GAP = "gap"
    ZERO_CONSUMPTION = "zero_consumption"
    REPLACES_ESTIMATE = "replaces_estimate"
    DUPLICATE = "duplicate"

    @property
    def category(self) -> Category:
        return _FLAG_CATEGORY[self]


_FLAG_CATEGORY = {
    Flag.WRONG_METER: Category.RECORD,
    Flag.UNKNOWN_QUANTITY: Category.RECORD,
    Flag.UNIT_MISMATCH: Category.RECORD,
    Flag.INVALID_TIMESTAMP: Category.RECORD,
    Flag.FUTURE_TIMESTAMP: Category.RECORD,
    Flag.STALE_TIMESTAMP: Category.RECORD,
    Flag.BEFORE_INSTALL: Category.RECORD,
    Flag.INVALID_VALUE: Category.RECORD,
    Flag.OUT_OF_RANGE: Category.RECORD,
    Flag.CONFLICT: Category.RECORD,
    Flag.NEGATIVE_CONSUMPTION: Category.CONSUMPTION,
    Flag.ROLLOVER: Category.CONSUMPTION,
    Flag.SPIKE: Category.CONSUMPTION,
    Flag.GAP: Category.INFO,
    Flag.ZERO_CONSUMPTION: Category.INFO,
    Flag.REPLACES_ESTIMATE: Category.INFO,
    Flag.DUPLICATE: Category.INFO,
}


class Status(enum.StrEnum):
    """What the caller does with a read."""

    ACCEPTED = "accepted"  # store as MEASURED
    FLAGGED = "flagged"  # store as FLAGGED; its consumption is held for an operator
    REJECTED = "rejected"  # store as REJECTED with its flags; never used as a point
    DUPLICATE = "duplicate"  # the same read is already stored: nothing new to store


_STATUS_QUALITY = {
    Status.ACCEPTED: Quality.MEASURED,
    Status.FLAGGED: Quality.FLAGGED,
    Status.REJECTED: Quality.REJECTED,
}


@dataclass(frozen=True, slots=True)
class Finding:
    flag: Flag
    reason: str


@dataclass(frozen=True, slots=True)
class RegisterRead:
    """One value of one register as a meter reported it, before validation.

    Deliberately unchecked: whatever arrived is judged by :func:`validate_read`, which
    flags what is wrong instead of refusing to hold it. ``quantity`` may also be given by
    its wire name (``"energy_import_kwh"``). ``unit`` is the unit the source reported, or
    None when the transport implies it (MQTT keys, the Modbus register map).
    """

    meter_id: str
    quantity: Quantity
    timestamp: datetime
    value: Decimal
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class StoredRead:
    """A read as kept in storage (real or estimated), used as context and for consumption.

    Raises:
        ValueError: a naive timestamp, a non-finite or out-of-bounds value, an unknown
            quantity or quality. A stored read is always well formed.
    """

    meter_id: str
    quantity: Quantity
    timestamp: datetime
    value: Decimal
    quality: Quality

    def __post_init__(self) -> None:
        if not isinstance(self.quantity, Quantity):
            raise ValueError(f"unknown quantity {self.quantity!r}")
        if not isinstance(self.quality, Quality):
            raise ValueError(f"unknown quality {self.quality!r}")
        if not _is_aware(self.timestamp):
            raise ValueError(f"timestamp {self.timestamp!r} must be timezone-aware")
        problem = _value_problem(self.value)
        if problem:
            raise ValueError(f"value {self.value!r}: {problem}")
        # One representation of an instant, so equal timestamps compare and hash equal.
        utc = _to_utc(self.timestamp)
        if utc is None:
            raise ValueError(f"timestamp {self.timestamp!r} is out of range in UTC")
        object.__setattr__(self, "timestamp", utc)

    @classmethod
    def _trusted(
        cls, meter_id: str, quantity: Quantity, utc: datetime, value: Decimal, quality: Quality
    ) -> StoredRead:
        """A stored read from parts already known to be well formed (``utc`` in UTC).

        For hot paths only (reads out of the database, verdicts already checked): building
        through ``__init__`` re-runs every check, which was a large share of ingestion's CPU.
        """
        read = object.__new__(cls)
        _set = object.__setattr__
        _set(read, "meter_id", meter_id)
        _set(read, "quantity", quantity)
        _set(read, "timestamp", utc)
        _set(read, "value", value)
        _set(read, "quality", quality)
        return read


@dataclass(frozen=True, slots=True)
class Verdict:
    """The judgement on one :class:`RegisterRead`, with every reason found."""

    read: RegisterRead
    status: Status
    findings: tuple[Finding, ...] = ()
    # to_stored's answer, worked out once: validate_reads and its caller both ask for it.
    _stored: Any = field(default=_UNSET, init=False, repr=False, compare=False)

    @property
    def flags(self) -> frozenset[Flag]:
        return frozenset(f.flag for f in self.findings)

    @property
    def quality(self) -> Quality | None:
        """The quality to store the read with; None for a duplicate (already stored)."""
        return _STATUS_QUALITY.get(self.status)

    @property
    def reason(self) -> str:
        """All findings as one line for a person; empty for a clean read."""
        return "; ".join(f"{f.flag}: {f.reason}" for f in self.findings)

    def to_stored(self) -> StoredRead | None:
        """The read as it should be stored for use as context, or None.

        None for a duplicate, and for a rejected read whose timestamp or value cannot be
        represented as a :class:`StoredRead` (the caller keeps such a read raw, with its
        flags, in whatever quarantine it has).
        """
        if self._stored is not _UNSET:
            stored: StoredRead | None = self._stored
            return stored
        stored = self._to_stored()
        object.__setattr__(self, "_stored", stored)
        return stored

    def _to_stored(self) -> StoredRead | None:
        quality = _STATUS_QUALITY.get(self.status)
        read = self.read
        quantity = _as_quantity(read.quantity)
        if quality is None or quantity is None or not isinstance(read.meter_id, str):
            return None
        utc = _to_utc(read.timestamp) if _is_aware(read.timestamp) else None
        if utc is None or _value_problem(read.value):
            return None
        # Every check StoredRead makes was made just above.
        return StoredRead._trusted(read.meter_id, quantity, utc, read.value, quality)


# --- configuration ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterProfile:
    """What validation needs to know about one meter, from the registry.

    ``rated_max_current_a`` is Imax per phase from the nameplate; the meter's maximum power
    is ``phases * nominal_voltage_v * rated_max_current_a`` unless ``rated_max_power_w``
    states it. ``interval`` is the energy interval (15 minutes by default); it must be a
    whole number of seconds that divides a day, so boundaries fall on UTC midnight.
    ``register_capacity_kwh`` is where a cumulative register wraps to zero (for a register
    of six integer digits, 1000000), or None if it is not known. ``installed_at`` is when
    the meter was installed: a read stamped earlier is a clock fault, and stored reads from
    before it (a previous register epoch) are not context.

    Raises:
        ValueError: phases not 1 or 3, a non-positive rating, an unusable interval, or a
            naive ``installed_at``.
    """

    meter_id: str
    phases: int
    rated_max_current_a: Decimal
    nominal_voltage_v: Decimal = Decimal(230)
    nominal_frequency_hz: Decimal = Decimal(50)
    interval: timedelta = timedelta(minutes=15)
    register_capacity_kwh: Decimal | None = None
    rated_max_power_w: Decimal | None = None
    installed_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.installed_at is not None and not _is_aware(self.installed_at):
            raise ValueError(f"installed_at must be timezone-aware, got {self.installed_at!r}")
        if isinstance(self.phases, bool) or self.phases not in (1, 3):
            raise ValueError(f"phases must be 1 or 3, got {self.phases!r}")
        for name in ("rated_max_current_a", "nominal_voltage_v", "nominal_frequency_hz"):
            _require_positive(name, getattr(self, name))
        for name in ("register_capacity_kwh", "rated_max_power_w"):
            if getattr(self, name) is not None:
                _require_positive(name, getattr(self, name))
        check_interval(self.interval)

    @property
    def max_power_w(self) -> Decimal:
        if self.rated_max_power_w is not None:
            return self.rated_max_power_w
        return self.phases * self.nominal_voltage_v * self.rated_max_current_a


@dataclass(frozen=True, slots=True)
class VeeSettings:
    """Every threshold of validation, estimation and consumption, with its default.

    clock_tolerance: how far ahead of ``now`` a read may be stamped (meter clock drift).
    max_read_age: how old a read may be when it arrives (older is a meter clock fault).
    alignment_tolerance: how far a read may sit from an interval boundary and still count
        as the read for that boundary; capped at a quarter of the interval.
    spike_margin: a cumulative register may advance by at most the meter's maximum power
        times the elapsed time times this margin (plus one register resolution step).
    zero_consumption_after: an unchanged register for at least this long is reported
        (info); None turns the check off.
    max_estimated_gap: the longest span between two real reads that is interpolated as
        ESTIMATED; longer gaps are still interpolated, but as FLAGGED for an operator.
    voltage_max_factor: a voltage above nominal times this is not physical.
    frequency_tolerance: a frequency further than this fraction from nominal is not physical.
    overload_factor: a current above Imax, or a power above the maximum power, times this
        is not physical.

    Raises:
        ValueError: a negative duration or a non-positive factor.
    """

    clock_tolerance: timedelta = timedelta(minutes=5)
    max_read_age: timedelta = timedelta(days=90)
    alignment_tolerance: timedelta = timedelta(minutes=1)
    spike_margin: Decimal = Decimal("1.1")
    zero_consumption_after: timedelta | None = timedelta(hours=72)
    max_estimated_gap: timedelta = timedelta(hours=48)
    voltage_max_factor: Decimal = Decimal(2)
    frequency_tolerance: Decimal = Decimal("0.1")
    overload_factor: Decimal = Decimal("1.5")

    def __post_init__(self) -> None:
        for name in (
            "clock_tolerance",
            "max_read_age",
            "alignment_tolerance",
            "max_estimated_gap",
            "zero_consumption_after",
        ):
            value = getattr(self, name)
            if value is not None and value < timedelta(0):
                raise ValueError(f"{name} must not be negative, got {value}")
        for name in ("spike_margin", "voltage_max_factor", "overload_factor"):
            _require_positive(name, getattr(self, name))
        if not (
            isinstance(self.frequency_tolerance, Decimal)
            and self.frequency_tolerance.is_finite()
            and 0 <= self.frequency_tolerance < 1
        ):
            raise ValueError(
                f"frequency_tolerance must be in [0, 1), got {self.frequency_tolerance}"
            )

    def tolerance_for(self, interval: timedelta) -> timedelta:
        """The alignment tolerance used with ``interval``: never more than a quarter of it."""
        return _capped_tolerance(self.alignment_tolerance, interval)


# Asked for several times per read with the same two durations: a timedelta division and a
# min each time were a measurable share of ingestion.
@functools.lru_cache(maxsize=256)
def _capped_tolerance(alignment: timedelta, interval: timedelta) -> timedelta:
    return min(alignment, interval / 4)


def _require_positive(name: str, value: object) -> None:
    if not (isinstance(value, Decimal) and value.is_finite() and value > 0):
        raise ValueError(f"{name} must be a positive finite Decimal, got {value!r}")


DEFAULT_SETTINGS = VeeSettings()


# --- the interval grid --------------------------------------------------------------------


def check_interval(interval: timedelta) -> None:
    """Raise ValueError unless ``interval`` is whole seconds, positive and divides a day."""
    # Checked once per register of every batch, and a meter fleet has one or two intervals.
    if type(interval) is timedelta and interval in _CHECKED_INTERVALS:
        return
    if not isinstance(interval, timedelta) or interval <= timedelta(0):
        raise ValueError(f"interval must be a positive timedelta, got {interval!r}")
    if interval % timedelta(seconds=1) or _DAY % interval:
        raise ValueError(f"interval {interval} must be whole seconds and divide a day")
    if type(interval) is timedelta and len(_CHECKED_INTERVALS) < 64:
        _CHECKED_INTERVALS.add(interval)


# Intervals check_interval has accepted (a timedelta's value never changes).
_CHECKED_INTERVALS: set[timedelta] = set()


def floor_boundary(ts: datetime, interval: timedelta) -> datetime:
    """The interval boundary at or before ``ts`` (boundaries are aligned to UTC midnight)."""
    return ts - (ts - _EPOCH) % interval


def ceil_boundary(ts: datetime, interval: timedelta) -> datetime:
    """The interval boundary at or after ``ts``."""
    past = (ts - _EPOCH) % interval
    return ts if not past else ts - past + interval


def boundaries(start: datetime, end: datetime, interval: timedelta) -> Iterable[datetime]:
    """Every interval boundary ``b`` with ``start <= b <= end``, in order."""
    b = ceil_boundary(start, interval)
    while b <= end:
        yield b
        b += interval


def count_boundaries(start: datetime, end: datetime, interval: timedelta) -> int:
    """How many boundaries lie in ``[start, end]`` (0 if ``end < start``), without listing."""
    if end < start:
        return 0
    first = ceil_boundary(start, interval)
    if first > end:
        return 0
    return (end - first) // interval + 1


def missing_boundaries(
    before: datetime, after: datetime, interval: timedelta, tolerance: timedelta
) -> tuple[datetime, datetime] | None:
    """The first and last boundary between two reads that neither read covers, or None.

    A read covers the boundaries within ``tolerance`` of it, so the boundaries missing
    between reads at ``before`` and ``after`` are those strictly inside
    ``(before + tolerance, after - tolerance)``.
    """
    lo = before + tolerance + _MICROSECOND
    hi = after - tolerance - _MICROSECOND
    if hi < lo:
        return None
    first = ceil_boundary(lo, interval)
    last = floor_boundary(hi, interval)
    return (first, last) if first <= last else None


# --- exact arithmetic helpers -------------------------------------------------------------


def _is_aware(ts: object) -> bool:
    return isinstance(ts, datetime) and ts.utcoffset() is not None


def _as_quantity(name: object) -> Quantity | None:
    """The quantity named by ``name`` (a Quantity or its wire name), or None."""
    if isinstance(name, Quantity):
        return name
    if isinstance(name, str):
        try:
            return Quantity(name)
        except ValueError:
            return None
    return None


def _to_utc(ts: datetime) -> datetime | None:
    """``ts`` in UTC, or None if that falls outside the datetime range (year 1 or 9999)."""
    try:
        return ts.astimezone(UTC)
    except OverflowError:
        return None


def _value_problem(value: object) -> str:
    """Why ``value`` cannot be a register value, or "" if it can."""
    if isinstance(value, bool) or not isinstance(value, Decimal):
        return f"expected a Decimal, got {type(value).__name__}"
    if not value.is_finite():
        return "not a finite number"
    if abs(value) >= MAX_ABS_VALUE:
        return f"magnitude at or above {MAX_ABS_VALUE:E}"
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_DECIMALS:
        return f"more than {MAX_DECIMALS} decimal places"
    return ""


def decimals_of(value: Decimal) -> int:
    """Decimal places written in ``value`` (0 for integers and positive exponents)."""
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite values only
    return max(0, -exponent)


def resolution_decimals(quantity: Quantity, *values: Decimal) -> int:
    """Decimal places of the register's resolution: the quantity's, or finer if reads are."""
    # decimals_of inlined: this runs per read and per derived register.
    decimals = quantity.info.decimals
    for value in values:
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)  # finite values only
        if -exponent > decimals:
            decimals = -exponent
    return decimals


def max_energy_kwh(profile: MeterProfile, elapsed: timedelta) -> Fraction:
    """The most energy (kWh) the meter can register in ``elapsed``, exactly."""
    return (
        Fraction(profile.max_power_w)
        * Fraction(elapsed // _MICROSECOND, _MICROSECONDS_PER_HOUR)
        / 1000
    )


def _fmt_ts(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- context ------------------------------------------------------------------------------


class _Register:
    """The stored reads of one register, kept sorted by time for neighbour look-ups."""

    __slots__ = ("_reads", "_times")

    def __init__(self, reads: Iterable[StoredRead]) -> None:
        self._reads: list[StoredRead] = sorted(reads, key=_by_time)
        self._times: list[datetime] = [r.timestamp for r in self._reads]

    @classmethod
    def empty(cls) -> _Register:
        """A register without stored reads (most instantaneous ones), without sorting."""
        register = cls.__new__(cls)
        register._reads = []
        register._times = []
        return register

    def add(self, read: StoredRead) -> None:
        i = bisect.bisect_right(self._times, read.timestamp)
        self._times.insert(i, read.timestamp)
        self._reads.insert(i, read)

    def at(self, ts: datetime) -> list[StoredRead]:
        lo = bisect.bisect_left(self._times, ts)
        hi = bisect.bisect_right(self._times, ts)
        return self._reads[lo:hi]

    def between(self, start: datetime, end: datetime) -> list[StoredRead]:
        """Reads strictly after ``start`` and strictly before ``end``."""
        lo = bisect.bisect_right(self._times, start)
        hi = bisect.bisect_left(self._times, end)
        return self._reads[lo:hi]

    def previous_measured(self, ts: datetime) -> tuple[int, StoredRead] | None:
        i = bisect.bisect_left(self._times, ts) - 1
        while i >= 0:
            if self._reads[i].quality is Quality.MEASURED:
                return i, self._reads[i]
            i -= 1
        return None

    def next_measured(self, ts: datetime) -> StoredRead | None:
        i = bisect.bisect_right(self._times, ts)
        while i < len(self._reads):
            if self._reads[i].quality is Quality.MEASURED:
                return self._reads[i]
            i += 1
        return None

    def unchanged_since(self, index: int) -> datetime:
        """Earliest time the register showed the value of the read at ``index``.

        Walks back over measured and estimated reads; flagged and rejected reads are not
        evidence of the register's value and are stepped over.
        """
        value = self._reads[index].value
        since = self._reads[index].timestamp
        for i in range(index - 1, -1, -1):
            read = self._reads[i]
            if read.quality in (Quality.FLAGGED, Quality.REJECTED):
                continue
            if read.value != value:
                break
            since = read.timestamp
        return since


class _Registers(dict[Quantity, _Register]):
    """Registers by quantity; one without stored reads is made empty when first asked for
    (building one for every quantity of every meter was measurable per batch)."""

    def __missing__(self, quantity: Quantity) -> _Register:
        register = self[quantity] = _Register.empty()
        return register


# --- validation ---------------------------------------------------------------------------


def validate_read(
    read: RegisterRead,
    stored: Sequence[StoredRead],
    profile: MeterProfile,
    now: datetime,
    settings: VeeSettings = DEFAULT_SETTINGS,
) -> Verdict:
    """Judge one read of ``profile``'s meter against the reads already stored.

    ``stored`` holds stored reads of the meter; reads of other meters, rejected reads and
    reads from before ``profile.installed_at`` are skipped. For every check to run it must
    contain, for the read's register: the
    latest MEASURED read before the read, the earliest MEASURED read after it (a late
    read is checked against both sides), any read at the same timestamp, and, for the
    zero-consumption check, the earliest MEASURED read with the latest one's value. A
    missing context read only means a check is not made; it never causes a false flag.

    Never raises for any ``read``.

    Raises:
        ValueError: ``now`` is not timezone-aware (a caller bug, not meter data).
    """
    return validate_reads([read], stored, profile, now, settings)[0]


def validate_reads(
    reads: Sequence[RegisterRead],
    stored: Sequence[StoredRead],
    profile: MeterProfile,
    now: datetime,
    settings: VeeSettings = DEFAULT_SETTINGS,
) -> tuple[Verdict, ...]:
    """Judge reads in arrival order, each against ``stored`` plus the reads judged before it.

    The result is what calling :func:`validate_read` on each read in turn would give
    after storing the previous verdicts (``Verdict.to_stored``): the first of two reads
    with one timestamp wins, and an accepted read is context for the next ones.

    Raises:
        ValueError: ``now`` is not timezone-aware.
    """
    if not _is_aware(now):
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    by_quantity: dict[Quantity, list[StoredRead]] = {}
    for r in stored:
        if _is_context(r, profile):
            by_quantity.setdefault(r.quantity, []).append(r)
    registers = _Registers({q: _Register(reads) for q, reads in by_quantity.items()})
    # The same for every read of the call: worked out once, not per read.
    judging = _Judging(now, settings, profile)
    verdicts = []
    for i, read in enumerate(reads):
        verdict = _judge(read, registers, profile, judging)
        verdicts.append(verdict)
        kept = verdict.to_stored() if i < len(reads) - 1 else None
        if kept is not None and _is_context(kept, profile):
            registers[kept.quantity].add(kept)
    return tuple(verdicts)


def _is_context(read: StoredRead, profile: MeterProfile) -> bool:
    """Whether a stored read says anything about ``profile``'s meter as it is now.

    Rejected reads never do: they hold no value of the register, and must not block a
    good read at their timestamp (a resend with the right unit, say). Reads from before
    the installation belong to a previous register epoch.
    """
    return (
        read.meter_id == profile.meter_id
        and read.quality is not Quality.REJECTED
        and (profile.installed_at is None or read.timestamp >= profile.installed_at)
    )


class _Judging:
    """What every read of one ``validate_reads`` call is judged with."""

    __slots__ = (
        "_margin_ratio",
        "_power_ratio",
        "bounds",
        "latest",
        "now",
        "oldest",
        "profile",
        "settings",
        "tolerance",
    )

    def __init__(self, now: datetime, settings: VeeSettings, profile: MeterProfile) -> None:
        self.now = now
        self.settings = settings
        self.profile = profile
        self.tolerance = settings.tolerance_for(profile.interval)
        # None where the bound falls outside the datetime range: _judge then computes it
        # per read, raising just as it always did.
        self.latest = _shifted(now, settings.clock_tolerance)
        self.oldest = _shifted(now, -settings.max_read_age)
        # Physical (min, max) per quantity, filled as quantities come (_range_problem).
        self.bounds: dict[Quantity, tuple[Decimal | None, Decimal | None]] = {}
        self._power_ratio: tuple[int, int] | None = None
        self._margin_ratio: tuple[int, int] | None = None

    def power_ratio(self) -> tuple[int, int]:
        """The meter's maximum power (W) as an integer ratio, worked out once."""
        if self._power_ratio is None:
            self._power_ratio = self.profile.max_power_w.as_integer_ratio()
        return self._power_ratio

    def margin_ratio(self) -> tuple[int, int]:
        """The spike margin as an integer ratio, worked out once."""
        if self._margin_ratio is None:
            self._margin_ratio = self.settings.spike_margin.as_integer_ratio()
        return self._margin_ratio


def _shifted(ts: datetime, by: timedelta) -> datetime | None:
    try:
        return ts + by
    except OverflowError:
        return None


def _judge(
    read: RegisterRead,
    registers: _Registers,
    profile: MeterProfile,
    judging: _Judging,
) -> Verdict:
    now, settings = judging.now, judging.settings
    findings: list[Finding] = []

    def flag(code: Flag, reason: str) -> None:
        findings.append(Finding(code, reason))

    if read.meter_id != profile.meter_id:
        flag(Flag.WRONG_METER, f"read for meter {read.meter_id!r} judged as {profile.meter_id!r}")
    quantity = _as_quantity(read.quantity)
    if quantity is None:
        flag(Flag.UNKNOWN_QUANTITY, f"{read.quantity!r} is not a known quantity")
    elif read.unit is not None and read.unit != quantity.info.unit:
        flag(
            Flag.UNIT_MISMATCH,
            f"{quantity} is in {quantity.info.unit!r}, the read says {read.unit!r}",
        )

    ts = _to_utc(read.timestamp) if _is_aware(read.timestamp) else None
    if ts is None:
        flag(Flag.INVALID_TIMESTAMP, f"{read.timestamp!r} is not a timezone-aware UTC instant")
    else:
        latest = judging.latest
        oldest = judging.oldest
        if ts > (now + settings.clock_tolerance if latest is None else latest):
            flag(
                Flag.FUTURE_TIMESTAMP,
                f"{_fmt_ts(ts)} is more than {settings.clock_tolerance} after now ({_fmt_ts(now)})",
            )
        elif ts < (now - settings.max_read_age if oldest is None else oldest):
            flag(
                Flag.STALE_TIMESTAMP,
                f"{_fmt_ts(ts)} is more than {settings.max_read_age} before now ({_fmt_ts(now)})",
            )
        elif profile.installed_at is not None and ts < profile.installed_at:
            flag(
                Flag.BEFORE_INSTALL,
                f"{_fmt_ts(ts)} is before the meter was installed "
                f"({_fmt_ts(profile.installed_at)})",
            )

    value: Decimal | None = None
    problem = _value_problem(read.value)
    if problem:
        flag(Flag.INVALID_VALUE, f"{read.value!r}: {problem}")
    else:
        value = read.value
        if quantity is not None:
            range_problem = _range_problem(quantity, value, profile, judging)
            if range_problem:
                flag(Flag.OUT_OF_RANGE, range_problem)

    register = registers[quantity] if quantity is not None else None
    if register is not None and ts is not None and value is not None:
        same = [r for r in register.at(ts) if r.quality.is_real]
        if same:
            match = next((r for r in same if r.value == value), None)
            if match is not None:
                return Verdict(
                    read,
                    Status.DUPLICATE,
                    (
                        Finding(
                            Flag.DUPLICATE,
                            f"same value as the read stored at {_fmt_ts(ts)} ({match.quality})",
                        ),
                    ),
                )
            flag(
                Flag.CONFLICT,
                f"a read of {same[0].value} is already stored at {_fmt_ts(ts)}; "
                f"this one says {value} (the first is kept)",
            )
        else:
            # An estimate within the alignment tolerance is for the boundary this read holds.
            near = judging.tolerance + _MICROSECOND
            for estimate in register.between(ts - near, ts + near):
                if estimate.quality is Quality.ESTIMATED:
                    flag(
                        Flag.REPLACES_ESTIMATE,
                        f"a real read for the estimate at {_fmt_ts(estimate.timestamp)}",
                    )

    # Most reads have no findings: skip the generators then.
    if findings and any(f.flag.category is Category.RECORD for f in findings):
        return Verdict(read, Status.REJECTED, tuple(findings))

    if (
        register is not None
        and quantity is not None
        and quantity.info.kind is Kind.CUMULATIVE
        and ts is not None
        and value is not None
    ):
        findings.extend(_consumption_findings(quantity, ts, value, register, judging))

    if findings and any(f.flag.category is Category.CONSUMPTION for f in findings):
        verdict = Verdict(read, Status.FLAGGED, tuple(findings))
    else:
        verdict = Verdict(read, Status.ACCEPTED, tuple(findings))
    # No record flag, so every part is well formed: hand to_stored its answer now rather
    # than have it check them all again.
    if (
        quantity is not None
        and ts is not None
        and value is not None
        and isinstance(read.meter_id, str)
    ):
        stored = StoredRead._trusted(
            read.meter_id, quantity, ts, value, _STATUS_QUALITY[verdict.status]
        )
        object.__setattr__(verdict, "_stored", stored)
    return verdict


def _range_problem(
    quantity: Quantity, value: Decimal, profile: MeterProfile, judging: _Judging
) -> str:
    """Why ``value`` is outside what ``quantity`` can physically read on this meter."""
    lo: Decimal | None
    hi: Decimal | None
    if quantity in _CUMULATIVE:
        lo, hi = _ZERO, None
        capacity = profile.register_capacity_kwh
        if capacity is not None and value >= capacity:
            return f"{value} kWh is at or above the register capacity {capacity} kWh"
    else:
        bounds = judging.bounds.get(quantity)
        if bounds is None:
            bounds = judging.bounds[quantity] = _bounds(quantity, profile, judging.settings)
        lo, hi = bounds
    # Credit may be negative (emergency credit, debt): any finite value is possible.
    if lo is not None and value < lo:
        unit = _unit_suffix(quantity)
        return f"{value}{unit} is below the physical minimum {lo}{unit}"
    if hi is not None and value > hi:
        unit = _unit_suffix(quantity)
        return f"{value}{unit} is above the physical maximum {hi}{unit}"
    return ""


_ZERO = Decimal(0)
_CUMULATIVE = frozenset(q for q in Quantity if q.info.kind is Kind.CUMULATIVE)


def _bounds(
    quantity: Quantity, profile: MeterProfile, settings: VeeSettings
) -> tuple[Decimal | None, Decimal | None]:
    """The physical (min, max) of an instantaneous ``quantity`` on this meter (None: none)."""
    lo: Decimal | None = None
    hi: Decimal | None = None
    if quantity is Quantity.VOLTAGE_V:
        lo, hi = Decimal(0), profile.nominal_voltage_v * settings.voltage_max_factor
    elif quantity is Quantity.CURRENT_A:
        lo, hi = Decimal(0), profile.rated_max_current_a * settings.overload_factor
    elif quantity is Quantity.ACTIVE_POWER_W:
        hi = profile.max_power_w * settings.overload_factor
        lo = -hi
    elif quantity is Quantity.FREQUENCY_HZ:
        spread = profile.nominal_frequency_hz * settings.frequency_tolerance
        lo, hi = profile.nominal_frequency_hz - spread, profile.nominal_frequency_hz + spread
    elif quantity is Quantity.POWER_FACTOR:
        lo, hi = Decimal(-1), Decimal(1)
    return lo, hi


def _unit_suffix(quantity: Quantity) -> str:
    return f" {quantity.info.unit}" if quantity.info.unit else ""


def _consumption_findings(
    quantity: Quantity,
    ts: datetime,
    value: Decimal,
    register: _Register,
    judging: _Judging,
) -> list[Finding]:
    profile, settings, tolerance = judging.profile, judging.settings, judging.tolerance
    findings: list[Finding] = []
    unit = quantity.info.unit
    found = register.previous_measured(ts)
    following = register.next_measured(ts)

    if found is not None:
        index, previous = found
        elapsed = ts - previous.timestamp
        delta = value - previous.value
        if delta < 0:
            findings.append(_backwards(quantity, previous, ts, value, judging))
        else:
            spike = _spike(quantity, delta, elapsed, judging, previous.value, value)
            if spike:
                # Formatted only for a finding: most reads have none.
                since = f"the read of {previous.value} {unit} at {_fmt_ts(previous.timestamp)}"
                findings.append(Finding(Flag.SPIKE, f"{spike} since {since}"))
            if delta == 0 and settings.zero_consumption_after is not None:
                unchanged_since = register.unchanged_since(index)
                if ts - unchanged_since >= settings.zero_consumption_after:
                    findings.append(
                        Finding(
                            Flag.ZERO_CONSUMPTION,
                            f"register unchanged at {value} {unit} since "
                            f"{_fmt_ts(unchanged_since)} ({ts - unchanged_since})",
                        )
                    )
        gap = _gap_finding(previous.timestamp, ts, register, profile.interval, tolerance)
        if gap:
            findings.append(Finding(Flag.GAP, f"{gap} after {_fmt_ts(previous.timestamp)}"))

    if following is not None:
        elapsed = following.timestamp - ts
        delta = following.value - value
        later = f"the later read of {following.value} {unit} at {_fmt_ts(following.timestamp)}"
        if delta < 0:
            findings.append(Finding(Flag.NEGATIVE_CONSUMPTION, f"{value} {unit} is above {later}"))
        else:
            spike = _spike(quantity, delta, elapsed, judging, value, following.value)
            if spike:
                findings.append(Finding(Flag.SPIKE, f"{spike} until {later}"))
        gap = _gap_finding(ts, following.timestamp, register, profile.interval, tolerance)
        if gap:
            findings.append(Finding(Flag.GAP, f"{gap} before {_fmt_ts(following.timestamp)}"))
    return findings


def _backwards(
    quantity: Quantity,
    previous: StoredRead,
    ts: datetime,
    value: Decimal,
    judging: _Judging,
) -> Finding:
    profile = judging.profile
    unit = quantity.info.unit
    fell = (
        f"register fell from {previous.value} {unit} at {_fmt_ts(previous.timestamp)} "
        f"to {value} {unit}"
    )
    capacity = profile.register_capacity_kwh
    if capacity is not None:
        wrapped = capacity - previous.value + value
        elapsed = ts - previous.timestamp
        if wrapped > 0 and not _exceeds_rating(wrapped, elapsed, judging, quantity, value):
            return Finding(
                Flag.ROLLOVER,
                f"{fell}: a wrap at capacity {capacity} {unit} would mean {wrapped} {unit}",
            )
    return Finding(Flag.NEGATIVE_CONSUMPTION, f"{fell}: meter exchange, register reset or tamper?")


def _spike(
    quantity: Quantity,
    delta: Decimal,
    elapsed: timedelta,
    judging: _Judging,
    *values: Decimal,
) -> str:
    if not _exceeds_rating(delta, elapsed, judging, quantity, *values):
        return ""
    profile, settings = judging.profile, judging.settings
    decimals = resolution_decimals(quantity, *values)
    limit = max_energy_kwh(profile, elapsed) * Fraction(settings.spike_margin)
    limit += Fraction(1, 10**decimals)
    unit = quantity.info.unit
    return (
        f"advanced {delta} {unit} in {elapsed}; at most {_show(limit, decimals)} {unit} is "
        f"possible at {profile.max_power_w} W x {settings.spike_margin}"
    )


def _exceeds_rating(
    energy_kwh: Decimal,
    elapsed: timedelta,
    judging: _Judging,
    quantity: Quantity,
    *values: Decimal,
) -> bool:
    """Whether ``energy_kwh`` is more than the meter can register in ``elapsed``.

    The limit is max power x elapsed x spike margin plus one resolution step of slack (a
    register that truncates can show a step early). Compared exactly in integers, cross-
    multiplied, because this runs for every read and Fraction arithmetic is slow.
    """
    if energy_kwh <= 0:
        return False
    en, ed = energy_kwh.as_integer_ratio()
    pn, pd = judging.power_ratio()
    mn, md = judging.margin_ratio()
    scale = 10 ** resolution_decimals(quantity, *values)
    microseconds = elapsed // _MICROSECOND
    # en/ed > pn*us*mn / (pd*md*W) + 1/scale, with W the microsecond-watts in a kWh.
    w = _MICROSECONDS_PER_HOUR * 1000
    return en * pd * md * w * scale > (pn * microseconds * mn * scale + pd * md * w) * ed


def _show(amount: Fraction, decimals: int) -> Decimal:
    """An exact fraction rounded down to ``decimals`` places, for reasons (never arithmetic)."""
    return Decimal(math.floor(amount * 10**decimals)).scaleb(-decimals)


def _gap_finding(
    before: datetime,
    after: datetime,
    register: _Register,
    interval: timedelta,
    tolerance: timedelta,
) -> str:
    span = missing_boundaries(before, after, interval, tolerance)
    if span is None:
        return ""
    first, last = span
    # A boundary held by a flagged read is not missing: that read is the point there.
    held = {
        b
        for r in register.between(before, after)
        if r.quality is Quality.FLAGGED
        for b in _covered_boundaries(r.timestamp, interval, tolerance)
        if first <= b <= last
    }
    missing = count_boundaries(first, last, interval) - len(held)
    if missing <= 0:
        return ""
    return f"{missing} interval boundar{'y' if missing == 1 else 'ies'} missing"


def _covered_boundaries(ts: datetime, interval: timedelta, tolerance: timedelta) -> list[datetime]:
    """The boundaries within ``tolerance`` of a read at ``ts`` (at most one)."""
    return list(boundaries(ts - tolerance, ts + tolerance, interval))


__all__ = [
    "DEFAULT_SETTINGS",
    "MAX_ABS_VALUE",
    "MAX_DECIMALS",
    "Category",
    "Finding",
    "Flag",
    "MeterProfile",
    "Quality",
    "RegisterRead",
    "Status",
    "StoredRead",
    "VeeSettings",
    "Verdict",
    "boundaries",
    "ceil_boundary",
    "check_interval",
    "count_boundaries",
    "decimals_of",
    "floor_boundary",
    "max_energy_kwh",
    "missing_boundaries",
    "resolution_decimals",
    "validate_read",
    "validate_reads",
    "worst_quality",
]
