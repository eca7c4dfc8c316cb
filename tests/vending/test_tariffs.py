import json
from dataclasses import replace
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from pydantic import ValidationError

from gridvend.db import make_engine, make_session_factory, upgrade
from tests.vending.factories import (
    ALL_DAYS,
    PROPERTY,
    WEEKDAY,
    ZAR,
    commercial_tou,
    residential_stepped,
    tariffs,
    utc,
)
from vending.accounts import load_tariff, save_tariff
from vending.localtime import NaiveDatetime, UnknownTimeZone
from vending.tariff_documents import TariffDocument, TariffVersionDocument
from vending.tariffs import (
    Block,
    DaySchedule,
    DayType,
    DayTypeCoverage,
    DuplicateName,
    FlatRate,
    GapInDay,
    InvalidPercentage,
    InvalidPeriodTime,
    Levy,
    NegativeRate,
    NoChargeableRate,
    NonIncreasingBlocks,
    NoTariffInForce,
    OverlappingBands,
    Period,
    Season,
    SeasonCoverage,
    SteppedBlocks,
    Tariff,
    TariffError,
    TariffVersion,
    TimeOfUse,
    UnboundedLastBlock,
    UnknownBand,
    VersionOrder,
)

D = Decimal


def _day(*periods: tuple[int, int | None, str]) -> DaySchedule:
    return DaySchedule(
        ALL_DAYS,
        tuple(Period(time(s), None if e is None else time(e), b) for s, e, b in periods),
    )


def test_blocks_with_non_increasing_thresholds_are_refused() -> None:
    with pytest.raises(NonIncreasingBlocks):
        SteppedBlocks((Block(D(100), D(1)), Block(D(100), D(2)), Block(None, D(3))))
    with pytest.raises(NonIncreasingBlocks):
        SteppedBlocks((Block(D(0), D(1)), Block(None, D(2))))


def test_the_last_block_must_be_unbounded_and_only_the_last() -> None:
    with pytest.raises(UnboundedLastBlock):
        SteppedBlocks((Block(D(100), D(1)), Block(D(200), D(2))))
    with pytest.raises(UnboundedLastBlock):
        SteppedBlocks((Block(None, D(1)), Block(None, D(2))))


def test_negative_rates_are_refused_everywhere() -> None:
    with pytest.raises(NegativeRate):
        FlatRate(D("-0.01"))
    with pytest.raises(NegativeRate):
        SteppedBlocks((Block(D(50), D(-1)), Block(None, D(2))))
    with pytest.raises(NegativeRate):
        Levy("levy", per_kwh=D(-1))
    with pytest.raises(NegativeRate):
        FlatRate(D("NaN"))


def test_a_tariff_that_would_sell_unlimited_energy_for_nothing_is_refused() -> None:
    with pytest.raises(NoChargeableRate):
        FlatRate(D(0))
    with pytest.raises(NoChargeableRate):
        SteppedBlocks((Block(D(50), D(1)), Block(None, D(0))))


def test_overlapping_periods_are_refused() -> None:
    with pytest.raises(OverlappingBands):
        _day((0, 8, "a"), (7, None, "b"))


def test_a_gap_in_the_day_is_refused() -> None:
    with pytest.raises(GapInDay):
        _day((0, 7, "a"), (8, None, "b"))
    with pytest.raises(GapInDay):
        _day((0, 7, "a"), (7, 23, "b"))
    with pytest.raises(GapInDay):
        _day((1, None, "a"))


def test_a_period_crossing_midnight_must_be_split() -> None:
    with pytest.raises(OverlappingBands, match="cross midnight"):
        DaySchedule(ALL_DAYS, (Period(time(22), time(6), "a"),))


def test_period_times_are_whole_minutes() -> None:
    with pytest.raises(InvalidPeriodTime):
        DaySchedule(
            ALL_DAYS, (Period(time(0), time(7, 0, 30), "a"), Period(time(7, 0, 30), None, "b"))
        )


def test_every_day_type_needs_exactly_one_schedule() -> None:
    with pytest.raises(DayTypeCoverage):
        Season(
            "all", frozenset(range(1, 13)), (DaySchedule(WEEKDAY, (Period(time(0), None, "a"),)),)
        )
    with pytest.raises(DayTypeCoverage):
        Season(
            "all",
            frozenset(range(1, 13)),
            (_day((0, None, "a")), DaySchedule(WEEKDAY, (Period(time(0), None, "a"),))),
        )


def test_seasons_must_cover_each_month_once_and_bands_must_be_priced() -> None:
    day = _day((0, None, "a"))
    with pytest.raises(SeasonCoverage):
        TimeOfUse({"a": D(1)}, (Season("s", frozenset(range(1, 12)), (day,)),))
    with pytest.raises(SeasonCoverage):
        TimeOfUse(
            {"a": D(1)},
            (Season("s", frozenset(range(1, 13)), (day,)), Season("t", frozenset({1}), (day,))),
        )
    with pytest.raises(UnknownBand):
        TimeOfUse({"b": D(1)}, (Season("s", frozenset(range(1, 13)), (day,)),))


def test_the_token_band_must_be_a_priced_band_with_a_price() -> None:
    day = _day((0, None, "a"))
    season = (Season("s", frozenset(range(1, 13)), (day,)),)
    with pytest.raises(UnknownBand):
        TimeOfUse({"a": D(1)}, season, token_band="b")
    with pytest.raises(NoChargeableRate):
        TimeOfUse({"a": D(0)}, season, token_band="a")


def test_version_figures_are_checked() -> None:
    with pytest.raises(InvalidPercentage):
        TariffVersion(date(2026, 1, 1), FlatRate(D(1)), vat_percent=D(101))
    with pytest.raises(DuplicateName):
        TariffVersion(date(2026, 1, 1), FlatRate(D(1)), levies=(Levy("a"), Levy("a")))


def test_versions_must_be_in_strictly_increasing_date_order() -> None:
    v = TariffVersion(date(2026, 1, 1), FlatRate(D(1)))
    with pytest.raises(VersionOrder):
        Tariff("T", "t", ZAR, "Africa/Johannesburg", (v, v))
    with pytest.raises(VersionOrder):
        Tariff("T", "t", ZAR, "Africa/Johannesburg", ())


def test_an_unknown_time_zone_is_refused() -> None:
    v = TariffVersion(date(2026, 1, 1), FlatRate(D(1)))
    with pytest.raises(UnknownTimeZone):
        Tariff("T", "t", ZAR, "Mars/Olympus_Mons", (v,))


def test_the_version_in_force_changes_at_local_midnight_of_its_effective_date() -> None:
    first = TariffVersion(date(2026, 1, 1), FlatRate(D(1)))
    second = TariffVersion(date(2026, 7, 1), FlatRate(D(2)))
    tariff = Tariff("T", "t", ZAR, "Africa/Johannesburg", (first, second))
    # 1 July 00:00 in Johannesburg (UTC+2) is 30 June 22:00 UTC.
    assert tariff.version_at(utc(2026, 6, 30, 21, 59, 59)) is first
    assert tariff.version_at(utc(2026, 6, 30, 22)) is second
    with pytest.raises(NoTariffInForce):
        tariff.version_at(utc(2025, 12, 31, 21, 59))
    with pytest.raises(NaiveDatetime):
        tariff.version_at(utc(2026, 7, 1).replace(tzinfo=None))


def test_time_of_use_bands_follow_season_day_type_and_public_holidays() -> None:
    tou = commercial_tou().versions[0].energy
    assert isinstance(tou, TimeOfUse)
    assert tou.band_at(datetime(2026, 7, 1, 7, 0)) == "peak"  # winter Wednesday
    assert tou.band_at(datetime(2026, 7, 1, 6, 59)) == "standard"
    assert tou.band_at(datetime(2026, 7, 4, 8, 0)) == "standard"  # Saturday
    assert tou.band_at(datetime(2026, 6, 16, 8, 0)) == "off-peak"  # Youth Day, as Sunday
    assert DayType.of(date(2026, 6, 16), tou.holidays) is DayType.SUNDAY


def test_tariff_documents_are_checked_for_shape() -> None:
    with pytest.raises(ValidationError):
        TariffVersionDocument.model_validate(
            {"effective_from": "2026-01-01", "energy": {"kind": "flat", "rate_per_kwh": "NaN"}}
        )
    with pytest.raises(ValidationError):
        TariffVersionDocument.model_validate(
            {"effective_from": "2026-01-01", "energy": {"kind": "wind", "rate_per_kwh": "1"}}
        )
    with pytest.raises(ValidationError):
        TariffVersionDocument.model_validate(
            {
                "effective_from": "2026-01-01",
                "energy": {"kind": "flat", "rate_per_kwh": "1"},
                "surprise": True,
            }
        )


def test_a_document_with_overlapping_bands_gives_the_specific_tariff_error() -> None:
    doc = TariffVersionDocument.model_validate(
        {
            "effective_from": "2026-01-01",
            "energy": {
                "kind": "time_of_use",
                "band_rates": {"peak": "3.1", "off-peak": "1.2"},
                "seasons": [
                    {
                        "name": "all year",
                        "months": list(range(1, 13)),
                        "days": [
                            {
                                "day_types": ["weekday", "saturday", "sunday"],
                                "periods": [
                                    {"start": "00:00", "end": "18:00", "band": "off-peak"},
                                    {"start": "17:00", "end": "24:00", "band": "peak"},
                                ],
                            }
                        ],
                    }
                ],
            },
        }
    )
    with pytest.raises(OverlappingBands) as raised:
        doc.to_version()
    assert isinstance(raised.value, TariffError)
    assert raised.value.code == "overlapping_bands"


@pytest.mark.parametrize("factory", [residential_stepped, commercial_tou])
def test_realistic_tariffs_survive_a_json_round_trip(factory: object) -> None:
    tariff = factory()  # type: ignore[operator]
    text = TariffDocument.from_tariff(tariff).model_dump_json()
    assert json.loads(text)["currency"] == "ZAR"
    assert TariffDocument.model_validate_json(text).to_tariff() == tariff


@PROPERTY
@given(tariffs(max_versions=3))
def test_any_valid_tariff_survives_a_document_round_trip(tariff: Tariff) -> None:
    doc = TariffDocument.from_tariff(tariff)
    again = TariffDocument.model_validate_json(doc.model_dump_json())
    assert again == doc
    assert again.to_tariff() == tariff
    compact = doc.model_dump_json(exclude_defaults=True)
    assert TariffDocument.model_validate_json(compact).to_tariff() == tariff


def test_a_tariff_is_cached_per_database_not_by_its_version_ids_alone(tmp_path: Path) -> None:
    # Two databases, one tariff code, the same version ids, different rates: each
    # database must be priced with its own tariff.
    first = residential_stepped()
    energy = replace(first.versions[0].energy, blocks=(Block(None, Decimal("9.99")),))
    second = replace(first, versions=(replace(first.versions[0], energy=energy),))
    loaded = []
    for name, tariff in (("a", first), ("b", second)):
        engine = make_engine(f"sqlite:///{tmp_path / name}.db")
        upgrade(engine)
        factory = make_session_factory(engine)
        with factory() as session, session.begin():
            save_tariff(session, TariffDocument.from_tariff(tariff), actor="t", now=OPENED)
        with factory() as session:
            loaded.append(load_tariff(session, tariff.code))
        engine.dispose()
    assert [t.versions[0].energy for t in loaded] == [first.versions[0].energy, energy]


OPENED = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)


def test_a_tariff_saved_in_a_rolled_back_transaction_is_not_priced_later(
    tmp_path: Path,
) -> None:
    # SQLite hands a rolled-back insert's id to the next insert: a version saved and rolled
    # back must not stay cached under that id for the version saved after it.
    engine = make_engine(f"sqlite:///{tmp_path}/t.db")
    upgrade(engine)
    factory = make_session_factory(engine)
    base = residential_stepped()
    with factory() as session, session.begin():
        save_tariff(session, TariffDocument.from_tariff(base), actor="t", now=OPENED)

    def later(rate: str) -> TariffDocument:
        energy = replace(base.versions[0].energy, blocks=(Block(None, Decimal(rate)),))
        version = replace(base.versions[0], effective_from=date(2026, 12, 1), energy=energy)
        return TariffDocument.from_tariff(replace(base, versions=(version,)))

    with factory() as session:
        session.begin()
        save_tariff(session, later("9.99"), actor="t", now=OPENED)
        session.rollback()
    with factory() as session, session.begin():
        save_tariff(session, later("1.11"), actor="t", now=OPENED)
    with factory() as session:
        loaded = load_tariff(session, base.code)
    assert loaded.versions[-1].energy.blocks[0].rate_per_kwh == Decimal("1.11")
    engine.dispose()
