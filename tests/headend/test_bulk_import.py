"""CSV bulk import: per-row validation, duplicates, whole rows only, one audit entry."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditEntry, AuditLog
from headend import bulk_import
from headend.bulk_import import ImportFileError, example_csv, import_meters
from headend.models import Meter, MeterLifecycleChange
from headend.registry import MeterRegistration, register_meter

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
HEADER = "serial,meter_number,protocol,modbus_profile,modbus_host,modbus_unit,tariff_index\n"


def meter_count(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(Meter)) or 0


def serials(session_factory: sessionmaker[Session]) -> list[str]:
    with session_factory() as session:
        return list(session.scalars(select(Meter.serial).order_by(Meter.serial)))


def test_the_example_file_imports_cleanly(session_factory: sessionmaker[Session]) -> None:
    report = import_meters(session_factory, example_csv(), actor="tech")
    assert (report.total_rows, len(report.imported), report.errors) == (2, 2, [])
    assert serials(session_factory) == ["MQ-0002", "SDM-0001"]


def test_valid_rows_are_imported_and_invalid_rows_are_reported_by_row_number(
    session_factory: sessionmaker[Session],
) -> None:
    data = HEADER + (
        "M-1,01234567897,mqtt,,,,01\n"  # row 2: fine
        "M-2,01234567890,mqtt,,,,01\n"  # row 3: bad check digit
        "M-3,,modbus_tcp,eastron-sdm120-prepaid,,1,\n"  # row 4: no host
        "M-4,,mqtt,,,,7x\n"  # row 5: bad tariff index
        "\n"  # row 6: blank, skipped
        "M-5,,modbus_tcp,dds238-zn,10.0.0.5,2,\n"  # row 7: fine
    )
    report = import_meters(session_factory, data, actor="tech")
    assert [(r.row, r.serial) for r in report.imported] == [(2, "M-1"), (7, "M-5")]
    assert [(e.row, e.serial) for e in report.errors] == [(3, "M-2"), (4, "M-3"), (5, "M-4")]
    assert "check digit" in report.errors[0].reasons[0]
    assert report.errors[0].reasons[0].startswith("meter_number:")
    assert "modbus_host" in report.errors[1].reasons[0]
    assert report.errors[2].reasons[0].startswith("tariff_index:")
    assert serials(session_factory) == ["M-1", "M-5"]


def test_every_row_sharing_an_identity_within_the_file_is_refused(
    session_factory: sessionmaker[Session],
) -> None:
    data = HEADER + (
        "M-1,,mqtt,,,,\n"
        "M-2,01234567897,mqtt,,,,\n"
        "M-1,,mqtt,,,,\n"
        "M-3,600727012345678977,mqtt,,,,\n"  # the PAN of row 3's meter number
        "M-4,,mqtt,,,,\n"
    )
    report = import_meters(session_factory, data, actor="tech")
    reasons = {e.row: e.reasons for e in report.errors}
    assert sorted(reasons) == [2, 3, 4, 5]
    assert reasons[2] == ("duplicate serial/comm id M-1 in this file (also on row 4)",)
    assert reasons[3] == ("duplicate meter number 01234567897 in this file (also on row 5)",)
    assert serials(session_factory) == ["M-4"]


def test_a_meter_already_registered_is_refused_on_its_row(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session, session.begin():
        register_meter(session, MeterRegistration(serial="M-1"), actor="tech")
    report = import_meters(session_factory, HEADER + "M-1,,mqtt,,,,\nM-2,,mqtt,,,,\n", actor="t")
    assert [(e.row, e.reasons) for e in report.errors] == [
        (2, ("serial M-1 is already in the registry", "comm_id M-1 is already in the registry"))
    ]
    assert serials(session_factory) == ["M-1", "M-2"]


def test_a_meter_registered_during_the_import_fails_only_its_own_row(
    session_factory: sessionmaker[Session],
) -> None:
    def someone_else_registers_m2(done: int, total: int) -> None:
        if done == 0:
            with session_factory() as session, session.begin():
                register_meter(session, MeterRegistration(serial="M-2"), actor="other")

    report = import_meters(
        session_factory,
        HEADER + "M-1,,mqtt,,,,\nM-2,,mqtt,,,,\nM-3,,mqtt,,,,\n",
        actor="tech",
        progress=someone_else_registers_m2,
    )
    assert [e.row for e in report.errors] == [3]
    assert "registered during the import" in report.errors[0].reasons[0]
    assert serials(session_factory) == ["M-1", "M-2", "M-3"]
    with session_factory() as session:
        # Each imported meter has exactly its registration entry: nothing half-written.
        changes = session.scalars(select(MeterLifecycleChange.changed_by)).all()
        assert sorted(changes) == ["other", "tech", "tech"]


def test_rows_are_committed_in_batches_with_progress(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk_import, "COMMIT_EVERY", 3)
    data = "serial\n" + "".join(f"B-{i:03d}\n" for i in range(7))
    seen: list[tuple[int, int]] = []
    report = import_meters(
        session_factory, data, actor="tech", progress=lambda d, t: seen.append((d, t))
    )
    assert len(report.imported) == 7
    assert seen == [(0, 7), (3, 7), (6, 7), (7, 7)]


def test_a_dry_run_reports_without_writing(session_factory: sessionmaker[Session]) -> None:
    report = import_meters(
        session_factory, HEADER + "M-1,,mqtt,,,,\nM-2,x,mqtt,,,,\n", actor="t", dry_run=True
    )
    assert [(r.row, r.meter_id) for r in report.imported] == [(2, None)]
    assert [e.row for e in report.errors] == [3]
    assert meter_count(session_factory) == 0


def test_one_audit_entry_summarises_the_file(session_factory: sessionmaker[Session]) -> None:
    import_meters(
        session_factory,
        HEADER + "M-1,,mqtt,,,,\nM-2,x,mqtt,,,,\n",
        actor="tech",
        audit=AuditLog(),
        source="batch-7.csv",
    )
    with session_factory() as session:
        entry = session.scalars(select(AuditEntry)).one()
        assert (entry.action, entry.subject, entry.actor) == (
            "meter.import",
            "import:batch-7.csv",
            "tech",
        )
        assert entry.detail == {"rows": 2, "imported": 1, "rejected": 1}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"\xff\xfeserial\n", "not UTF-8"),
        (b"model,phases\nX,1\n", "no 'serial' column"),
        (b"serial,colour\nM-1,grey\n", "unknown column(s) 'colour'"),
        (b"serial,serial\nM-1,M-1\n", "named twice"),
    ],
)
def test_an_unusable_file_is_refused_whole(
    session_factory: sessionmaker[Session], data: bytes, fragment: str
) -> None:
    with pytest.raises(ImportFileError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        import_meters(session_factory, data, actor="tech")
    assert meter_count(session_factory) == 0


def test_a_row_with_more_cells_than_the_header_is_refused(
    session_factory: sessionmaker[Session],
) -> None:
    report = import_meters(session_factory, "serial,model\nM-1,SDM,extra\nM-2,SDM\n", actor="t")
    assert [(e.row, e.reasons) for e in report.errors] == [
        (2, ("the row has 3 cells, more than the header names",))
    ]
    assert serials(session_factory) == ["M-2"]


def test_a_byte_order_mark_and_quoted_cells_are_accepted(
    session_factory: sessionmaker[Session],
) -> None:
    data = '\ufeffserial,location\nM-1,"12 Main Rd, Soweto"\n'.encode()
    report = import_meters(session_factory, data, actor="tech")
    assert report.errors == []
    with session_factory() as session:
        assert session.scalars(select(Meter.location)).one() == "12 Main Rd, Soweto"
