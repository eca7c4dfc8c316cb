"""vending.driver_statements: the same values in and out as Connection.execute, on the
session's transaction, with SQLAlchemy's exception classes."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, cast

import pytest
from sqlalchemy import Engine, Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import in_transaction
from vending.driver_statements import DriverStatement
from vending.models import Account, Customer, TariffRecord

_accounts = cast(Table, Account.__table__)
_customers = cast(Table, Customer.__table__)
_NOW = datetime(2026, 12, 3, 9, 30, 15, 123456, tzinfo=UTC)


def _account_values(customer_id: int, number: str) -> dict[str, Any]:
    return {
        "account_number": number,
        "customer_id": customer_id,
        "currency": "ZAR",
        "tariff_code": "T1",
        "capacity_kva": Decimal("12.5"),
        "free_units_eligible": False,
        "debt_minor": 1234,
        "carry_over_minor": 7,
        "month_to_date_kwh": Decimal("71.2"),
        "last_purchase_at": _NOW,
        "fixed_charged_through": date(2026, 12, 2),
        "debt_recovery": {"percent_of_purchase": "25", "allow_whole_purchase": False},
        "status": "active",
        "created_at": _NOW,
    }


_INSERT_ACCOUNT = DriverStatement(
    insert(_accounts).returning(_accounts.c.id),
    columns=list(_account_values(0, "").keys()),
)
_ACCOUNT_BY_NUMBER = DriverStatement(
    select(_accounts).where(_accounts.c.account_number == bindparam("number"))
)


@pytest.fixture
def customer_id(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as session, session.begin():
        session.add(
            TariffRecord(code="T1", name="tariff", currency="ZAR", timezone="UTC", created_at=_NOW)
        )
        customer = Customer(name="A Customer", category="residential", created_at=_NOW)
        session.add(customer)
        session.flush()
        return customer.id


def test_values_go_in_and_come_back_as_through_sqlalchemy(
    session_factory: sessionmaker[Session], customer_id: int
) -> None:
    values = _account_values(customer_id, "A-1")
    with session_factory() as session, session.begin():
        account_id = _INSERT_ACCOUNT.scalar(session, values)
    with session_factory() as session:
        through_sqlalchemy = session.connection().execute(
            select(_accounts).where(_accounts.c.id == account_id)
        )
        expected = tuple(through_sqlalchemy.one())
        assert _ACCOUNT_BY_NUMBER.first(session, {"number": "A-1"}) == expected
    assert expected == (account_id, *values.values())


def test_an_update_reports_the_rows_it_changed_and_returning_gives_the_new_values(
    session_factory: sessionmaker[Session], customer_id: int
) -> None:
    add_debt = DriverStatement(
        update(_accounts)
        .where(_accounts.c.account_number == bindparam("number"))
        .values(debt_minor=_accounts.c.debt_minor + bindparam("more"))
        .returning(_accounts.c.debt_minor, _accounts.c.month_to_date_kwh)
    )
    set_status = DriverStatement(
        update(_accounts)
        .where(_accounts.c.account_number == bindparam("number"))
        .values(status=bindparam("new_status"))
    )
    with session_factory() as session, session.begin():
        _INSERT_ACCOUNT.execute(session, _account_values(customer_id, "A-1"))
        assert add_debt.rows(session, {"number": "A-1", "more": 100}) == [(1334, Decimal("71.2"))]
        assert add_debt.rows(session, {"number": "nobody", "more": 100}) == []
        assert set_status.execute(session, {"number": "A-1", "new_status": "closed"}) == 1
        assert set_status.execute(session, {"number": "nobody", "new_status": "closed"}) == 0


def test_a_constraint_violation_is_sqlalchemys_integrity_error_and_the_rest_rolls_back(
    session_factory: sessionmaker[Session], customer_id: int
) -> None:
    with session_factory() as session, session.begin():
        _INSERT_ACCOUNT.execute(session, _account_values(customer_id, "A-1"))
    with pytest.raises(IntegrityError), session_factory() as session, session.begin():
        _INSERT_ACCOUNT.execute(session, _account_values(customer_id, "A-2"))
        _INSERT_ACCOUNT.execute(session, _account_values(customer_id, "A-1"))  # unique number
    with session_factory() as session:
        assert _ACCOUNT_BY_NUMBER.first(session, {"number": "A-2"}) is None


def test_the_statement_runs_in_the_sessions_transaction(
    session_factory: sessionmaker[Session], customer_id: int
) -> None:
    with session_factory() as session:
        session.begin()
        _INSERT_ACCOUNT.execute(session, _account_values(customer_id, "A-1"))
        assert _ACCOUNT_BY_NUMBER.first(session, {"number": "A-1"}) is not None
        session.rollback()
        assert _ACCOUNT_BY_NUMBER.first(session, {"number": "A-1"}) is None


def test_a_missing_parameter_is_refused_before_anything_runs(
    session_factory: sessionmaker[Session], customer_id: int
) -> None:
    values = _account_values(customer_id, "A-1")
    del values["status"]
    with session_factory() as session, session.begin():
        with pytest.raises(KeyError, match="status"):
            _INSERT_ACCOUNT.execute(session, values)
        assert _ACCOUNT_BY_NUMBER.first(session, {"number": "A-1"}) is None


def test_columns_left_to_python_side_defaults_are_refused(
    session_factory: sessionmaker[Session], customer_id: int
) -> None:
    keys = [k for k in _account_values(customer_id, "A-1") if k != "debt_minor"]
    statement = DriverStatement(insert(_accounts), columns=keys)  # debt_minor: default=0
    with session_factory() as session, pytest.raises(ValueError, match="defaults"):
        statement.execute(session, {})


def test_on_a_connection_without_a_transaction_nothing_is_left_open(
    engine: Engine, session_factory: sessionmaker[Session], customer_id: int
) -> None:
    with session_factory() as session, session.begin():
        _INSERT_ACCOUNT.execute(session, _account_values(customer_id, "A-1"))
    for _ in range(2):  # the second time on the connection the first gave back
        with engine.connect() as connection:
            assert _ACCOUNT_BY_NUMBER.first(connection, {"number": "A-1"}) is not None
        with engine.connect() as connection:
            assert not in_transaction(connection.connection.dbapi_connection)


def test_a_connection_the_pool_replaced_runs_statements_on_its_own_cursor(
    engine: Engine, session_factory: sessionmaker[Session], customer_id: int
) -> None:
    with session_factory() as session, session.begin():
        _INSERT_ACCOUNT.execute(session, _account_values(customer_id, "A-1"))
    with engine.connect() as connection:
        assert _ACCOUNT_BY_NUMBER.first(connection, {"number": "A-1"}) is not None
        connection.invalidate()  # the driver connection, and the cursor kept with it, closed
    with engine.connect() as connection:
        assert _ACCOUNT_BY_NUMBER.first(connection, {"number": "A-1"}) is not None
