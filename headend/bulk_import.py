"""Bulk registration of meters from a CSV file.

The header names the columns, which are the fields of ``MeterRegistration`` (only
``serial`` is required; an empty cell means "not given"). Every row is validated on its
own and reported by its row number as a spreadsheet shows it (the header is row 1).
Valid rows are imported, invalid ones are listed with their reasons, and each row is
all-or-nothing: it is written inside its own savepoint, so a row that fails in the
database leaves no trace while its neighbours stay.

A serial, comm id or meter number that appears on more than one row of the file is
refused on every such row (the file does not say which one is right), and one that is
already in the registry is refused on its row.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from headend.audit import AuditSink
from headend.models import Meter
from headend.registry import MeterRegistration, register_meter

# Rows committed per transaction: each commit makes the rows before it durable, so a
# crash part-way leaves whole rows only and a rerun reports the rest as duplicates.
COMMIT_EVERY = 200
# A lookup of existing identities is done in chunks so the IN lists stay modest.
_LOOKUP_CHUNK = 500
MAX_ROWS = 100_000

COLUMNS = (
    "serial",
    "lifecycle",
    *(n for n in MeterRegistration.model_fields if n not in ("serial", "lifecycle")),
)
_IDENTITIES = ("serial", "comm_id", "meter_number")

Progress = Callable[[int, int], None]


class ImportFileError(ValueError):
    """The file as a whole cannot be imported (not CSV text, bad header, too many rows).
    Nothing is written when this is raised."""


@dataclass(frozen=True, slots=True)
class RowError:
    """Why row ``row`` (1 is the header) was not imported."""

    row: int
    serial: str
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ImportedRow:
    row: int
    serial: str
    meter_id: int | None  # None in a dry run


@dataclass
class ImportReport:
    """The outcome of one file: what was imported and why the rest was not."""

    total_rows: int = 0
    imported: list[ImportedRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_rows": self.total_rows,
            "imported": len(self.imported),
            "rejected": len(self.errors),
            "dry_run": self.dry_run,
            "meters": [
                {"row": r.row, "serial": r.serial, "meter_id": r.meter_id} for r in self.imported
            ],
            "errors": [
                {"row": e.row, "serial": e.serial, "reasons": list(e.reasons)} for e in self.errors
            ],
        }


@dataclass(eq=False)
class _Row:
    row: int
    cells: dict[str, str]
    registration: MeterRegistration | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def serial(self) -> str:
        return self.cells.get("serial", "")


def read_rows(data: bytes | str) -> list[tuple[int, dict[str, str]]]:
    """Parse CSV text into (row number, non-empty cells) pairs, header checked.

    Raises:
        ImportFileError: not UTF-8, no header, no ``serial`` column, an unknown or
            repeated column, or more than ``MAX_ROWS`` rows.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ImportFileError(f"the file is not UTF-8 text: {exc}") from None
    else:
        text = data.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFileError("the file is empty; the first row must name the columns") from None
    except csv.Error as exc:
        raise ImportFileError(f"the header is not valid CSV: {exc}") from None
    names = [name.strip() for name in header]
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        raise ImportFileError(
            f"unknown column(s) {', '.join(map(repr, unknown))}; known: {', '.join(COLUMNS)}"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ImportFileError(f"column(s) named twice: {', '.join(repeated)}")
    if "serial" not in names:
        raise ImportFileError("the header has no 'serial' column")
    rows: list[tuple[int, dict[str, str]]] = []
    number = 1
    try:
        for cells in reader:
            number += 1
            if not any(cell.strip() for cell in cells):
                continue  # blank lines are common at the end of exported files
            if len(rows) >= MAX_ROWS:
                raise ImportFileError(f"more than {MAX_ROWS} rows; split the file")
            row: dict[str, str] = {}
            if len(cells) > len(names):
                row["\x00extra"] = str(len(cells))
            for name, cell in zip(names, cells, strict=False):
                if cell.strip():
                    row[name] = cell.strip()
            rows.append((number, row))
    except csv.Error as exc:
        raise ImportFileError(f"row {number + 1} is not valid CSV: {exc}") from None
    return rows


def _reasons(exc: ValidationError) -> list[str]:
    reasons = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        reasons.append(f"{where}: {message}" if where else message)
    return reasons


def _validate(number: int, cells: dict[str, str]) -> _Row:
    row = _Row(number, cells)
    extra = cells.pop("\x00extra", None)
    if extra is not None:
        row.reasons.append(f"the row has {extra} cells, more than the header names")
        return row
    try:
        row.registration = MeterRegistration.model_validate(cells)
    except ValidationError as exc:
        row.reasons.extend(_reasons(exc))
    return row


def _identity_values(row: _Row) -> dict[str, str]:
    reg = row.registration
    if reg is None:
        return {}
    values = {"serial": reg.serial, "comm_id": reg.comm_id or reg.serial}
    if reg.meter_number:
        values["meter_number"] = reg.meter_number
    return values


def _flag_duplicates_in_file(rows: Sequence[_Row]) -> None:
    seen: dict[tuple[str, str], list[_Row]] = defaultdict(list)
    for row in rows:
        for identity, value in _identity_values(row).items():
            # serial and comm id share one namespace: a comm id defaults to the serial.
            space = "meter_number" if identity == "meter_number" else "id"
            if row not in seen[(space, value)]:
                seen[(space, value)].append(row)
    for (space, value), holders in seen.items():
        if len(holders) < 2:
            continue
        for row in holders:
            others = ", ".join(str(other.row) for other in holders if other is not row)
            what = "meter number" if space == "meter_number" else "serial/comm id"
            reason = f"duplicate {what} {value} in this file (also on row {others})"
            if reason not in row.reasons:
                row.reasons.append(reason)


def _chunks(values: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _flag_duplicates_in_registry(session: Session, rows: Sequence[_Row]) -> None:
    ids = sorted({v for r in rows for k, v in _identity_values(r).items() if k != "meter_number"})
    numbers = sorted(
        {
            r.registration.meter_number
            for r in rows
            if r.registration and r.registration.meter_number
        }
    )
    taken_ids: set[str] = set()
    taken_numbers: set[str] = set()
    for chunk in _chunks(ids, _LOOKUP_CHUNK):
        for serial, comm_id in session.execute(
            select(Meter.serial, Meter.comm_id).where(
                Meter.serial.in_(chunk) | Meter.comm_id.in_(chunk)
            )
        ):
            taken_ids.update((serial, comm_id))
    for chunk in _chunks(numbers, _LOOKUP_CHUNK):
        taken_numbers.update(
            n
            for n in session.scalars(
                select(Meter.meter_number).where(Meter.meter_number.in_(chunk))
            )
            if n
        )
    for row in rows:
        for identity, value in _identity_values(row).items():
            taken = taken_numbers if identity == "meter_number" else taken_ids
            if value in taken:
                row.reasons.append(f"{identity} {value} is already in the registry")


def import_meters(
    session_factory: sessionmaker[Session],
    data: bytes | str,
    *,
    actor: str,
    audit: AuditSink | None = None,
    source: str = "",
    dry_run: bool = False,
    progress: Progress | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ImportReport:
    """Validate every row of a CSV file and register the meters of the valid ones.

    ``progress(done, total)`` is called as rows are processed. With ``dry_run`` nothing
    is written and the report says what would happen. One audit entry
    (``meter.import``) summarises the file.

    Raises:
        ImportFileError: the file as a whole is unusable (nothing is written).
    """
    parsed = read_rows(data)
    rows = [_validate(number, cells) for number, cells in parsed]
    report = ImportReport(total_rows=len(rows), dry_run=dry_run)
    _flag_duplicates_in_file(rows)
    with session_factory() as session:
        _flag_duplicates_in_registry(session, rows)
    done = 0
    if progress:
        progress(done, len(rows))
    for batch in _chunks_of(rows, COMMIT_EVERY):
        with session_factory() as session, session.begin():
            for row in batch:
                _import_row(session, row, report, actor=actor, dry_run=dry_run, at=now())
            done += len(batch)
            if progress:
                progress(done, len(rows))
    if not dry_run and audit is not None:
        with session_factory() as session, session.begin():
            audit.record(
                session,
                actor=actor,
                action="meter.import",
                subject=f"import:{source or 'csv'}",
                detail={
                    "rows": report.total_rows,
                    "imported": len(report.imported),
                    "rejected": len(report.errors),
                },
            )
    report.errors.sort(key=lambda e: e.row)
    return report


def _chunks_of(rows: Sequence[_Row], size: int) -> Iterable[Sequence[_Row]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _import_row(
    session: Session, row: _Row, report: ImportReport, *, actor: str, dry_run: bool, at: datetime
) -> None:
    if row.reasons or row.registration is None:
        report.errors.append(RowError(row.row, row.serial, tuple(row.reasons)))
        return
    if dry_run:
        report.imported.append(ImportedRow(row.row, row.serial, None))
        return
    savepoint = session.begin_nested()
    try:
        # The file's identities were checked against the registry in one go above.
        meter = register_meter(
            session, row.registration, actor=actor, now=at, check_identities=False
        )
        savepoint.commit()
    except IntegrityError:
        # Someone registered the same meter since that check: this row only, and whole.
        savepoint.rollback()
        reason = (
            "another meter with this serial, comm id or meter number was registered "
            "during the import"
        )
        report.errors.append(RowError(row.row, row.serial, (reason,)))
        return
    report.imported.append(ImportedRow(row.row, row.serial, meter.id))


def example_csv() -> str:
    """A small valid file showing the common columns (used by docs and the CLI)."""
    return (
        "serial,meter_number,model,phases,protocol,prepaid_mode,modbus_profile,modbus_host,"
        "modbus_unit,supply_group_code,tariff_index,key_revision,location,latitude,longitude\n"
        "SDM-0001,01234567897,SDM120,1,modbus_tcp,token,eastron-sdm120-prepaid,10.1.0.20,1,"
        "123456,01,1,12 Main Rd Soweto,-26.2485000,27.8540000\n"
        "MQ-0002,,DDS238,1,mqtt,central,,,,,,,Stand 14,,\n"
    )
