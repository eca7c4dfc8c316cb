from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.modbus import (
    PROFILES,
    Block,
    CodecError,
    EventRecord,
    Measurand,
    Prepaid,
    ProfileError,
    ReadRequest,
    RelayActuator,
    decode_event_log,
    decode_points,
    decode_readings,
    get_profile,
    meter_totals,
    plan_reads,
    power_limit_write,
    relay_write,
    token_write,
)
from protocols.mqtt import EventKind
from protocols.quantities import Quantity

DETERMINISTIC = settings(derandomize=True)


def _memory_for(profile_name: str, values: dict) -> dict[Block, dict[int, int]]:
    """A meter's registers as a dict per block, filled by encoding ``values`` with the map."""
    profile = get_profile(profile_name)
    memory: dict[Block, dict[int, int]] = {b: {} for b in Block}
    for point, value in values.items():
        reg = profile.register(point)
        words = reg.codec.encode_text(value) if isinstance(value, str) else reg.codec.encode(value)
        for i, word in enumerate(words):
            memory[reg.block][reg.address + i] = word
    return memory


def _read(memory, request: ReadRequest) -> list[int]:
    return [memory[request.block].get(a, 0) for a in range(request.address, request.end)]


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_planned_read_fits_the_profile_limit_and_its_answered_spans(name: str) -> None:
    profile = get_profile(name)
    plan = plan_reads(profile)
    assert plan
    for request in plan:
        if not request.block.is_bits:
            assert request.count <= profile.max_registers_per_request
        assert profile.answers(request.block, request.address, request.end)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_the_default_plan_covers_every_readable_point(name: str) -> None:
    profile = get_profile(name)
    plan = plan_reads(profile)
    for reg in profile.registers:
        if reg.access.readable:
            assert any(
                r.block is reg.block and r.address <= reg.address and reg.end <= r.end for r in plan
            ), reg.point


def test_neighbouring_eastron_values_share_one_request() -> None:
    profile = get_profile("eastron-sdm120-prepaid")
    plan = plan_reads(
        profile,
        [Measurand(Quantity.VOLTAGE_V), Measurand(Quantity.CURRENT_A)],
    )
    assert plan == (ReadRequest(Block.INPUT, 0x0000, 8),)


def test_values_farther_apart_than_the_limit_are_split() -> None:
    profile = get_profile("eastron-sdm120-prepaid")
    plan = plan_reads(
        profile, [Measurand(Quantity.VOLTAGE_V), Measurand(Quantity.ENERGY_IMPORT_KWH)]
    )
    assert plan == (ReadRequest(Block.INPUT, 0x0000, 2), ReadRequest(Block.INPUT, 0x0048, 2))


def test_planning_a_point_the_profile_lacks_raises_profile_error() -> None:
    with pytest.raises(ProfileError, match="no credit_kwh"):
        plan_reads(get_profile("eastron-sdm120"), [Measurand(Quantity.CREDIT_KWH)])
    with pytest.raises(ProfileError, match="write-only"):
        plan_reads(get_profile("dds238-zn"), [Prepaid.TOKEN_ENTRY])


def test_unknown_profile_name_lists_the_known_ones() -> None:
    with pytest.raises(ProfileError, match="dds238-zn"):
        get_profile("sdm999")


three_phase_values = st.fixed_dictionaries(
    {
        Measurand(Quantity.VOLTAGE_V, phase): st.decimals("180", "260", places=1)
        for phase in (1, 2, 3)
    }
    | {
        Measurand(Quantity.ENERGY_IMPORT_KWH): st.decimals("0", "99999", places=2),
        Measurand(Quantity.ACTIVE_POWER_W): st.decimals("0", "20000", places=1),
        Measurand(Quantity.CREDIT_KWH): st.decimals("0", "9999", places=2),
    }
)


@DETERMINISTIC
@given(three_phase_values)
def test_sdm630_values_round_trip_through_plan_and_decode(values) -> None:
    memory = _memory_for("eastron-sdm630-prepaid", values)
    profile = get_profile("eastron-sdm630-prepaid")
    replies = [(r, _read(memory, r)) for r in plan_reads(profile) if not r.block.is_bits]
    readings = decode_readings(profile, replies)
    for measurand, value in values.items():
        # float32 keeps ~7 significant digits: compare at the resolution it can carry.
        assert abs(readings[measurand] - value) <= abs(value) * Decimal("1e-7") + Decimal("0.001")


@DETERMINISTIC
@given(
    st.decimals("0", "42949672.95", places=2),
    st.decimals("0", "6553.5", places=1),
    st.integers(-32768, 32767),
)
def test_dds238_scaled_values_decode_exactly(energy, volts, watts) -> None:
    values = {
        Measurand(Quantity.ENERGY_IMPORT_KWH): energy,
        Measurand(Quantity.VOLTAGE_V): volts,
        Measurand(Quantity.ACTIVE_POWER_W): Decimal(watts),
    }
    profile = get_profile("dds238-zn")
    memory = _memory_for("dds238-zn", values)
    replies = [(r, _read(memory, r)) for r in plan_reads(profile)]
    totals = meter_totals(decode_readings(profile, replies))
    assert totals[Quantity.ENERGY_IMPORT_KWH] == energy
    assert totals[Quantity.VOLTAGE_V] == volts
    assert totals[Quantity.ACTIVE_POWER_W] == watts


def test_prepaid_identity_decodes_as_text() -> None:
    profile = get_profile("eastron-sdm120-prepaid")
    memory = _memory_for(
        "eastron-sdm120-prepaid",
        {Prepaid.METER_NUMBER: "01234567890", Prepaid.METER_SERIAL: "SIM-000042"},
    )
    request = ReadRequest(Block.HOLDING, 0x1000, 80)
    points = decode_points(profile, request, _read(memory, request))
    assert points[Prepaid.METER_NUMBER] == "01234567890"
    assert points[Prepaid.METER_SERIAL] == "SIM-000042"
    assert Prepaid.TOKEN_ENTRY not in points  # write-only


def test_a_reply_of_the_wrong_length_is_refused() -> None:
    profile = get_profile("eastron-sdm120")
    with pytest.raises(CodecError, match="expected 8 registers"):
        decode_points(profile, ReadRequest(Block.INPUT, 0, 8), [0] * 7)


def test_event_log_round_trips_newest_first() -> None:
    profile = get_profile("eastron-sdm120-prepaid")
    log = profile.event_log
    assert log is not None
    t = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)
    events = [
        EventRecord(12, EventKind.RELAY_CHANGED, t, detail=0),
        EventRecord(11, EventKind.TOKEN_ACCEPTED, t, detail=1),
    ]
    request = ReadRequest(Block.HOLDING, log.address, log.count)
    assert decode_event_log(profile, request, log.encode(events)) == events


def test_an_unknown_event_code_is_refused() -> None:
    with pytest.raises(CodecError, match="unknown event code"):
        EventRecord.decode([0, 1, 99, 0, 0, 0])


def test_relay_write_follows_each_profile_actuator() -> None:
    eastron = get_profile("eastron-sdm120-prepaid")
    dds = get_profile("dds238-zn")
    assert eastron.relay_actuator is RelayActuator.COIL
    assert relay_write(eastron, True).function_code == 5
    assert relay_write(eastron, False).bits == (False,)
    assert dds.relay_actuator is RelayActuator.HOLDING_FC16
    write = relay_write(dds, True)
    assert (write.function_code, write.address, write.registers) == (16, 0x001A, (1,))
    with pytest.raises(ProfileError, match="no relay"):
        relay_write(get_profile("eastron-sdm120"), True)


def test_token_and_power_limit_writes_are_fc16_blocks() -> None:
    profile = get_profile("eastron-sdm120-prepaid")
    token = token_write(profile, "12345678901234567890")
    assert token.function_code == 16
    assert len(token.registers) == 10
    assert token.registers[0] == 0x3132  # "12"
    limit = power_limit_write(profile, Decimal(5000))
    assert limit.registers == (0x459C, 0x4000)
    with pytest.raises(CodecError, match="20 decimal digits"):
        token_write(profile, "1234")


def test_eastron_prepaid_profiles_name_their_other_phase_sibling() -> None:
    from protocols.modbus import profile_for_phases

    sdm120 = get_profile("eastron-sdm120-prepaid")
    assert profile_for_phases(sdm120, 3).name == "eastron-sdm630-prepaid"
    assert profile_for_phases(sdm120, 1) is sdm120
    assert profile_for_phases(get_profile("dds238-zn"), 3).name == "dds238-zn"


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_a_routine_poll_reads_every_measurand_in_few_requests(name: str) -> None:
    from protocols.modbus import routine_points

    profile = get_profile(name)
    points = routine_points(profile)
    assert set(profile.measurands) <= set(points)
    assert Prepaid.TOKEN_ENTRY not in points
    assert len(plan_reads(profile, points)) <= 3


def test_clock_write_needs_an_aware_time() -> None:
    from datetime import datetime

    from protocols.modbus import clock_write

    with pytest.raises(CodecError, match="timezone-aware"):
        clock_write(get_profile("dds238-zn"), datetime(2026, 1, 1))
    with pytest.raises(ProfileError):
        clock_write(get_profile("eastron-sdm120"), datetime(2026, 1, 1, tzinfo=UTC))
