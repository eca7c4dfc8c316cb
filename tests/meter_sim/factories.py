"""Small builders for meter configurations in tests."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from meter_sim.fleet import sts_meter_pan
from meter_sim.load import LoadProfile
from meter_sim.model import MeterConfig, MeterModel, PrepaidMode

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)


def config(**changes: Any) -> MeterConfig:
    base = MeterConfig(
        serial="TEST-00000001",
        meter_number=sts_meter_pan(1),
        load=LoadProfile(base_load_w=200, peak_load_w=3000),
        seed=42,
        initial_energy_kwh=Decimal("100.000"),
        initial_credit_kwh=Decimal("10.000"),
    )
    return replace(base, **changes)


def token_meter(**changes: Any) -> MeterModel:
    return MeterModel(config(**changes), T0)


def central_meter(**changes: Any) -> MeterModel:
    return MeterModel(config(prepaid_mode=PrepaidMode.CENTRAL, **changes), T0)
