"""The balance engine's settings from ``GRIDVEND_*``: the disconnection policy, alert
thresholds and emergency credit, checked once at startup so a bad value stops the start
with a sentence saying which setting and why, not a failing engine round later."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from gridvend.settings import Settings
from vending.balance.engine import EngineSettings
from vending.balance.policy import DisconnectPolicy, PolicyError
from vending.localtime import UnknownTimeZone


class BalanceSettingsError(ValueError):
    """A balance setting is unusable; the message names the variable."""


def engine_settings(settings: Settings) -> EngineSettings:
    """The engine's settings. Raises BalanceSettingsError."""
    holidays = set(settings.public_holidays)
    if settings.public_holidays_file is not None:
        holidays |= read_holidays(settings.public_holidays_file)
    try:
        policy = DisconnectPolicy(
            timezone=settings.utility_timezone,
            friendly_from=settings.friendly_hours_from,
            friendly_until=settings.friendly_hours_until,
            no_disconnect_on_weekends=settings.no_disconnect_on_weekends,
            holidays=frozenset(holidays),
            grace_after_exhaustion=timedelta(minutes=settings.disconnect_grace_minutes),
            grace_after_conversion=timedelta(days=settings.conversion_grace_days),
            reconnect_minimum_minor=settings.reconnect_minimum_minor,
        )
    except UnknownTimeZone as exc:
        raise BalanceSettingsError(f"GRIDVEND_UTILITY_TIMEZONE: {exc}") from None
    except PolicyError as exc:
        raise BalanceSettingsError(f"disconnection policy: {exc}") from None
    for name, value in (
        ("GRIDVEND_FRIENDLY_HOURS_FROM", policy.friendly_from),
        ("GRIDVEND_FRIENDLY_HOURS_UNTIL", policy.friendly_until),
    ):
        # Protected periods are whole minutes (policy.next_disconnect_window relies on it).
        if value.second or value.microsecond or value.tzinfo is not None:
            raise BalanceSettingsError(f"{name}: give a local time as HH:MM, got {value}")
    return EngineSettings(
        policy=policy,
        thresholds_percent=settings.low_balance_thresholds_percent,
        thresholds_days_left=settings.low_balance_days_left,
        emergency_credit_minor=settings.emergency_credit_minor,
        notification_channels=settings.notification_channel_list,
    )


def read_holidays(path: Path) -> set[date]:
    """ISO dates, one a line; blank lines and ``#`` comments are skipped.
    Raises BalanceSettingsError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BalanceSettingsError(
            f"GRIDVEND_PUBLIC_HOLIDAYS_FILE: cannot read {path}: {exc}"
        ) from None
    holidays = set()
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            holidays.add(date.fromisoformat(entry))
        except ValueError:
            raise BalanceSettingsError(
                f"GRIDVEND_PUBLIC_HOLIDAYS_FILE: {path} line {number}: {entry!r} is not a "
                "date (YYYY-MM-DD)"
            ) from None
    return holidays
