"""The poller's pure parts (backoff, breaker, intervals, targets) and its lease table."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from headend.connectors.modbus import (
    BreakerState,
    CircuitBreaker,
    FailureReason,
    PollFailure,
    PollGroup,
    RetryPolicy,
    RtuTransport,
    TargetError,
    TcpTransport,
    channel_resource,
    claim_leases,
    interval_start,
    lease_holders,
    meter_resource,
    release_leases,
    target_from_registry,
    targets_from_registry,
)
from protocols.quantities import Quantity

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


@given(
    failed=st.integers(min_value=1, max_value=30),
    seed=st.integers(min_value=0, max_value=2**32),
    jitter=st.floats(min_value=0, max_value=1),
)
def test_backoff_grows_exponentially_up_to_the_cap_with_bounded_jitter(
    failed: int, seed: int, jitter: float
):
    policy = RetryPolicy(attempts=5, base_delay_s=0.1, multiplier=2, max_delay_s=3, jitter=jitter)
    ceiling = min(3.0, 0.1 * 2 ** (failed - 1))
    delay = policy.delay(failed, random.Random(seed))
    assert ceiling * (1 - jitter) - 1e-12 <= delay <= ceiling + 1e-12


def test_backoff_jitter_is_reproducible_with_a_seeded_generator():
    policy = RetryPolicy()
    first = [policy.delay(n, random.Random(3)) for n in (1, 2, 3)]
    assert first == [policy.delay(n, random.Random(3)) for n in (1, 2, 3)]


def test_a_retry_policy_without_attempts_is_refused():
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_breaker_opens_at_the_threshold_and_lets_one_probe_through_after_cooldown():
    breaker = CircuitBreaker(3, timedelta(minutes=10))
    for minute in range(3):
        assert breaker.allow(T0 + timedelta(minutes=minute))
        breaker.record_failure(T0 + timedelta(minutes=minute))
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow(T0 + timedelta(minutes=11))
    assert breaker.allow(T0 + timedelta(minutes=12))
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow(T0 + timedelta(minutes=12))  # one probe at a time
    breaker.record_failure(T0 + timedelta(minutes=12))
    assert breaker.state is BreakerState.OPEN
    assert breaker.allow(T0 + timedelta(minutes=22))
    breaker.record_success()
    assert (breaker.state, breaker.consecutive_failures) == (BreakerState.CLOSED, 0)


def test_a_success_resets_the_consecutive_failure_count():
    breaker = CircuitBreaker(2, timedelta(minutes=1))
    breaker.record_failure(T0)
    breaker.record_success()
    breaker.record_failure(T0)
    assert breaker.state is BreakerState.CLOSED


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1)))
def test_interval_start_is_the_aligned_boundary_at_or_before_the_moment(moment: datetime):
    moment = moment.replace(tzinfo=UTC)
    start = interval_start(moment, timedelta(minutes=15))
    assert start <= moment < start + timedelta(minutes=15)
    assert start.minute % 15 == 0 and start.second == 0 and start.microsecond == 0


def test_poll_groups_need_an_interval_that_divides_a_day():
    with pytest.raises(ValueError):
        PollGroup("odd", frozenset({Quantity.VOLTAGE_V}), timedelta(minutes=7))


def test_modbus_exceptions_for_bad_requests_are_not_retried():
    assert not PollFailure(FailureReason.MODBUS_EXCEPTION, exception_code=2).retryable
    assert PollFailure(FailureReason.MODBUS_EXCEPTION, exception_code=6).retryable
    assert PollFailure(FailureReason.TIMEOUT).retryable


def test_targets_are_built_from_registry_values():
    tcp = target_from_registry(
        meter_id=4,
        protocol="modbus_tcp",
        modbus_profile="dds238-zn",
        modbus_unit=3,
        modbus_host="10.0.0.5",
    )
    assert tcp.transport == TcpTransport("10.0.0.5", 502)
    rtu = target_from_registry(
        meter_id=5,
        protocol="modbus_rtu",
        modbus_profile="eastron-sdm120-prepaid",
        modbus_unit=7,
        rtu_port="/dev/ttyUSB0",
        rtu_baud=2400,
        rtu_parity="e",
    )
    assert rtu.transport == RtuTransport("/dev/ttyUSB0", 2400, "E", 1)
    assert rtu.channel == "rtu:/dev/ttyUSB0"


@pytest.mark.parametrize(
    "values",
    [
        {"protocol": "mqtt"},
        {"protocol": "modbus_tcp"},
        {"protocol": "modbus_rtu"},
        {"protocol": "modbus_tcp", "modbus_host": "h", "modbus_unit": 0},
        {"protocol": "modbus_tcp", "modbus_host": "h", "modbus_unit": None},
        {"protocol": "modbus_tcp", "modbus_host": "h", "modbus_profile": "no-such-meter"},
        {"protocol": "modbus_tcp", "modbus_host": "h", "modbus_profile": None},
        {"protocol": "modbus_rtu", "rtu_port": "/dev/x", "rtu_baud": 1234},
        {"protocol": "modbus_rtu", "rtu_port": "/dev/x", "rtu_parity": "X"},
        {"protocol": "modbus_tcp", "modbus_host": "h", "modbus_port": 70000},
    ],
)
def test_invalid_registry_values_raise_a_target_error_naming_the_meter(values: dict):
    arguments = {"meter_id": 1, "modbus_profile": "dds238-zn", "modbus_unit": 1, **values}
    with pytest.raises(TargetError, match=r"^meter 1: "):
        target_from_registry(**arguments)


def test_registry_rows_become_targets_and_bad_rows_are_reported_not_fatal():
    rows = [
        {
            "id": 1,
            "protocol": "modbus_tcp",
            "modbus_profile": "dds238-zn",
            "modbus_unit": 1,
            "modbus_host": "gw1",
        },
        {"id": 2, "protocol": "mqtt"},
        {"id": 3, "protocol": "modbus_rtu", "modbus_profile": "dds238-zn", "modbus_unit": 2},
    ]
    targets, problems = targets_from_registry(rows)
    assert [t.meter_id for t in targets] == [1]
    assert [meter for meter, _ in problems] == [3]


def test_a_lease_is_exclusive_until_it_expires_and_renewable_by_its_owner(
    session_factory: sessionmaker[Session],
):
    gateway = channel_resource("tcp:10.0.0.1:502")
    ttl = timedelta(seconds=30)
    with session_factory() as session, session.begin():
        assert claim_leases(session, [gateway], "a", T0, ttl) == {gateway}
    with session_factory() as session, session.begin():
        assert claim_leases(session, [gateway], "b", T0 + timedelta(seconds=10), ttl) == set()
        assert claim_leases(session, [gateway], "a", T0 + timedelta(seconds=20), ttl) == {gateway}
    with session_factory() as session, session.begin():
        # a renewed until T0+50 s: still a's at T0+40 s, b's once it lapsed.
        assert claim_leases(session, [gateway], "b", T0 + timedelta(seconds=40), ttl) == set()
        assert claim_leases(session, [gateway], "b", T0 + timedelta(seconds=50), ttl) == {gateway}
        assert lease_holders(session, [gateway], T0 + timedelta(seconds=51)) == {gateway: "b"}


def test_releasing_leaves_other_owners_leases_alone(session_factory: sessionmaker[Session]):
    one, two = meter_resource(1), meter_resource(2)
    ttl = timedelta(seconds=30)
    with session_factory() as session, session.begin():
        assert claim_leases(session, [one], "a", T0, ttl) == {one}
        assert claim_leases(session, [one, two], "b", T0, ttl) == {two}
        release_leases(session, [one, two], "a")
    with session_factory() as session:
        assert lease_holders(session, [one, two], T0) == {two: "b"}
