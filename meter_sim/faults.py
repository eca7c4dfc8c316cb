"""Fault injection: what can go wrong with a meter, configured per meter and seeded.

:class:`FaultConfig` is the one place every transport reads its faults from: the MQTT
transport uses the message faults (drop, latency, duplicates, out-of-order readings,
offline periods), the Modbus transport the request faults (drop, latency, exception
codes, corrupt RTU frames), and the meter model the device faults (clock drift, tamper).

:class:`FaultInjector` turns the configuration into decisions with its own seeded
random generator, so a run with the same seed fails the same way every time.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields


class FaultConfigError(ValueError):
    """A fault setting is out of range."""


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Per-meter fault settings. All rates are probabilities in [0, 1]; the default is no faults.

    - ``drop_rate``: fraction of outgoing messages (MQTT publishes, command replies,
      Modbus replies) silently not sent.
    - ``latency_s`` / ``latency_jitter_s``: real seconds added before each reply/publish,
      plus a uniform random extra of up to the jitter.
    - ``duplicate_rate``: fraction of MQTT publishes sent twice (QoS 1 redelivery as seen
      by a subscriber).
    - ``reorder_rate``: fraction of telemetry readings held back and sent after the next
      one (out-of-order readings).
    - ``offline_rate``: probability, checked at each telemetry interval, that the meter
      drops its connection (the broker publishes its last will) for ``offline_intervals``
      intervals before it reconnects.
    - ``clock_drift_ppm``: the meter's own clock runs fast (positive) or slow (negative)
      by this many parts per million of simulated time.
    - ``tamper_per_day``: mean number of tamper events (cover open / magnetic) per
      simulated day.
    - ``modbus_exception_rate`` / ``modbus_exception_code``: fraction of Modbus requests
      answered with this exception code (4 = server device failure, 6 = busy).
    - ``corrupt_frame_rate``: fraction of Modbus RTU replies sent with a bad CRC.
    """

    drop_rate: float = 0.0
    latency_s: float = 0.0
    latency_jitter_s: float = 0.0
    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0
    offline_rate: float = 0.0
    offline_intervals: int = 1
    clock_drift_ppm: int = 0
    tamper_per_day: float = 0.0
    modbus_exception_rate: float = 0.0
    modbus_exception_code: int = 4
    corrupt_frame_rate: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise FaultConfigError(f"{f.name} must be finite, got {value!r}")
        for name in (
            "drop_rate",
            "duplicate_rate",
            "reorder_rate",
            "offline_rate",
            "modbus_exception_rate",
            "corrupt_frame_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise FaultConfigError(f"{name} must be within [0, 1], got {value!r}")
        if self.latency_s < 0 or self.latency_jitter_s < 0:
            raise FaultConfigError("latency_s and latency_jitter_s must not be negative")
        if self.offline_intervals < 1:
            raise FaultConfigError(
                f"offline_intervals must be at least 1, got {self.offline_intervals}"
            )
        if not -100_000 <= self.clock_drift_ppm <= 100_000:
            raise FaultConfigError(
                f"clock_drift_ppm must be within +-100000, got {self.clock_drift_ppm}"
            )
        if self.tamper_per_day < 0:
            raise FaultConfigError(f"tamper_per_day must not be negative: {self.tamper_per_day}")
        if not 1 <= self.modbus_exception_code <= 255:
            raise FaultConfigError(
                f"modbus_exception_code must be within 1..255, got {self.modbus_exception_code}"
            )

    @property
    def any(self) -> bool:
        """True if at least one fault is switched on."""
        return self != FaultConfig()


NO_FAULTS = FaultConfig()


class FaultInjector:
    """Seeded decisions for one meter's transport faults.

    Each decision draws from the injector's own generator, so the sequence of faults
    depends only on the seed and on the order of the calls.
    """

    __slots__ = ("_config", "_rng")

    def __init__(self, config: FaultConfig, seed: int) -> None:
        self._config = config
        self._rng = random.Random(seed)

    @property
    def config(self) -> FaultConfig:
        return self._config

    def _chance(self, rate: float) -> bool:
        # Rate 0 draws nothing, so switching one fault on leaves the others' sequences alone.
        if rate <= 0.0:
            return False
        return self._rng.random() < rate

    def drop(self) -> bool:
        """Whether to silently lose this outgoing message."""
        return self._chance(self._config.drop_rate)

    def duplicate(self) -> bool:
        """Whether to send this publish twice."""
        return self._chance(self._config.duplicate_rate)

    def reorder(self) -> bool:
        """Whether to hold this reading back and send it after the next one."""
        return self._chance(self._config.reorder_rate)

    def go_offline(self) -> bool:
        """Whether the meter drops off the network now."""
        return self._chance(self._config.offline_rate)

    def modbus_exception(self) -> int | None:
        """The exception code to answer this Modbus request with, or None to answer normally."""
        if self._chance(self._config.modbus_exception_rate):
            return self._config.modbus_exception_code
        return None

    def corrupt_frame(self) -> bool:
        """Whether to send this RTU reply with a bad CRC."""
        return self._chance(self._config.corrupt_frame_rate)

    def latency(self) -> float:
        """Real seconds to wait before this reply or publish."""
        extra = 0.0
        if self._config.latency_jitter_s > 0:
            extra = self._rng.uniform(0.0, self._config.latency_jitter_s)
        return self._config.latency_s + extra
