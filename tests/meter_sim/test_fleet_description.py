"""describe_fleet: reproducible meter identities with valid STS meter numbers."""

from __future__ import annotations

import pytest

from meter_sim.fleet import FleetError, describe_fleet, sts_meter_pan
from protocols.sts import parse_meter_number


def test_same_count_and_seed_give_the_same_meters() -> None:
    assert describe_fleet(20, seed=5) == describe_fleet(20, seed=5)
    assert describe_fleet(20, seed=5) != describe_fleet(20, seed=6)


def test_meter_numbers_are_valid_unique_pans_with_iin_600727() -> None:
    configs = describe_fleet(500, seed=3)
    pans = [c.meter_number for c in configs]
    assert len(set(pans)) == 500
    assert len({c.serial for c in configs}) == 500
    for pan in pans:
        parsed = parse_meter_number(pan)
        assert parsed.iin == "600727"
        assert parsed.digits == pan


def test_every_tenth_meter_is_three_phase() -> None:
    configs = describe_fleet(30, seed=1)
    assert [i for i, c in enumerate(configs) if c.phases == 3] == [9, 19, 29]


def test_serial_prefix_is_used() -> None:
    assert describe_fleet(1, seed=1, prefix="LAB")[0].serial.startswith("LAB-")


@pytest.mark.parametrize("kwargs", [{"count": -1}, {"count": 1, "prefix": "a/b"}])
def test_bad_fleet_parameters_are_refused(kwargs: dict[str, object]) -> None:
    args = {"count": 1, "seed": 1, **kwargs}
    with pytest.raises(FleetError):
        describe_fleet(**args)  # type: ignore[arg-type]


def test_sts_meter_pan_matches_the_reference_example() -> None:
    # DRN payload 1212345678 -> 12123456787 (STS reference, section 3.6)
    assert sts_meter_pan(12345678, "12")[6:17] == "12123456787"


def test_a_bigger_fleet_with_the_same_seed_extends_a_smaller_one() -> None:
    assert describe_fleet(10, seed=2)[:4] == describe_fleet(4, seed=2)
