import itertools
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vending.factories import PROPERTY, ZONES, instants, utc
from vending.localtime import (
    NaiveDatetime,
    day_length,
    day_start,
    local_date,
    wall_segments,
)

LONDON = ZoneInfo("Europe/London")


def test_segments_end_at_the_daylight_saving_jump_and_at_wall_clock_boundaries() -> None:
    # 29 March 2026: London jumps from 01:00 GMT to 02:00 BST at 01:00 UTC.
    segs = list(
        wall_segments(
            utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 3), LONDON, lambda _d: [time(2, 30)]
        )
    )
    assert [(s.start, s.end) for s in segs] == [
        (utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1)),
        (utc(2026, 3, 29, 1), utc(2026, 3, 29, 1, 30)),
        (utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 3)),
    ]
    assert segs[1].wall_start == datetime(2026, 3, 29, 2, 0)


def test_a_boundary_inside_the_skipped_hour_starts_when_the_clock_jumps() -> None:
    segs = list(
        wall_segments(utc(2026, 3, 29, 0), utc(2026, 3, 29, 2), LONDON, lambda _d: [time(1, 30)])
    )
    assert [s.end for s in segs] == [utc(2026, 3, 29, 1), utc(2026, 3, 29, 2)]
    assert segs[1].wall_start == datetime(2026, 3, 29, 2, 0)


def test_a_boundary_inside_the_repeated_hour_is_crossed_twice() -> None:
    # 25 October 2026: London goes back from 02:00 BST to 01:00 GMT at 01:00 UTC.
    segs = list(
        wall_segments(utc(2026, 10, 25, 0), utc(2026, 10, 25, 2), LONDON, lambda _d: [time(1, 30)])
    )
    assert [s.end for s in segs] == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 1),
        utc(2026, 10, 25, 1, 30),
        utc(2026, 10, 25, 2),
    ]


def test_days_around_daylight_saving_last_23_and_25_hours() -> None:
    assert day_length(datetime(2026, 3, 29).date(), LONDON) == timedelta(hours=23)
    assert day_length(datetime(2026, 10, 25).date(), LONDON) == timedelta(hours=25)
    santiago = ZoneInfo("America/Santiago")
    # Chile skips local midnight in September: the day starts at the jump.
    start = day_start(datetime(2026, 9, 6).date(), santiago)
    assert start.astimezone(santiago).time() == time(1, 0)
    assert local_date(start - timedelta(microseconds=1), santiago) == datetime(2026, 9, 5).date()


def test_naive_instants_are_refused() -> None:
    with pytest.raises(NaiveDatetime):
        list(wall_segments(datetime(2026, 1, 1), utc(2026, 1, 2), LONDON))


@PROPERTY
@given(
    instants,
    st.integers(1, 3 * 86400),
    st.sampled_from(ZONES),
    st.lists(st.integers(1, 1439), max_size=4),
)
def test_segments_tile_the_span_and_each_has_one_local_date_and_offset(
    start: datetime, seconds: int, zone_name: str, minutes: list[int]
) -> None:
    tz = ZoneInfo(zone_name)
    end = start + timedelta(seconds=seconds)
    cuts = [time(m // 60, m % 60) for m in minutes]
    segs = list(wall_segments(start, end, tz, lambda _d: cuts))
    assert segs[0].start == start and segs[-1].end == end
    for a, b in itertools.pairwise(segs):
        assert a.end == b.start
    for s in segs:
        assert s.start < s.end
        last = s.end - timedelta(microseconds=1)
        assert s.start.astimezone(tz).utcoffset() == last.astimezone(tz).utcoffset()
        assert local_date(s.start, tz) == local_date(last, tz) == s.wall_start.date()
        assert s.wall_start == s.start.astimezone(tz).replace(tzinfo=None)
        # No requested boundary falls strictly inside a segment's wall-clock span.
        wall_end = last.astimezone(tz).replace(tzinfo=None)
        for c in cuts:
            boundary = datetime.combine(s.wall_start.date(), c)
            assert not (s.wall_start < boundary <= wall_end)
    assert all(s.start.tzinfo is UTC for s in segs)
