from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditEntry, AuditLog, verify_chain


def _append(session_factory: sessionmaker[Session], count: int) -> None:
    audit = AuditLog()
    for n in range(count):
        with session_factory() as session, session.begin():
            audit.record(
                session, actor="clerk.one", action="vend", subject=f"meter:{n}", detail={"n": n}
            )


def test_an_untouched_chain_verifies(session_factory: sessionmaker[Session]) -> None:
    _append(session_factory, 5)
    with session_factory() as session:
        report = verify_chain(session)
    assert report.intact
    assert report.entries == 5


@pytest.mark.parametrize("statement", ["UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"])
def test_the_database_refuses_to_change_or_remove_entries(
    session_factory: sessionmaker[Session], statement: str
) -> None:
    _append(session_factory, 1)
    with pytest.raises(DatabaseError, match="append-only"), session_factory() as session:
        session.execute(text(statement))


def test_an_edited_entry_is_found_by_verification(session_factory: sessionmaker[Session]) -> None:
    _append(session_factory, 3)
    with session_factory() as session, session.begin():
        # An intruder with database rights drops the guard and edits the middle entry.
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        else:
            session.execute(text("DROP TRIGGER audit_log_no_update"))
        session.execute(text("UPDATE audit_log SET actor = 'someone' WHERE id = 2"))
    with session_factory() as session:
        report = verify_chain(session)
    assert not report.intact
    assert report.first_broken_id == 2


def _subjects(session_factory: sessionmaker[Session]) -> list[str]:
    with session_factory() as session:
        return list(session.scalars(select(AuditEntry.subject).order_by(AuditEntry.id)))


def test_entries_of_a_rolled_back_transaction_are_not_written(
    session_factory: sessionmaker[Session],
) -> None:
    audit = AuditLog()
    with pytest.raises(RuntimeError), session_factory() as session, session.begin():
        audit.record(session, actor="clerk.one", action="vend", subject="meter:lost")
        raise RuntimeError("the act failed after it was recorded")
    _append(session_factory, 1)
    assert _subjects(session_factory) == ["meter:0"]
    with session_factory() as session:
        assert verify_chain(session).intact


def test_an_entry_recorded_in_a_rolled_back_savepoint_is_dropped_and_the_others_kept(
    session_factory: sessionmaker[Session],
) -> None:
    audit = AuditLog()
    with session_factory() as session, session.begin():
        audit.record(session, actor="a", action="x", subject="before")
        savepoint = session.begin_nested()
        audit.record(session, actor="a", action="x", subject="inside, rolled back")
        savepoint.rollback()
        with session.begin_nested():
            audit.record(session, actor="a", action="x", subject="inside, released")
        audit.record(session, actor="a", action="x", subject="after")
    assert _subjects(session_factory) == ["before", "inside, released", "after"]
    with session_factory() as session:
        report = verify_chain(session)
    assert report.intact
    assert report.entries == 3


def test_entries_are_chained_in_the_order_they_were_recorded_across_transactions(
    session_factory: sessionmaker[Session],
) -> None:
    audit = AuditLog()
    with session_factory() as session, session.begin():
        for n in range(3):
            audit.record(session, actor="a", action="x", subject=f"first:{n}")
    _append(session_factory, 2)
    assert _subjects(session_factory) == ["first:0", "first:1", "first:2", "meter:0", "meter:1"]
    with session_factory() as session:
        assert verify_chain(session).entries == 5


def test_concurrent_transactions_all_append_to_one_unbroken_chain(
    session_factory: sessionmaker[Session],
) -> None:
    with ThreadPoolExecutor(max_workers=6) as pool:
        for finished in [pool.submit(_append, session_factory, 10) for _ in range(6)]:
            finished.result()  # no append failed on a link another one took
    with session_factory() as session:
        report = verify_chain(session)
    assert report.intact
    assert report.entries == 60
