"""When a central-balance meter may be disconnected: pure rules, no I/O.

Regulators ask for the opposite of "as fast as possible": no disconnection in friendly
hours (evenings and nights), at weekends or on public holidays, none during a grace period
after the balance runs out or after a customer is converted to prepaid, and never for a
protected customer (life support, hospitals) without an operator. Reconnection after a
top-up is never held back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from vending import localtime


class PolicyError(ValueError):
    """A policy setting is impossible (e.g. a negative grace period)."""


@dataclass(frozen=True, slots=True)
class DisconnectPolicy:
    """``friendly_from``..``friendly_until`` (local wall clock, may wrap midnight) is the
    daily period without disconnections; equal times mean no daily friendly period."""

    timezone: str
    friendly_from: time = time(18, 0)
    friendly_until: time = time(8, 0)
    no_disconnect_on_weekends: bool = True
    holidays: frozenset[date] = frozenset()
    grace_after_exhaustion: timedelta = timedelta(hours=1)
    grace_after_conversion: timedelta = timedelta(days=30)
    reconnect_minimum_minor: int = 0

    def __post_init__(self) -> None:
        localtime.zone(self.timezone)
        if self.grace_after_exhaustion < timedelta(0) or self.grace_after_conversion < timedelta(0):
            raise PolicyError("grace periods must not be negative")
        if self.reconnect_minimum_minor < 0:
            raise PolicyError("the reconnect minimum must not be negative")

    @property
    def tz(self) -> ZoneInfo:
        return localtime.zone(self.timezone)


class Action(StrEnum):
    NONE = "none"
    DISCONNECT = "disconnect"
    DEFER = "defer"
    OPERATOR_LIST = "operator_list"
    RECONNECT = "reconnect"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str
    not_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class AccountSituation:
    """What the policy needs to know about one account at ``now``.

    ``balance_minor`` already includes emergency credit taken; ``exhausted_since`` is when
    the balance last reached zero or below (None while it is positive).
    """

    balance_minor: int
    exhausted_since: datetime | None
    converted_at: datetime
    protection: str | None
    supply_connected: bool


def protected_reason(policy: DisconnectPolicy, at: datetime) -> str | None:
    """Why ``at`` is inside a period without disconnections, or None."""
    wall = localtime.wall_clock(at, policy.tz)
    if wall.date() in policy.holidays:
        return f"public holiday {wall.date().isoformat()}"
    if policy.no_disconnect_on_weekends and wall.weekday() >= 5:
        return f"weekend ({wall.strftime('%A')})"
    start, end, now = policy.friendly_from, policy.friendly_until, wall.time()
    if start != end:
        inside = start <= now < end if start < end else now >= start or now < end
        if inside:
            return f"friendly hours {start:%H:%M}-{end:%H:%M}"
    return None


def next_disconnect_window(policy: DisconnectPolicy, at: datetime) -> datetime:
    """The first instant at or after ``at`` outside every protected period.

    Protected periods start and end on whole local minutes, so whole minutes are tried.
    Raises PolicyError if none is found within 62 days (a holiday list gone wrong).
    """
    if protected_reason(policy, at) is None:
        return at
    minute = at.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(60 * 24 * 62):
        if protected_reason(policy, minute) is None:
            return minute
        minute += timedelta(minutes=1)
    raise PolicyError("no time without protection in the next 62 days: check the holidays")


def decide(policy: DisconnectPolicy, situation: AccountSituation, now: datetime) -> Decision:
    """What to do with the supply now. Reconnection is decided before anything else."""
    positive = situation.balance_minor > 0
    if not situation.supply_connected:
        if situation.balance_minor > policy.reconnect_minimum_minor:
            return Decision(Action.RECONNECT, "balance restored above the reconnect minimum")
        return Decision(Action.NONE, "disconnected; balance not yet above the reconnect minimum")
    if positive or situation.exhausted_since is None:
        return Decision(Action.NONE, "balance available")
    if situation.protection:
        return Decision(
            Action.OPERATOR_LIST,
            f"balance exhausted but the customer is protected ({situation.protection}): "
            "an operator decides",
        )
    conversion_grace_end = situation.converted_at + policy.grace_after_conversion
    if now < conversion_grace_end:
        return Decision(
            Action.DEFER, "grace period after conversion to prepaid", conversion_grace_end
        )
    exhaustion_grace_end = situation.exhausted_since + policy.grace_after_exhaustion
    if now < exhaustion_grace_end:
        return Decision(
            Action.DEFER, "grace period after the balance ran out", exhaustion_grace_end
        )
    reason = protected_reason(policy, now)
    if reason is not None:
        return Decision(Action.DEFER, reason, next_disconnect_window(policy, now))
    return Decision(Action.DISCONNECT, "balance exhausted and grace period over")
