"""The balance engine's ``GRIDVEND_*`` settings: read from the environment, checked at
startup with an error naming the setting, and a start refused on a bad one."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from gridvend.balance_settings import BalanceSettingsError, engine_settings
from gridvend.cli import app
from gridvend.settings import Settings
from vending.balance.policy import protected_reason

runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env file of the developer's
    monkeypatch.setenv("GRIDVEND_DATA_DIR", str(tmp_path / "var"))


def test_defaults_keep_the_documented_policy() -> None:
    built = engine_settings(Settings())
    policy = built.policy
    assert (policy.friendly_from, policy.friendly_until) == (time(18, 0), time(8, 0))
    assert policy.no_disconnect_on_weekends is True
    assert policy.holidays == frozenset()
    assert policy.grace_after_exhaustion == timedelta(minutes=60)
    assert policy.grace_after_conversion == timedelta(days=30)
    assert policy.reconnect_minimum_minor == 0
    assert built.thresholds_percent == (Decimal(30), Decimal(10), Decimal(0))
    assert built.thresholds_days_left == ()
    assert built.emergency_credit_minor == 0


def test_every_policy_setting_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    holidays = tmp_path / "holidays.txt"
    holidays.write_text("# national holidays\n2027-01-01  # New Year\n\n2026-12-16\n")
    for name, value in {
        "UTILITY_TIMEZONE": "Africa/Johannesburg",
        "FRIENDLY_HOURS_FROM": "20:00",
        "FRIENDLY_HOURS_UNTIL": "06:30",
        "NO_DISCONNECT_ON_WEEKENDS": "false",
        "PUBLIC_HOLIDAYS": "2026-12-25, 2026-12-26",
        "PUBLIC_HOLIDAYS_FILE": str(holidays),
        "RECONNECT_MINIMUM_MINOR": "1000",
        "LOW_BALANCE_THRESHOLDS_PERCENT": "50,20,5",
        "LOW_BALANCE_DAYS_LEFT": "7, 3",
        "NOTIFICATION_CHANNELS": "record",
        "EMERGENCY_CREDIT_MINOR": "2500",
        "DISCONNECT_GRACE_MINUTES": "15",
    }.items():
        monkeypatch.setenv(f"GRIDVEND_{name}", value)

    built = engine_settings(Settings())

    policy = built.policy
    assert (policy.friendly_from, policy.friendly_until) == (time(20, 0), time(6, 30))
    assert policy.no_disconnect_on_weekends is False
    assert policy.holidays == {
        date(2026, 12, 25),
        date(2026, 12, 26),
        date(2027, 1, 1),
        date(2026, 12, 16),
    }
    assert policy.reconnect_minimum_minor == 1000
    assert policy.grace_after_exhaustion == timedelta(minutes=15)
    assert built.thresholds_percent == (Decimal(50), Decimal(20), Decimal(5))
    assert built.emergency_credit_minor == 2500
    assert built.thresholds_days_left == (7, 3)
    assert built.notification_channels == ("record",)
    # Noon (local) on a holiday from the file is protected; a Saturday noon no longer is.
    assert protected_reason(policy, datetime(2026, 12, 16, 10, 0, tzinfo=UTC)) == (
        "public holiday 2026-12-16"
    )
    assert protected_reason(policy, datetime(2026, 11, 28, 10, 0, tzinfo=UTC)) is None
    assert protected_reason(policy, datetime(2026, 11, 24, 4, 0, tzinfo=UTC)) == (
        "friendly hours 20:00-06:30"
    )


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("LOW_BALANCE_THRESHOLDS_PERCENT", "150", "percentage 0..100"),
        ("LOW_BALANCE_THRESHOLDS_PERCENT", "30,abc", "low_balance_thresholds_percent"),
        ("LOW_BALANCE_THRESHOLDS_PERCENT", "30,30", "given twice"),
        ("LOW_BALANCE_DAYS_LEFT", "7,0", "at least 1"),
        ("LOW_BALANCE_DAYS_LEFT", "3,3", "distinct"),
        ("PUBLIC_HOLIDAYS", "2026-13-01", "public_holidays"),
        ("FRIENDLY_HOURS_FROM", "25:00", "friendly_hours_from"),
        ("RECONNECT_MINIMUM_MINOR", "-1", "reconnect_minimum_minor"),
        ("EMERGENCY_CREDIT_MINOR", "12.50", "emergency_credit_minor"),
        ("NO_DISCONNECT_ON_WEEKENDS", "perhaps", "no_disconnect_on_weekends"),
    ],
)
def test_a_bad_value_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, words: str
) -> None:
    monkeypatch.setenv(f"GRIDVEND_{name}", value)
    with pytest.raises(ValidationError, match=words):
        Settings()


def test_a_missing_holiday_file_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GRIDVEND_PUBLIC_HOLIDAYS_FILE", str(tmp_path / "absent.txt"))
    with pytest.raises(BalanceSettingsError, match="GRIDVEND_PUBLIC_HOLIDAYS_FILE: cannot read"):
        engine_settings(Settings())


def test_a_bad_line_in_the_holiday_file_is_refused_with_its_line_number(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    holidays = tmp_path / "holidays.txt"
    holidays.write_text("2026-12-25\n25/12/2026\n")
    monkeypatch.setenv("GRIDVEND_PUBLIC_HOLIDAYS_FILE", str(holidays))
    with pytest.raises(BalanceSettingsError, match="line 2: '25/12/2026' is not a date"):
        engine_settings(Settings())


def test_friendly_hours_with_seconds_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDVEND_FRIENDLY_HOURS_FROM", "18:00:30")
    with pytest.raises(BalanceSettingsError, match="GRIDVEND_FRIENDLY_HOURS_FROM"):
        engine_settings(Settings())


def test_an_unknown_time_zone_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRIDVEND_UTILITY_TIMEZONE", "Mars/Olympus_Mons")
    with pytest.raises(BalanceSettingsError, match="GRIDVEND_UTILITY_TIMEZONE"):
        engine_settings(Settings())


@pytest.mark.parametrize(
    ("name", "value"),
    [("LOW_BALANCE_THRESHOLDS_PERCENT", "101"), ("PUBLIC_HOLIDAYS_FILE", "/nonexistent/h.txt")],
)
def test_serve_refuses_to_start_on_a_bad_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"GRIDVEND_{name}", value)
    result = runner.invoke(app, ["serve", "--port", "0"])
    assert result.exit_code == 2
    assert "settings:" in result.output
