"""Meter profiles: a register map, its codecs, how the relay is switched, and quirks.

Real prepaid meters differ in all four, so the head-end is written against a profile,
never against one meter type. Profiles are looked up by name (``get_profile``); the
names are what a meter registry stores and what ``gridvend sim fleet --profile`` takes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from protocols.modbus import registers as r
from protocols.modbus.registers import (
    Block,
    EventLog,
    Measurand,
    Point,
    Prepaid,
    Register,
    Setting,
    Span,
)

__all__ = [
    "MODBUS_MAX_REGISTERS",
    "PROFILES",
    "Profile",
    "ProfileError",
    "RelayActuator",
    "get_profile",
    "profile_for_phases",
]

# Largest FC03/FC04 read the Modbus application protocol allows.
MODBUS_MAX_REGISTERS = 125


class ProfileError(LookupError):
    """Unknown profile name, or a point the profile does not have."""


class RelayActuator(enum.StrEnum):
    """How the supply relay (contactor) is switched."""

    COIL = "coil"  # a coil written with FC05 (0xFF00 closes), read with FC01 (Accuenergy)
    HOLDING_FC16 = "holding_fc16"  # a holding register written with FC16 only (DDS238-2 ZN/SR)
    NONE = "none"  # no relay in the meter; an external contactor does the job


@dataclass(frozen=True, slots=True)
class Profile:
    """One kind of meter as seen over Modbus.

    ``max_registers_per_request`` is the largest read (and FC16 write) the meter answers;
    larger requests get exception 3 (ILLEGAL_VALUE). With ``fc06_supported=False`` the
    meter answers FC06 with exception 1 (ILLEGAL_FUNCTION).
    """

    name: str
    description: str
    phases: int
    registers: tuple[Register, ...]
    spans: tuple[Span, ...]
    relay_actuator: RelayActuator
    event_log: EventLog | None = None
    settings: tuple[Setting, ...] = ()
    max_registers_per_request: int = MODBUS_MAX_REGISTERS
    fc06_supported: bool = True
    _by_point: dict[Point, Register] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_point: dict[Point, Register] = {}
        for reg in self.registers:
            if reg.point in by_point:
                raise ValueError(f"{self.name}: {reg.point} mapped twice")
            if not any(span.covers(reg.block, reg.address, reg.end) for span in self.spans):
                raise ValueError(f"{self.name}: {reg.point} lies outside every span")
            by_point[reg.point] = reg
        object.__setattr__(self, "_by_point", by_point)

    def find(self, point: Point) -> Register | None:
        """The register holding ``point``, or None when this meter has no such point."""
        return self._by_point.get(point)

    def register(self, point: Point) -> Register:
        """The register holding ``point``.

        Raises:
            ProfileError: this profile has no such point.
        """
        reg = self._by_point.get(point)
        if reg is None:
            raise ProfileError(f"profile {self.name!r} has no {point}")
        return reg

    @property
    def measurands(self) -> tuple[Measurand, ...]:
        return tuple(reg.point for reg in self.registers if isinstance(reg.point, Measurand))

    @property
    def has_prepaid_block(self) -> bool:
        return Prepaid.TOKEN_ENTRY in self._by_point

    def answers(self, block: Block, start: int, end: int) -> bool:
        """True when a read of addresses ``start``..``end - 1`` of ``block`` gets no exception
        (address-wise; the request-size limit is separate)."""
        return any(span.covers(block, start, end) for span in self.spans)


def _eastron_prepaid(
    name: str, description: str, phases: int, inputs: tuple[Register, ...], input_span: Span
) -> Profile:
    return Profile(
        name=name,
        description=description,
        phases=phases,
        registers=(*inputs, *r.EASTRON_IDENTITY, *r.EASTRON_PREPAID, r.EASTRON_RELAY_COIL),
        spans=(
            input_span,
            r.EASTRON_SETTINGS_SPAN,
            r.EASTRON_SERIAL_SPAN,
            r.EASTRON_PREPAID_SPAN,
            Span(Block.COIL, 0x0000, 1),
        ),
        relay_actuator=RelayActuator.COIL,
        event_log=r.EASTRON_EVENT_LOG,
        settings=r.EASTRON_SETTINGS,
        max_registers_per_request=60,
        fc06_supported=False,
    )


EASTRON_SDM120 = Profile(
    name="eastron-sdm120",
    description="Eastron SDM120 single-phase meter, no relay (external contactor)",
    phases=1,
    registers=(*r.SDM120_INPUT, *r.EASTRON_IDENTITY),
    spans=(r.SDM120_INPUT_SPAN, r.EASTRON_SETTINGS_SPAN, r.EASTRON_SERIAL_SPAN),
    relay_actuator=RelayActuator.NONE,
    settings=r.EASTRON_SETTINGS,
    max_registers_per_request=60,
    fc06_supported=False,
)
EASTRON_SDM120_PREPAID = _eastron_prepaid(
    "eastron-sdm120-prepaid",
    "Eastron SDM120 input registers + gridvend prepaid block at holding 0x1000, relay coil 0",
    1,
    r.SDM120_INPUT,
    r.SDM120_INPUT_SPAN,
)
EASTRON_SDM630_PREPAID = _eastron_prepaid(
    "eastron-sdm630-prepaid",
    "Eastron SDM630 three-phase input registers + gridvend prepaid block, relay coil 0",
    3,
    r.SDM630_INPUT,
    r.SDM630_INPUT_SPAN,
)
DDS238_ZN = Profile(
    name="dds238-zn",
    description=(
        "Hiking DDS238-2 ZN/S-style single-phase meter: scaled integers in holding registers,"
        " relay at 0x001A written with FC16 only, gridvend prepaid block at holding 0x0100"
    ),
    phases=1,
    registers=(*r.DDS238_REGISTERS, *r.DDS238_PREPAID),
    spans=(r.DDS238_SPAN, r.DDS238_PREPAID_SPAN),
    relay_actuator=RelayActuator.HOLDING_FC16,
    event_log=r.DDS238_EVENT_LOG,
    fc06_supported=False,
)

PROFILES: dict[str, Profile] = {
    p.name: p for p in (EASTRON_SDM120, EASTRON_SDM120_PREPAID, EASTRON_SDM630_PREPAID, DDS238_ZN)
}


# The same meter family with the other number of phases.
_PHASE_SIBLINGS: dict[tuple[str, int], str] = {
    ("eastron-sdm120-prepaid", 3): "eastron-sdm630-prepaid",
    ("eastron-sdm630-prepaid", 1): "eastron-sdm120-prepaid",
}


def profile_for_phases(profile: Profile, phases: int) -> Profile:
    """``profile``'s sibling for a meter with ``phases`` phases, or ``profile`` itself when
    the family has no such sibling (a three-phase meter then shows its totals only)."""
    sibling = _PHASE_SIBLINGS.get((profile.name, phases))
    return PROFILES[sibling] if sibling else profile


def get_profile(name: str) -> Profile:
    """The profile called ``name``.

    Raises:
        ProfileError: no profile has that name.
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise ProfileError(
            f"unknown Modbus profile {name!r}; known: {', '.join(sorted(PROFILES))}"
        ) from None
