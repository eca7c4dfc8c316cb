"""Properties of the CSV reader and the in-file duplicate rule (no database needed)."""

from __future__ import annotations

import csv
import io
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from headend.bulk_import import _flag_duplicates_in_file, _validate, read_rows

# Cell text as spreadsheets export it: any printable text, commas, quotes and newlines.
cells = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00")
    | st.sampled_from([",", '"', "\n", " "]),
    max_size=20,
)
serials = st.text(alphabet="ABC123-", min_size=1, max_size=4)


@given(st.lists(st.tuples(cells, cells), max_size=15))
def test_reading_a_written_csv_gives_back_every_non_empty_cell(rows: list[tuple[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["serial", "location"])
    writer.writerows(rows)
    parsed = read_rows(buffer.getvalue().encode())
    expected = [
        {k: v.strip() for k, v in zip(("serial", "location"), row, strict=True) if v.strip()}
        for row in rows
        if any(cell.strip() for cell in row)
    ]
    assert [cells for _, cells in parsed] == expected
    numbers = [number for number, _ in parsed]
    assert numbers == sorted(set(numbers))
    assert all(number >= 2 for number in numbers)


@given(st.lists(serials, min_size=1, max_size=30))
def test_exactly_the_rows_sharing_a_serial_are_refused(values: list[str]) -> None:
    rows = [_validate(number, {"serial": serial}) for number, serial in enumerate(values, 2)]
    _flag_duplicates_in_file(rows)
    counts = Counter(values)
    for row in rows:
        assert bool(row.reasons) == (counts[row.serial] > 1)
        if row.reasons:
            others = {r.row for r in rows if r.serial == row.serial and r is not row}
            listed = row.reasons[0].rsplit("row ", 1)[1].rstrip(")").split(", ")
            assert {int(n) for n in listed} == others
