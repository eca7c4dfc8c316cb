"""Simulated prepaid meters: the meter model, its MQTT and Modbus faces, and fleets of them.

Imports only :mod:`protocols`: the simulator talks to the head-end over the wire, never
in-process, exactly like a real meter.
"""

from meter_sim.clock import SimClock
from meter_sim.faults import FaultConfig, FaultInjector
from meter_sim.fleet import FleetError, FleetStats, MqttFleet, describe_fleet, sts_meter_pan
from meter_sim.load import LoadProfile
from meter_sim.model import (
    CommandRefused,
    ConfigError,
    DecoderSettings,
    InvalidSetting,
    MeterConfig,
    MeterError,
    MeterEventRecord,
    MeterModel,
    PhaseValues,
    PrepaidMode,
    RelayReason,
    TamperKind,
    TokenResult,
    TokenStatus,
)

__all__ = [
    "CommandRefused",
    "ConfigError",
    "DecoderSettings",
    "FaultConfig",
    "FaultInjector",
    "FleetError",
    "FleetStats",
    "InvalidSetting",
    "LoadProfile",
    "MeterConfig",
    "MeterError",
    "MeterEventRecord",
    "MeterModel",
    "MqttFleet",
    "PhaseValues",
    "PrepaidMode",
    "RelayReason",
    "SimClock",
    "TamperKind",
    "TokenResult",
    "TokenStatus",
    "describe_fleet",
    "sts_meter_pan",
]
