"""A household's load over the day, as a pure function of time and a seed.

All arithmetic is in integers (deciwatts, per-mille factors) and every random draw is a
hash of (seed, time bucket), so the same meter draws the same power at the same
simulated minute however the caller slices time, on every platform.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

_MASK64 = (1 << 64) - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Residential daily shape, per mille of the peak above base load, at each local hour:
# a night trough, a morning peak around 07:00 and the evening peak around 18:00-19:00.
_HOURLY_SHAPE_PERMILLE = (
    120, 80, 60, 60, 80, 250, 600, 750, 500, 300, 250, 250,
    300, 280, 250, 280, 400, 700, 1000, 950, 800, 600, 400, 220,
)  # fmt: skip


class LoadProfileError(ValueError):
    """A load profile parameter is out of range."""


def mix64(seed: int, *parts: int) -> int:
    """A 64-bit hash of ``seed`` and ``parts`` (splitmix64 finaliser, chained)."""
    x = seed & _MASK64
    for part in parts:
        x = (x ^ (part & _MASK64)) & _MASK64
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 31
    return x


def epoch_seconds(moment: datetime) -> int:
    """Whole seconds since 1970-01-01 UTC (floor)."""
    delta = moment - _EPOCH
    return delta.days * 86_400 + delta.seconds


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """Parameters of a meter's demand.

    - ``base_load_w``: always-on load (fridge, standby), watts.
    - ``peak_load_w``: demand at the evening peak before noise, watts (>= base).
    - ``noise_permille``: each bucket's demand varies by up to +-this per mille.
    - ``bucket_s``: demand is constant within a bucket of this many seconds, aligned to
      the Unix epoch.
    - ``utc_offset_minutes``: the household's local time, for the daily shape.
    """

    base_load_w: int = 150
    peak_load_w: int = 2500
    noise_permille: int = 150
    bucket_s: int = 60
    utc_offset_minutes: int = 120

    def __post_init__(self) -> None:
        if not 0 <= self.base_load_w <= self.peak_load_w:
            raise LoadProfileError(
                f"need 0 <= base_load_w <= peak_load_w, got {self.base_load_w}, {self.peak_load_w}"
            )
        if self.peak_load_w > 1_000_000:
            raise LoadProfileError(f"peak_load_w above 1 MW: {self.peak_load_w}")
        if not 0 <= self.noise_permille <= 900:
            raise LoadProfileError(f"noise_permille must be within 0..900: {self.noise_permille}")
        if not 1 <= self.bucket_s <= 3600 or 3600 % self.bucket_s:
            raise LoadProfileError(f"bucket_s must divide 3600: {self.bucket_s}")
        if not -14 * 60 <= self.utc_offset_minutes <= 14 * 60:
            raise LoadProfileError(f"utc_offset_minutes out of range: {self.utc_offset_minutes}")

    def bucket_index(self, moment: datetime) -> int:
        """The index of the demand bucket containing ``moment``."""
        return epoch_seconds(moment) // self.bucket_s

    def demand_dw(self, bucket: int, seed: int) -> int:
        """Demand in deciwatts during bucket ``bucket`` for the meter seeded with ``seed``."""
        local_s = (bucket * self.bucket_s + self.utc_offset_minutes * 60) % 86_400
        hour, within = divmod(local_s, 3600)
        here = _HOURLY_SHAPE_PERMILLE[hour]
        after = _HOURLY_SHAPE_PERMILLE[(hour + 1) % 24]
        shape = here * 3600 + (after - here) * within  # per mille x 3600, linear in the hour
        span_dw = (self.peak_load_w - self.base_load_w) * 10
        demand = self.base_load_w * 10 + span_dw * shape // 3_600_000
        if self.noise_permille:
            draw = mix64(seed, 1, bucket) % (2 * self.noise_permille + 1)
            demand = demand * (1000 + draw - self.noise_permille) // 1000
        return max(0, demand)
