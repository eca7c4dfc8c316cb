"""The simulated prepaid meter: energy, relay, credit, power limit, tamper and events.

Sans-IO and deterministic, in the manner of h11: the model never reads a clock or a
random source. Every method that depends on time takes the simulated time ``now``
(timezone-aware), and all randomness is a hash of the meter's seed and the time bucket,
so the same configuration driven with the same times gives the same registers, whether
it is advanced once a day or once a second.

Units and rounding, in one place:

- Energy and credit are integers of deciwatt-microseconds inside (exact), shown as
  ``Decimal`` kWh rounded *down* (a register never shows energy not yet consumed, and
  never shows credit the customer does not have).
- Demand is constant within each load-profile bucket (60 s by default).
- An open relay or a supply outage means zero consumption; in token mode the credit
  register is decremented by exactly the energy consumed and never goes below zero:
  consumption stops at the microsecond the credit reaches zero, and the relay opens.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import Literal

from meter_sim.clock import require_aware
from meter_sim.faults import NO_FAULTS, FaultConfig
from meter_sim.load import LoadProfile, epoch_seconds, mix64
from protocols.mqtt import EventKind, MeterEvent, check_meter_id
from protocols.quantities import Quantity

_UNITS_PER_KWH = 36_000_000_000_000  # deciwatt-microseconds in one kWh
_UNITS_PER_MICRO_KWH = _UNITS_PER_KWH // 1_000_000
_UNITS_PER_MILLI_KWH = _UNITS_PER_KWH // 1_000
_ONE_US = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_EVENTS_KEPT = 1000
_MAX_REGISTER_KWH = Decimal("99999999.999")  # an 8+3 digit register, like a meter display
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(2099, 12, 31, tzinfo=UTC)
_DIGITS_20 = re.compile(r"^[0-9]{20}$")


class MeterError(ValueError):
    """Base class of the model's errors; the meter's state is unchanged when one is raised."""


class ConfigError(MeterError):
    """A :class:`MeterConfig` value is out of range."""


class CommandRefused(MeterError):
    """The meter refuses a valid command in its current state (e.g. connect with no credit)."""


class InvalidSetting(MeterError):
    """A command parameter is out of range (e.g. a negative power limit)."""


class PrepaidMode(enum.StrEnum):
    TOKEN = "token"  # STS: credit lives in the meter
    CENTRAL = "central"  # smart prepaid: credit lives in the head-end, relay obeys commands


class RelayReason(enum.StrEnum):
    """Why the relay last changed state."""

    INITIAL = "initial"
    REMOTE = "remote"
    CREDIT_EXHAUSTED = "credit_exhausted"
    CREDIT_RESTORED = "credit_restored"
    POWER_LIMIT = "power_limit_exceeded"
    AUTO_RECONNECT = "auto_reconnect"
    TAMPER = "tamper"
    TAMPER_CLEARED = "tamper_cleared"


class TamperKind(enum.StrEnum):
    COVER_OPEN = "cover_open"
    MAGNETIC = "magnetic"


class TokenStatus(enum.StrEnum):
    """What the meter shows after a token is typed, as real STS meters report it."""

    ACCEPT = "accept"
    KEY_CHANGE_1ST = "1st_kct"  # first section of a key change buffered, waiting for the next
    USED = "used"
    OLD = "old"
    KEY_EXPIRED = "key_expired"
    ERROR = "error"  # format, range, function, overflow, key type errors
    REJECT = "reject"  # CRC mismatch: wrong key, wrong meter or a typo
    NOT_SUPPORTED = "not_supported"  # no decoder (central-mode meter or no STS support)


@dataclass(frozen=True, slots=True)
class TokenResult:
    """The outcome of one token entry. ``reason`` says why in words a technician can act on."""

    status: TokenStatus
    reason: str = ""
    token_class: int | None = None
    token_subclass: int | None = None
    tid: int | None = None
    credit_added_kwh: Decimal | None = None

    @property
    def accepted(self) -> bool:
        return self.status in (TokenStatus.ACCEPT, TokenStatus.KEY_CHANGE_1ST)


@dataclass(frozen=True, slots=True)
class DecoderSettings:
    """The STS decoder configuration a vending system needs to issue tokens for the meter.

    ``supply_group_code`` (6 digits), ``tariff_index`` (2 digits), ``key_revision_number``
    (1..9), ``key_type`` (0 DITK, 1 DDTK, 2 DUTK, 3 DCTK), ``key_expiry_number`` (255 =
    never), ``base_date_year`` (1993, 2014 or 2035), the encryption algorithm and decoder
    key generation algorithm codes, and ``tid_memory_size`` (how many recent token ids
    the meter remembers). ``decoder_key_hex`` is the meter's decoder key if it was loaded
    directly; otherwise it is derived from the test vending key when STS support is used.
    """

    supply_group_code: str = "123456"
    tariff_index: str = "01"
    key_revision_number: int = 1
    key_type: int = 2
    key_expiry_number: int = 255
    base_date_year: int = 2014
    encryption_algorithm: str = "EA07"
    key_generation_algorithm: str = "DKGA02"
    decoder_key_hex: str | None = None
    tid_memory_size: int = 20

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9]{6}", self.supply_group_code):
            raise ConfigError(f"supply_group_code must be 6 digits: {self.supply_group_code!r}")
        if not re.fullmatch(r"[0-9]{2}", self.tariff_index):
            raise ConfigError(f"tariff_index must be 2 digits: {self.tariff_index!r}")
        if not 1 <= self.key_revision_number <= 9:
            raise ConfigError(f"key_revision_number must be 1..9: {self.key_revision_number}")
        if not 0 <= self.key_type <= 3:
            raise ConfigError(f"key_type must be 0..3: {self.key_type}")
        if not 0 <= self.key_expiry_number <= 255:
            raise ConfigError(f"key_expiry_number must be 0..255: {self.key_expiry_number}")
        if self.base_date_year not in (1993, 2014, 2035):
            raise ConfigError(f"base_date_year must be 1993, 2014 or 2035: {self.base_date_year}")
        if self.encryption_algorithm not in ("EA07", "EA09", "EA11"):
            raise ConfigError(f"unknown encryption algorithm {self.encryption_algorithm!r}")
        if self.key_generation_algorithm not in ("DKGA02", "DKGA04"):
            raise ConfigError(f"unknown key generation algorithm {self.key_generation_algorithm!r}")
        if self.decoder_key_hex is not None and not re.fullmatch(
            r"[0-9a-fA-F]{16}|[0-9a-fA-F]{32}", self.decoder_key_hex
        ):
            raise ConfigError("decoder_key_hex must be 16 or 32 hex digits")
        if not 1 <= self.tid_memory_size <= 1000:
            raise ConfigError(f"tid_memory_size must be 1..1000: {self.tid_memory_size}")


@dataclass(frozen=True, slots=True)
class MeterConfig:
    """Everything that makes one simulated meter what it is. Immutable.

    - ``serial``: the meter id on the wire (MQTT topic level, Modbus serial number).
    - ``meter_number``: the 18-digit STS meter PAN (IIN 600727 + 11-digit DRN + Luhn
      check digit); :attr:`drn` is the 11-digit number printed on the meter.
    - ``phases``: 1 or 3. ``prepaid_mode``: token (STS credit in the meter) or central.
    - ``rated_max_current_a``: the meter's Imax per phase; demand is capped to it.
    - ``initial_energy_kwh``, ``initial_credit_kwh`` (token mode), ``low_credit_kwh``
      (the low-credit warning threshold).
    - ``power_limit_w``: initial maximum power limit (None = no limit). The relay opens
      when demand stays above it for ``power_limit_trip_s`` simulated seconds and closes
      again ``power_limit_reconnect_s`` later (None = only a connect command closes it).
    - ``open_relay_on_tamper``: whether a tamper event opens the relay.
    """

    serial: str
    meter_number: str
    phases: Literal[1, 3] = 1
    prepaid_mode: PrepaidMode = PrepaidMode.TOKEN
    rated_max_current_a: int = 60
    nominal_voltage_v: int = 230
    load: LoadProfile = field(default_factory=LoadProfile)
    seed: int = 0
    initial_energy_kwh: Decimal = Decimal(0)
    initial_credit_kwh: Decimal = Decimal(0)
    low_credit_kwh: Decimal = Decimal(5)
    power_limit_w: int | None = None
    power_limit_trip_s: int = 60
    power_limit_reconnect_s: int | None = 300
    open_relay_on_tamper: bool = False
    decoder: DecoderSettings = field(default_factory=DecoderSettings)
    faults: FaultConfig = NO_FAULTS

    def __post_init__(self) -> None:
        try:
            check_meter_id(self.serial)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not re.fullmatch(r"[0-9]{18}", self.meter_number):
            raise ConfigError(f"meter_number must be an 18-digit STS PAN: {self.meter_number!r}")
        if self.phases not in (1, 3):
            raise ConfigError(f"phases must be 1 or 3: {self.phases!r}")
        if not isinstance(self.prepaid_mode, PrepaidMode):
            raise ConfigError(f"prepaid_mode must be a PrepaidMode: {self.prepaid_mode!r}")
        if not 1 <= self.rated_max_current_a <= 1000:
            raise ConfigError(f"rated_max_current_a must be 1..1000: {self.rated_max_current_a}")
        if not 50 <= self.nominal_voltage_v <= 500:
            raise ConfigError(f"nominal_voltage_v must be 50..500: {self.nominal_voltage_v}")
        for name in ("initial_energy_kwh", "initial_credit_kwh", "low_credit_kwh"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite():
                raise ConfigError(f"{name} must be a finite Decimal: {value!r}")
            if not 0 <= value <= _MAX_REGISTER_KWH:
                raise ConfigError(f"{name} must be within 0..{_MAX_REGISTER_KWH}: {value}")
        _check_power_limit(self.power_limit_w, ConfigError)
        if not 1 <= self.power_limit_trip_s <= 86_400:
            raise ConfigError(f"power_limit_trip_s must be 1..86400: {self.power_limit_trip_s}")
        if self.power_limit_reconnect_s is not None and not (
            1 <= self.power_limit_reconnect_s <= 86_400
        ):
            raise ConfigError("power_limit_reconnect_s must be None or 1..86400")

    @property
    def drn(self) -> str:
        """The 11-digit decoder reference number (the meter number printed on the meter)."""
        return self.meter_number[6:17]


def _check_power_limit(watts: int | None, error: type[MeterError]) -> None:
    if watts is None:
        return
    if isinstance(watts, bool) or not isinstance(watts, int):
        raise error(f"power limit must be an integer number of watts: {watts!r}")
    if not 1 <= watts <= 1_000_000:
        raise error(f"power limit must be 1..1000000 W: {watts}")


@dataclass(frozen=True, slots=True)
class MeterEventRecord:
    """One entry of the meter's event log. ``ts`` is the meter's own clock."""

    seq: int
    ts: datetime
    kind: EventKind
    detail: Mapping[str, str | int | bool] = field(default_factory=dict)

    def to_payload(self) -> MeterEvent:
        return MeterEvent(seq=self.seq, ts=self.ts, kind=self.kind, detail=dict(self.detail))


@dataclass(frozen=True, slots=True)
class PhaseValues:
    """Instantaneous values of one phase."""

    voltage_v: Decimal
    current_a: Decimal
    active_power_w: Decimal
    power_factor: Decimal


def _kwh_to_units(kwh: Decimal) -> int:
    return int((kwh * _UNITS_PER_KWH).to_integral_value(ROUND_DOWN))


def _units_to_kwh(units: int) -> Decimal:
    """Exact kWh at 1 Wh/1000 resolution, rounded down."""
    return Decimal(units // _UNITS_PER_MICRO_KWH).scaleb(-6)


def _us(delta: timedelta) -> int:
    return delta // _ONE_US


class MeterModel:
    """One prepaid meter. Drive it with :meth:`advance` and read its registers.

    ``now`` everywhere is the *true* simulated time (from the simulation clock); the
    meter's own clock (:attr:`meter_time`, used to stamp events) may differ from it by a
    drift and by whatever :meth:`set_clock` set.
    """

    def __init__(self, config: MeterConfig, now: datetime) -> None:
        """Raise :class:`ConfigError` if ``now`` is naive or outside 2000..2099."""
        now = _check_time(now, ConfigError)
        self.config = config
        self._now = now
        self._energy_units = _kwh_to_units(config.initial_energy_kwh)
        token_mode = config.prepaid_mode is PrepaidMode.TOKEN
        self._credit_units: int | None = (
            _kwh_to_units(config.initial_credit_kwh) if token_mode else None
        )
        self._low_credit_units = _kwh_to_units(config.low_credit_kwh)
        self._low_credit_armed = True
        self._relay_closed = not token_mode or self._credit_units != 0
        self._relay_reason = RelayReason.INITIAL
        self._power_limit_w = config.power_limit_w
        self._over_limit_since: datetime | None = None
        self._auto_reconnect_at: datetime | None = None
        self._supply_on = True
        self._tamper: set[TamperKind] = set()
        self._tamper_bucket = config.load.bucket_index(now)
        # Meter clock = true time + offset + drift accumulated since drift_origin.
        self._clock_offset = timedelta(0)
        self._drift_origin = now
        self._next_seq = 1
        self.events: list[MeterEventRecord] = []
        self._outbox: list[MeterEventRecord] = []
        self.token_results: list[TokenResult] = []
        if self._credit_units == 0:
            self._relay_reason = RelayReason.CREDIT_EXHAUSTED
        self._emit(EventKind.POWER_UP, {})

    # --- registers -------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        """The simulated time the model has been advanced to."""
        return self._now

    @property
    def meter_time(self) -> datetime:
        """The meter's own clock (with drift and any :meth:`set_clock` offset)."""
        drift_us = _us(self._now - self._drift_origin) * self.config.faults.clock_drift_ppm
        return self._now + self._clock_offset + timedelta(microseconds=drift_us // 1_000_000)

    @property
    def energy_import_kwh(self) -> Decimal:
        """Import active energy register, kWh, 6 decimals, rounded down. Never decreases."""
        return _units_to_kwh(self._energy_units)

    @property
    def credit_kwh(self) -> Decimal | None:
        """Credit register (token mode), kWh rounded down, never negative; None in central mode."""
        return None if self._credit_units is None else _units_to_kwh(self._credit_units)

    @property
    def relay_closed(self) -> bool:
        return self._relay_closed

    @property
    def relay_reason(self) -> RelayReason:
        return self._relay_reason

    @property
    def power_limit_w(self) -> int | None:
        return self._power_limit_w

    @property
    def supply_on(self) -> bool:
        return self._supply_on

    @property
    def tamper(self) -> frozenset[TamperKind]:
        """Active tamper conditions (cleared by :meth:`clear_tamper`)."""
        return frozenset(self._tamper)

    @property
    def event_count(self) -> int:
        """Number of events logged since power-up (the last event's sequence number)."""
        return self._next_seq - 1

    @property
    def active_power_w(self) -> Decimal:
        return Decimal(self._consuming_dw()).scaleb(-1)

    def _demand_dw(self, moment: datetime) -> int:
        profile = self.config.load
        demand = profile.demand_dw(profile.bucket_index(moment), self.config.seed)
        cap = self.config.rated_max_current_a * self.config.nominal_voltage_v * 10
        return min(demand, cap * self.config.phases)

    def _consuming_dw(self) -> int:
        if not (self._relay_closed and self._supply_on):
            return 0
        return self._demand_dw(self._now)

    def phase_values(self) -> tuple[PhaseValues, ...]:
        """Per-phase voltage (V), current (A), active power (W) and power factor, now."""
        cfg = self.config
        bucket = cfg.load.bucket_index(self._now)
        total_dw = self._consuming_dw()
        shares = _phase_shares(cfg.seed, cfg.phases)
        result = []
        given_dw = 0
        for phase, share in enumerate(shares):
            if self._supply_on:
                noise = mix64(cfg.seed, 3, bucket, phase) % 141  # +-7.0 V around nominal
                voltage_dv = cfg.nominal_voltage_v * 10 + noise - 70
            else:
                voltage_dv = 0
            # The last phase takes the rounding remainder, so phases add up to the total.
            power_dw = total_dw * share // 1000 if phase < len(shares) - 1 else total_dw - given_dw
            given_dw += power_dw
            pf_permille = 920 + mix64(cfg.seed, 5, bucket, phase) % 71 if power_dw else 1000
            voltage = Decimal(voltage_dv).scaleb(-1)
            power = Decimal(power_dw).scaleb(-1)
            pf = Decimal(pf_permille).scaleb(-3)
            current = (
                (power / (voltage * pf)).quantize(Decimal("0.001"), ROUND_HALF_EVEN)
                if power_dw and voltage_dv
                else Decimal("0.000")
            )
            result.append(PhaseValues(voltage, current, power, pf))
        return tuple(result)

    def frequency_hz(self) -> Decimal:
        if not self._supply_on:
            return Decimal("0.00")
        bucket = self.config.load.bucket_index(self._now)
        return Decimal(5000 + mix64(self.config.seed, 4, bucket) % 21 - 10).scaleb(-2)

    def measurements(self) -> dict[Quantity, Decimal]:
        """Register values now, rounded to each quantity's resolution (energy/credit down).

        For three-phase meters voltage is the average line-to-neutral voltage, current the
        sum of the line currents and the power factor is total P / total S.
        """
        phases = self.phase_values()
        power = sum((p.active_power_w for p in phases), Decimal(0))
        current = sum((p.current_a for p in phases), Decimal(0))
        voltage = sum((p.voltage_v for p in phases), Decimal(0)) / len(phases)
        apparent = sum((p.voltage_v * p.current_a for p in phases), Decimal(0))
        pf = (power / apparent) if apparent else Decimal(1)
        values = {
            Quantity.ENERGY_IMPORT_KWH: Decimal(self._energy_units // _UNITS_PER_MILLI_KWH).scaleb(
                -3
            ),
            Quantity.ENERGY_EXPORT_KWH: Decimal("0.000"),
            Quantity.VOLTAGE_V: voltage.quantize(Decimal("0.1"), ROUND_HALF_EVEN),
            Quantity.CURRENT_A: current.quantize(Decimal("0.001"), ROUND_HALF_EVEN),
            Quantity.ACTIVE_POWER_W: power.quantize(Decimal("0.1"), ROUND_HALF_EVEN),
            Quantity.FREQUENCY_HZ: self.frequency_hz(),
            Quantity.POWER_FACTOR: min(pf, Decimal(1)).quantize(Decimal("0.001"), ROUND_HALF_EVEN),
        }
        if self._credit_units is not None:
            values[Quantity.CREDIT_KWH] = Decimal(
                self._credit_units // _UNITS_PER_MILLI_KWH
            ).scaleb(-3)
        return values

    # --- time ------------------------------------------------------------------------

    def advance(self, now: datetime) -> list[MeterEventRecord]:
        """Integrate consumption up to ``now`` and return the events that happened meanwhile.

        Raise :class:`MeterError` if ``now`` is naive or earlier than :attr:`now`.
        """
        now = _check_time(now, MeterError)
        if now < self._now:
            raise MeterError(f"time must not go backwards: {now} < {self._now}")
        first_new = self._next_seq
        profile = self.config.load
        while self._now < now:
            t = self._now
            bucket = profile.bucket_index(t)
            if bucket != self._tamper_bucket:
                self._tamper_bucket = bucket
                self._maybe_tamper(bucket)
            end = min(_EPOCH + timedelta(seconds=(bucket + 1) * profile.bucket_s), now)
            if self._auto_reconnect_at is not None and self._auto_reconnect_at <= end:
                self._now = max(t, self._auto_reconnect_at)
                self._auto_reconnect_at = None
                self._change_relay(True, RelayReason.AUTO_RECONNECT)
                continue
            load = self._consuming_dw()
            if load == 0:
                self._over_limit_since = None
                self._now = end
                continue
            trip_at: datetime | None = None
            if self._power_limit_w is not None and load > self._power_limit_w * 10:
                if self._over_limit_since is None:
                    self._over_limit_since = t
                trip_at = max(
                    t, self._over_limit_since + timedelta(seconds=self.config.power_limit_trip_s)
                )
                if trip_at > end:
                    trip_at = None
                else:
                    end = trip_at
            else:
                self._over_limit_since = None
            used = load * _us(end - t)
            exhausted = False
            if self._credit_units is not None and used >= self._credit_units:
                needed_us = -(-self._credit_units // load)  # ceil: stop once credit is gone
                credit_end = t + timedelta(microseconds=needed_us)
                if credit_end <= end:
                    end, used, exhausted, trip_at = credit_end, self._credit_units, True, None
            self._energy_units += used
            self._now = end
            if self._credit_units is not None:
                self._credit_units = max(0, self._credit_units - used)
                self._check_low_credit()
            if exhausted:
                self._emit(EventKind.CREDIT_EXHAUSTED, {})
                self._change_relay(False, RelayReason.CREDIT_EXHAUSTED)
            elif trip_at is not None:
                self._trip_power_limit(load)
        return self._events_since(first_new)

    def _maybe_tamper(self, bucket: int) -> None:
        rate = self.config.faults.tamper_per_day
        if rate <= 0:
            return
        probability_ppb = int(rate * self.config.load.bucket_s / 86_400 * 1e9)
        draw = mix64(self.config.seed, 6, bucket)
        if draw % 1_000_000_000 < probability_ppb:
            kind = TamperKind.COVER_OPEN if (draw >> 40) & 1 else TamperKind.MAGNETIC
            self._raise_tamper(kind)

    def _trip_power_limit(self, load_dw: int) -> None:
        self._over_limit_since = None
        self._emit(
            EventKind.POWER_LIMIT_EXCEEDED,
            {"limit_w": self._power_limit_w or 0, "power_w": load_dw // 10},
        )
        self._change_relay(False, RelayReason.POWER_LIMIT)
        if self.config.power_limit_reconnect_s is not None:
            self._auto_reconnect_at = self._now + timedelta(
                seconds=self.config.power_limit_reconnect_s
            )

    def _check_low_credit(self) -> None:
        assert self._credit_units is not None
        if self._credit_units < self._low_credit_units:
            if self._low_credit_armed:
                self._low_credit_armed = False
                self._emit(EventKind.LOW_CREDIT, {"credit_kwh": str(self.credit_kwh)})
        else:
            self._low_credit_armed = True

    def set_clock(self, meter_now: datetime) -> None:
        """Set the meter's own clock to ``meter_now`` (drift restarts from zero).

        Raise :class:`InvalidSetting` if it is naive or outside 2000..2099.
        """
        meter_now = _check_time(meter_now, InvalidSetting)
        self._clock_offset = meter_now - self._now
        self._drift_origin = self._now

    # --- commands --------------------------------------------------------------------

    def set_relay(
        self, closed: bool, *, reason: RelayReason = RelayReason.REMOTE
    ) -> list[MeterEventRecord]:
        """Open or close the relay; return the events (none if it already was so).

        Raise :class:`CommandRefused` when closing a token-mode meter with no credit or a
        meter locked out by tamper.
        """
        if not isinstance(closed, bool):
            raise InvalidSetting(f"closed must be a bool: {closed!r}")
        if closed and not self._relay_closed:
            if self._credit_units == 0:
                raise CommandRefused("no credit: the relay stays open until a credit token")
            if self._tamper and self.config.open_relay_on_tamper:
                raise CommandRefused("tamper lockout: clear the tamper condition first")
        first_new = self._next_seq
        if closed != self._relay_closed:
            self._change_relay(closed, reason)
        if closed:
            self._auto_reconnect_at = None
        return self._events_since(first_new)

    def set_power_limit(self, watts: int | None) -> None:
        """Set the maximum power limit in watts (None removes it).

        Raise :class:`InvalidSetting` if ``watts`` is not an integer within 1..1,000,000.
        """
        _check_power_limit(watts, InvalidSetting)
        self._power_limit_w = watts
        self._over_limit_since = None

    def enter_token(self, digits: str, now: datetime) -> TokenResult:
        """Type a 20-digit token at simulated time ``now`` and return what the meter shows.

        Invalid input gives a result with status ERROR (never an exception), as a keypad
        would; the meter's credit and keys change only on ACCEPT.
        """
        self.advance(now)
        if not isinstance(digits, str) or not _DIGITS_20.match(digits):
            result = TokenResult(TokenStatus.ERROR, "a token is exactly 20 decimal digits")
        elif self._credit_units is None:
            result = TokenResult(
                TokenStatus.NOT_SUPPORTED, "central-mode meter: credit is kept by the head-end"
            )
        else:
            result = TokenResult(TokenStatus.NOT_SUPPORTED, "STS decoder not available")
        self._record_token(result)
        return result

    def _record_token(self, result: TokenResult) -> None:
        self.token_results.append(result)
        del self.token_results[:-20]
        detail: dict[str, str | int | bool] = {"status": result.status.value}
        if result.tid is not None:
            detail["tid"] = result.tid
        if result.credit_added_kwh is not None:
            detail["credit_kwh"] = str(result.credit_added_kwh)
        if result.reason:
            detail["reason"] = result.reason
        kind = EventKind.TOKEN_ACCEPTED if result.accepted else EventKind.TOKEN_REJECTED
        self._emit(kind, detail)

    def add_credit(self, kwh: Decimal) -> None:
        """Add ``kwh`` to the credit register (used when a credit token is accepted).

        Closes the relay if it was opened because credit ran out. Raise
        :class:`CommandRefused` in central mode or if the register would overflow and
        :class:`InvalidSetting` if ``kwh`` is not a positive finite Decimal.
        """
        if not isinstance(kwh, Decimal) or not kwh.is_finite() or kwh <= 0:
            raise InvalidSetting(f"credit must be a positive Decimal kWh: {kwh!r}")
        if self._credit_units is None:
            raise CommandRefused("central-mode meter has no credit register")
        new_units = self._credit_units + _kwh_to_units(kwh)
        if new_units > _kwh_to_units(_MAX_REGISTER_KWH):
            raise CommandRefused("credit register would overflow")
        self._credit_units = new_units
        self._check_low_credit()
        if not self._relay_closed and self._relay_reason is RelayReason.CREDIT_EXHAUSTED:
            self._change_relay(True, RelayReason.CREDIT_RESTORED)

    def clear_credit(self) -> None:
        """Set the credit register to zero (STS ClearCredit); the relay opens."""
        if self._credit_units is None:
            raise CommandRefused("central-mode meter has no credit register")
        self._credit_units = 0
        self._check_low_credit()
        if self._relay_closed:
            self._emit(EventKind.CREDIT_EXHAUSTED, {})
            self._change_relay(False, RelayReason.CREDIT_EXHAUSTED)

    def raise_tamper(self, kind: TamperKind, now: datetime) -> list[MeterEventRecord]:
        """Report a tamper condition at simulated time ``now``; return the new events."""
        self.advance(now)
        first_new = self._next_seq
        self._raise_tamper(TamperKind(kind))
        return self._events_since(first_new)

    def _raise_tamper(self, kind: TamperKind) -> None:
        self._tamper.add(kind)
        event = EventKind.COVER_OPEN if kind is TamperKind.COVER_OPEN else EventKind.MAGNETIC_TAMPER
        self._emit(event, {})
        if self.config.open_relay_on_tamper and self._relay_closed:
            self._change_relay(False, RelayReason.TAMPER)

    def clear_tamper(self) -> None:
        """Clear tamper conditions (STS ClearTamperCondition); a tamper-opened relay closes."""
        self._tamper.clear()
        if not self._relay_closed and self._relay_reason is RelayReason.TAMPER:
            self._change_relay(True, RelayReason.TAMPER_CLEARED)

    def power_down(self, now: datetime) -> list[MeterEventRecord]:
        """Supply outage from ``now``: no consumption, voltage zero, a POWER_DOWN event."""
        self.advance(now)
        first_new = self._next_seq
        if self._supply_on:
            self._supply_on = False
            self._emit(EventKind.POWER_DOWN, {})
        return self._events_since(first_new)

    def power_up(self, now: datetime) -> list[MeterEventRecord]:
        """Supply restored at ``now``: a POWER_UP event."""
        self.advance(now)
        first_new = self._next_seq
        if not self._supply_on:
            self._supply_on = True
            self._emit(EventKind.POWER_UP, {})
        return self._events_since(first_new)

    # --- events ----------------------------------------------------------------------

    def take_events(self) -> list[MeterEventRecord]:
        """Return the events logged since the last call (for a transport to publish)."""
        taken, self._outbox = self._outbox, []
        return taken

    def _events_since(self, seq: int) -> list[MeterEventRecord]:
        count = self._next_seq - seq
        return self._outbox[-count:] if count > 0 else []

    def _change_relay(self, closed: bool, reason: RelayReason) -> None:
        self._relay_closed = closed
        self._relay_reason = reason
        self._over_limit_since = None
        # Only the power-limit trip schedules its own reconnect; any other change cancels it.
        self._auto_reconnect_at = None
        self._emit(EventKind.RELAY_CHANGED, {"closed": closed, "reason": reason.value})

    def _emit(self, kind: EventKind, detail: dict[str, str | int | bool]) -> None:
        record = MeterEventRecord(self._next_seq, self.meter_time, kind, detail)
        self._next_seq += 1
        self.events.append(record)
        if len(self.events) > _MAX_EVENTS_KEPT:
            del self.events[: len(self.events) - _MAX_EVENTS_KEPT]
        self._outbox.append(record)
        if len(self._outbox) > _MAX_EVENTS_KEPT:
            del self._outbox[: len(self._outbox) - _MAX_EVENTS_KEPT]


def _phase_shares(seed: int, phases: int) -> tuple[int, ...]:
    """How a meter's load splits across its phases, per mille (sums to 1000)."""
    if phases == 1:
        return (1000,)
    a = 300 + mix64(seed, 7) % 100
    b = 300 + mix64(seed, 8) % 80
    return (a, b, 1000 - a - b)


def _check_time(value: datetime, error: type[MeterError]) -> datetime:
    if not isinstance(value, datetime):
        raise error(f"expected a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise error(f"time must be timezone-aware: {value.isoformat()}")
    value = require_aware(value)
    if not _EARLIEST <= value <= _LATEST:
        raise error(f"time outside 2000..2099: {value.isoformat()}")
    return value


__all__ = [
    "CommandRefused",
    "ConfigError",
    "DecoderSettings",
    "InvalidSetting",
    "LoadProfile",
    "MeterConfig",
    "MeterError",
    "MeterEventRecord",
    "MeterModel",
    "PhaseValues",
    "PrepaidMode",
    "RelayReason",
    "TamperKind",
    "TokenResult",
    "TokenStatus",
    "epoch_seconds",
]
