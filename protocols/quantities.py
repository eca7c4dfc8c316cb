"""The quantities a meter measures, named once for every transport.

Each quantity carries its OBIS code (IEC 62056-61), its unit and whether it is a
cumulative register (energy: only ever grows) or an instantaneous value. The Modbus
register map and the MQTT telemetry schema both refer to these names, so a reading
means the same thing whichever way it travelled.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.StrEnum):
    CUMULATIVE = "cumulative"
    INSTANTANEOUS = "instantaneous"


@dataclass(frozen=True, slots=True)
class QuantityInfo:
    obis: str
    unit: str
    kind: Kind
    # Decimal places kept when a value is stored (the meter-data resolution).
    decimals: int


class Quantity(enum.StrEnum):
    """Names used on the wire (MQTT payload keys) and in storage."""

    ENERGY_IMPORT_KWH = "energy_import_kwh"
    ENERGY_EXPORT_KWH = "energy_export_kwh"
    VOLTAGE_V = "voltage_v"
    CURRENT_A = "current_a"
    ACTIVE_POWER_W = "active_power_w"
    FREQUENCY_HZ = "frequency_hz"
    POWER_FACTOR = "power_factor"
    CREDIT_KWH = "credit_kwh"

    @property
    def info(self) -> QuantityInfo:
        return _INFO[self]


_INFO: dict[Quantity, QuantityInfo] = {
    Quantity.ENERGY_IMPORT_KWH: QuantityInfo("1-0:1.8.0", "kWh", Kind.CUMULATIVE, 3),
    Quantity.ENERGY_EXPORT_KWH: QuantityInfo("1-0:2.8.0", "kWh", Kind.CUMULATIVE, 3),
    Quantity.VOLTAGE_V: QuantityInfo("1-0:32.7.0", "V", Kind.INSTANTANEOUS, 1),
    Quantity.CURRENT_A: QuantityInfo("1-0:31.7.0", "A", Kind.INSTANTANEOUS, 3),
    Quantity.ACTIVE_POWER_W: QuantityInfo("1-0:1.7.0", "W", Kind.INSTANTANEOUS, 1),
    Quantity.FREQUENCY_HZ: QuantityInfo("1-0:14.7.0", "Hz", Kind.INSTANTANEOUS, 2),
    Quantity.POWER_FACTOR: QuantityInfo("1-0:13.7.0", "", Kind.INSTANTANEOUS, 3),
    Quantity.CREDIT_KWH: QuantityInfo("0-0:128.8.0", "kWh", Kind.INSTANTANEOUS, 3),
}
