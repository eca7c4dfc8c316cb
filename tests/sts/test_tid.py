"""TIDs: base dates, worked values, and the vending-side allocator contract."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from protocols.sts.errors import FieldRangeError, KeyExpiredError, TidError
from protocols.sts.fields import BaseDate, datetime_from_tid, tid_from_datetime
from protocols.sts.tid import TidAllocator, next_tid


@pytest.mark.parametrize(
    ("issued_at", "base", "tid"),
    [
        (datetime(2004, 3, 1, 13, 55), BaseDate.Y1993, 5_871_715),
        (datetime(2016, 12, 11, 15, 49, 59), BaseDate.Y1993, 12_593_749),
        (datetime(2020, 1, 1, 8, 0), BaseDate.Y1993, 14_200_320),
        (datetime(2020, 1, 1, 8, 0), BaseDate.Y2014, 3_155_520),
        (datetime(2014, 1, 1), BaseDate.Y1993, 11_044_800),
        (datetime(2024, 11, 24, 20, 15), BaseDate.Y1993, 0xFFFFFF),
        (datetime(2066, 11, 24, 20, 15), BaseDate.Y2035, 0xFFFFFF),
    ],
)
def test_tid_is_whole_minutes_since_the_base_date(
    issued_at: datetime, base: BaseDate, tid: int
) -> None:
    assert tid_from_datetime(issued_at, base) == tid


def test_aware_time_is_taken_at_its_wall_clock() -> None:
    aware = datetime(2004, 3, 1, 13, 55, tzinfo=UTC)
    assert tid_from_datetime(aware, BaseDate.Y1993) == 5_871_715


def test_time_after_the_last_minute_of_a_base_date_is_refused() -> None:
    with pytest.raises(TidError, match="rollover"):
        tid_from_datetime(datetime(2024, 11, 24, 20, 16), BaseDate.Y1993)
    with pytest.raises(TidError, match="before"):
        tid_from_datetime(datetime(2013, 12, 31, 23, 59), BaseDate.Y2014)
    with pytest.raises(FieldRangeError):
        datetime_from_tid(1 << 24, BaseDate.Y2014)


@pytest.mark.parametrize("value", ["1993", 2014, "35", "14"])
def test_base_date_parses_years_and_codes(value: object) -> None:
    assert BaseDate.parse(value) in set(BaseDate)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["2000", "x", 1992])
def test_unknown_base_date_is_refused(value: object) -> None:
    with pytest.raises(FieldRangeError, match="base date"):
        BaseDate.parse(value)  # type: ignore[arg-type]


def test_allocator_never_issues_the_same_tid_twice_to_one_meter() -> None:
    allocator = TidAllocator()
    now = datetime(2030, 5, 1, 10, 0, 30)
    tids = [allocator.allocate("m1", now, BaseDate.Y2014) for _ in range(3)]
    assert tids == [tids[0], tids[0] + 1, tids[0] + 2]
    # Another meter starts from the clock again.
    assert allocator.allocate("m2", now, BaseDate.Y2014) == tids[0]
    # A later clock wins over last + 1.
    later = datetime(2030, 5, 1, 11, 0)
    assert allocator.allocate("m1", later, BaseDate.Y2014) == tid_from_datetime(
        later, BaseDate.Y2014
    )


def test_allocator_refuses_past_the_key_expiry_and_remembers_nothing() -> None:
    allocator = TidAllocator()
    now = datetime(2004, 3, 1, 13, 55)  # TID >> 16 == 89
    with pytest.raises(KeyExpiredError, match="key expiry"):
        allocator.allocate("m1", now, BaseDate.Y1993, key_expiry_number=85)
    assert allocator.last_tid("m1") is None


def test_allocator_refuses_past_the_last_tid_of_the_base_date() -> None:
    last_minute = datetime(2024, 11, 24, 20, 15)
    assert next_tid(last_minute, BaseDate.Y1993, None) == 0xFFFFFF
    with pytest.raises(TidError, match="rollover"):
        next_tid(last_minute, BaseDate.Y1993, 0xFFFFFF)
