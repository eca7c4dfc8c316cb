from pathlib import Path

import pytest

from protocols.modbus import PROFILES, get_profile

DOC = Path(__file__).resolve().parents[2] / "docs" / "modbus-map.md"


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_the_documented_map_lists_every_register_of_the_profile(name: str) -> None:
    text = DOC.read_text()
    section = text.split(f"### `{name}`", 1)[1].split("### ", 1)[0]
    for reg in get_profile(name).registers:
        row = f"| {reg.block.value} | 0x{reg.address:04X} | {reg.count} | `{reg.point}` |"
        assert row in section, row
