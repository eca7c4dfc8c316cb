from datetime import UTC, timedelta, timezone
from decimal import Decimal

import pytest

from protocols.mqtt import MeterChannel, PayloadError, TopicError, TopicScheme, parse_telemetry
from protocols.quantities import Quantity


def test_telemetry_values_are_parsed_as_exact_decimals() -> None:
    report = parse_telemetry(
        b'{"v":1,"seq":7,"ts":"2026-01-01T00:15:00Z","values":{"energy_import_kwh":1234.567}}'
    )
    assert report.values[Quantity.ENERGY_IMPORT_KWH] == Decimal("1234.567")
    assert parse_telemetry(report.to_bytes()) == report


def test_telemetry_time_keeps_its_offset_in_a_standard_library_zone() -> None:
    report = parse_telemetry(
        b'{"v":1,"seq":7,"ts":"2026-01-01T02:15:00+02:00","values":{"voltage_v":"230.1"}}'
    )
    assert report.ts.tzinfo == timezone(timedelta(hours=2))
    assert report.ts.isoformat() == "2026-01-01T02:15:00+02:00"
    assert report.ts.astimezone(UTC).isoformat() == "2026-01-01T00:15:00+00:00"
    assert b'"ts":"2026-01-01T02:15:00+02:00"' in report.to_bytes()
    utc = parse_telemetry(
        b'{"v":1,"seq":7,"ts":"2026-01-01T00:15:00Z","values":{"voltage_v":"230.1"}}'
    )
    assert utc.ts.tzinfo is UTC


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"v":1,"seq":1,"ts":"2026-01-01T00:00:00","values":{"voltage_v":1}}', "ts"),
        (b'{"v":1,"seq":1,"ts":"2026-01-01T00:00:00Z","values":{"volts":1}}', "values"),
        (b'{"v":1,"seq":1,"ts":"2026-01-01T00:00:00Z","values":{}}', "values"),
        (b'{"v":1,"seq":1,"ts":"2026-01-01T00:00:00Z","values":{"voltage_v":"NaN"}}', "values"),
        (b'{"v":2,"seq":1,"ts":"2026-01-01T00:00:00Z","values":{"voltage_v":1}}', "v"),
    ],
)
def test_malformed_telemetry_is_refused_with_its_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        parse_telemetry(payload)


def test_topic_scheme_round_trips_meter_topics_under_a_prefix() -> None:
    scheme = TopicScheme(prefix="test-1/")
    topic = scheme.meter_topic("SIM-0001", MeterChannel.TELEMETRY)
    assert topic == "test-1/ami/v1/meters/SIM-0001/telemetry"
    assert scheme.parse_meter_topic(topic) == ("SIM-0001", MeterChannel.TELEMETRY)


@pytest.mark.parametrize(
    "topic",
    ["ami/v1/meters/a/b/telemetry", "ami/v1/meters/m1/unknown", "other/m1/telemetry"],
)
def test_foreign_topics_are_refused(topic: str) -> None:
    with pytest.raises(TopicError):
        TopicScheme().parse_meter_topic(topic)


def test_meter_ids_with_wildcards_are_refused() -> None:
    with pytest.raises(TopicError):
        TopicScheme().meter_topic("m+1", MeterChannel.TELEMETRY)
