from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session, sessionmaker

from gridvend.audit import AuditLog, verify_chain


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
