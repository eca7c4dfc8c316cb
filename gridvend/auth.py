"""Users, roles and bearer tokens for the API.

Passwords are hashed with argon2id (pwdlib). Access tokens are random, shown once, and
stored only as their SHA-256 digest, so a copy of the database yields no usable token.
"""

import enum
import hashlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar, cast

from fastapi import APIRouter, Depends, Form, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pwdlib import PasswordHash
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    Boolean,
    Connection,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from gridvend.audit import AuditLog
from gridvend.db import READ_ONLY_OPTION
from headend.models import NAMING_CONVENTION, BigId
from headend.sqltypes import UtcDateTime
from vending.driver_statements import DriverStatement

T = TypeVar("T")
TOKEN_LIFETIME = timedelta(hours=12)
# Consecutive wrong passwords before a user's sign-in is locked, and for how long: slows a
# password guesser to a handful of tries per quarter hour without locking anyone out
# for good (an admin's password reset lifts it at once).
MAX_FAILED_SIGN_INS = 5
SIGN_IN_LOCKOUT = timedelta(minutes=15)
_password_hash = PasswordHash.recommended()


class Role(enum.StrEnum):
    ADMIN = "admin"
    SUPERVISOR = "supervisor"
    CLERK = "clerk"
    TECHNICIAN = "technician"
    CHANNEL = "channel"


STAFF_ROLES = (Role.ADMIN, Role.SUPERVISOR, Role.CLERK, Role.TECHNICIAN)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(String(128), default="")
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    failed_sign_ins: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    password_changed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class AccessToken(Base):
    __tablename__ = "access_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the authenticated user and their role."""

    user_id: int
    username: str
    role: Role


class AuthError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


USERNAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{2,63}$"


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Annotated[str, Field(pattern=USERNAME_PATTERN)]
    full_name: Annotated[str, Field(max_length=128)] = ""
    role: Role
    password: Annotated[str, Field(min_length=10, max_length=256)]


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    full_name: str
    role: Role
    active: bool
    created_at: datetime


Password = Annotated[str, Field(min_length=10, max_length=256)]


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: Annotated[str, Field(max_length=256)]
    new_password: Password


class PasswordReset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    new_password: Password


class RoleChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_at: datetime
    role: Role


def create_user(session: Session, new_user: NewUser) -> User:
    """Add a user; raise AuthError("user_exists") if the username is taken."""
    if session.scalar(select(User.id).where(User.username == new_user.username)) is not None:
        raise AuthError("user_exists", f"user {new_user.username!r} already exists")
    user = User(
        username=new_user.username,
        full_name=new_user.full_name,
        role=new_user.role.value,
        password_hash=_password_hash.hash(new_user.password),
        active=True,
        created_at=datetime.now(UTC),
    )
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, username: str, password: str, now: datetime) -> User:
    """Replace a user's password: every token of the user is revoked (signed out
    everywhere) and a sign-in lockout is lifted. AuthError("user_not_found")."""
    user = _user(session, username)
    user.password_hash = _password_hash.hash(password)
    user.password_changed_at = now
    user.failed_sign_ins = 0
    user.locked_until = None
    session.execute(update(AccessToken).where(AccessToken.user_id == user.id).values(revoked=True))
    session.flush()
    return user


def change_own_password(
    session: Session, username: str, change: PasswordChange, now: datetime
) -> TokenOut:
    """A user replaces their own password, proving the current one; their tokens are
    revoked and a new one returned. AuthError ``wrong_password`` or ``password_unchanged``."""
    user = _user(session, username)
    if not _password_hash.verify(change.current_password, user.password_hash):
        raise AuthError("wrong_password", "the current password is wrong")
    if _password_hash.verify(change.new_password, user.password_hash):
        raise AuthError("password_unchanged", "the new password is the current one")
    set_password(session, username, change.new_password, now)
    return _new_token(session, user, now)


def change_role(session: Session, username: str, role: Role) -> tuple[User, Role]:
    """Give a user another role, effective on their next request; returns the user and
    the old role. AuthError ``user_not_found`` or ``last_admin`` (the only active admin
    would be demoted: nobody could manage users any more)."""
    user = _user(session, username)
    old = Role(user.role)
    if old is Role.ADMIN and role is not Role.ADMIN and user.active:
        _keep_an_admin(session, user)
    user.role = role.value
    session.flush()
    return user, old


def set_active(session: Session, username: str, *, active: bool, actor: str) -> tuple[User, bool]:
    """Enable or disable a user; returns the user and whether anything changed.

    Disabling revokes every token of the user, so a token stops working at once and
    stays dead after a later enable (the user signs in again). AuthError
    ``user_not_found``, ``cannot_disable_self`` or ``last_admin``.
    """
    user = _user(session, username)
    if user.active == active:
        return user, False
    if not active:
        if user.username == actor:
            raise AuthError("cannot_disable_self", "an admin cannot disable their own user")
        if Role(user.role) is Role.ADMIN:
            _keep_an_admin(session, user)
        session.execute(
            update(AccessToken).where(AccessToken.user_id == user.id).values(revoked=True)
        )
    user.active = active
    session.flush()
    return user, True


def _user(session: Session, username: str) -> User:
    """The user, locked: two admins changing one user queue instead of losing a change.

    A change to an active admin first locks every active admin, in id order, so two
    changes that each take one admin away queue and the second sees the first's result
    (otherwise each could see the other admin still there and leave none).
    """
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise AuthError("user_not_found", f"no user {username!r}")
    if Role(user.role) is Role.ADMIN and user.active:
        session.scalars(
            select(User.id)
            .where(User.role == Role.ADMIN.value, User.active.is_(True))
            .order_by(User.id)
            .with_for_update()
        ).all()
    session.refresh(user, with_for_update=True)
    return user


def _keep_an_admin(session: Session, leaving: User) -> None:
    others = session.scalar(
        select(func.count())
        .select_from(User)
        .where(User.role == Role.ADMIN.value, User.active.is_(True), User.id != leaving.id)
    )
    if not others:
        raise AuthError("last_admin", f"{leaving.username} is the only active admin")


def issue_token(session: Session, username: str, password: str, now: datetime) -> TokenOut:
    """Check a password and return a new bearer token.

    AuthError ``invalid_credentials`` (the caller records the failure with
    ``record_failed_sign_in`` in a transaction of its own), ``sign_in_locked`` (too many
    failures in a row: refused until ``locked_until``, even with the right password).
    """
    user = session.scalar(select(User).where(User.username == username))
    if user is not None and user.locked_until is not None and now < user.locked_until:
        raise AuthError(
            "sign_in_locked",
            f"too many wrong passwords: sign-in locked until {user.locked_until:%H:%M:%S} UTC",
        )
    # Verify against a dummy hash for unknown users so timing does not reveal them.
    stored = user.password_hash if user else _DUMMY_HASH
    if not _password_hash.verify(password, stored) or user is None or not user.active:
        raise AuthError("invalid_credentials", "wrong username or password, or user disabled")
    if user.failed_sign_ins or user.locked_until is not None:
        user.failed_sign_ins, user.locked_until = 0, None
    return _new_token(session, user, now)


def record_failed_sign_in(session: Session, username: str, now: datetime) -> datetime | None:
    """Count a wrong password for ``username`` (nothing for an unknown name); on the
    ``MAX_FAILED_SIGN_INS``-th in a row, lock sign-in for ``SIGN_IN_LOCKOUT`` and return
    until when."""
    user = session.scalar(select(User).where(User.username == username).with_for_update())
    if user is None:
        return None
    user.failed_sign_ins += 1
    if user.failed_sign_ins < MAX_FAILED_SIGN_INS:
        return None
    user.failed_sign_ins = 0
    user.locked_until = now + SIGN_IN_LOCKOUT
    return user.locked_until


def _new_token(session: Session, user: User, now: datetime) -> TokenOut:
    token = secrets.token_urlsafe(32)
    expires_at = now + TOKEN_LIFETIME
    session.add(
        AccessToken(
            token_sha256=_digest(token),
            user_id=user.id,
            created_at=now,
            expires_at=expires_at,
            revoked=False,
        )
    )
    return TokenOut(access_token=token, expires_at=expires_at, role=Role(user.role))


def principal_for_token(
    connection: Connection | Session, token: str, now: datetime
) -> Principal | None:
    row = _BY_DIGEST.first(connection, {"digest": _digest(token)})
    if row is None:
        return None
    user_id, username, role, active, revoked, expires_at = row
    if revoked or expires_at <= now or not active:
        return None
    return Principal(user_id, username, Role(role))


# Every API request asks this: one lookup on the unique digest's index, columns only (no
# ORM objects), on the driver directly (vending.driver_statements), outside a transaction
# when the caller's connection has none: one statement needs none.
_users = cast(Table, User.__table__)
_tokens = cast(Table, AccessToken.__table__)
_BY_DIGEST = DriverStatement(
    select(
        _users.c.id,
        _users.c.username,
        _users.c.role,
        _users.c.active,
        _tokens.c.revoked,
        _tokens.c.expires_at,
    )
    .join(_tokens, _tokens.c.user_id == _users.c.id)
    .where(_tokens.c.token_sha256 == bindparam("digest"))
)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_DUMMY_HASH = _password_hash.hash(secrets.token_urlsafe(16))


class Auth:
    """Builds FastAPI dependencies that authenticate the caller and check the role."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        bind = session_factory.kw.get("bind")
        # A token check only reads: on SQLite it must not queue for the write lock behind
        # every vend in progress. A plain connection and no transaction: one select needs
        # neither a session nor a BEGIN (psycopg would send one, and the pool a ROLLBACK
        # when the connection goes back: two round trips more, in autocommit neither).
        self._reader: Engine | None = None
        if isinstance(bind, Engine):
            options: dict[str, Any] = {READ_ONLY_OPTION: True}
            if bind.dialect.name == "postgresql":
                options["isolation_level"] = "AUTOCOMMIT"
            self._reader = bind.execution_options(**options)
        self._session_factory = session_factory
        self.bearer = HTTPBearer(auto_error=False)

    def require(self, *roles: Role | str) -> Any:
        """A dependency (``Depends(auth.require(Role.CLERK))``) giving the Principal;
        401 without a valid token, 403 when the role is not one of ``roles``."""
        allowed = frozenset(Role(r) for r in roles)
        bearer = self.bearer

        def dependency(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        ) -> Principal:
            return self.check(_presented(credentials), allowed)

        return Depends(dependency)

    def require_later(self, *roles: Role | str) -> Any:
        """As :meth:`require`, but the dependency gives a :class:`CallerCheck` that the
        route calls first thing in its own worker thread. A sync dependency costs a hop
        to a worker thread of its own for every request; a route that is called many
        times a second (the counter's vend) saves that hop. A request without a bearer
        token is still refused before anything else is read."""
        allowed = frozenset(Role(r) for r in roles)
        bearer = self.bearer

        async def dependency(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        ) -> CallerCheck:
            return CallerCheck(self, _presented(credentials), allowed)

        return Depends(dependency)

    def check(self, token: str, allowed: frozenset[Role]) -> Principal:
        """The caller with this bearer token, read from the database now (so a revoked
        or disabled user's token is refused on its very next request); HTTP 401 or 403."""
        now = datetime.now(UTC)
        if self._reader is not None:
            with self._reader.connect() as connection:
                principal = principal_for_token(connection, token, now)
        else:
            with self._session_factory() as session:
                principal = principal_for_token(session, token, now)
        if principal is None:
            raise _http_error(401, "invalid_token", "the token is unknown, expired or revoked")
        if principal.role not in allowed:
            raise _http_error(
                403,
                "forbidden_role",
                f"role {principal.role.value} may not do this; "
                f"allowed: {', '.join(sorted(r.value for r in allowed))}",
            )
        return principal


@dataclass(frozen=True, slots=True)
class CallerCheck:
    """A presented bearer token, checked when the route calls :meth:`principal`."""

    auth: Auth
    token: str
    allowed: frozenset[Role]

    def principal(self) -> Principal:
        """The caller (HTTP 401 invalid_token or 403 forbidden_role, as ``require``)."""
        return self.auth.check(self.token, self.allowed)


def _presented(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None:
        raise _http_error(401, "not_authenticated", "send Authorization: Bearer <token>")
    return credentials.credentials


def _http_error(status_code: int, code: str, message: str) -> HTTPException:
    headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
    return HTTPException(status_code, detail={"code": code, "message": message}, headers=headers)


_ERROR_STATUS = {
    "user_exists": status.HTTP_409_CONFLICT,
    "user_not_found": status.HTTP_404_NOT_FOUND,
    "last_admin": status.HTTP_409_CONFLICT,
    "cannot_disable_self": status.HTTP_409_CONFLICT,
    "wrong_password": status.HTTP_403_FORBIDDEN,
    "password_unchanged": 422,
}


def make_router(
    session_factory: sessionmaker[Session], auth: Auth, audit: AuditLog | None = None
) -> APIRouter:
    """The sign-in and user management routes; every change to a user is audited
    (``user.create``, ``user.role_change``, ``user.disable``, ``user.enable``,
    ``user.password_reset``, ``user.password_change``, ``user.sign_in_locked``)."""
    router = APIRouter(prefix="/api/auth", tags=["auth"])
    audit_log = audit or AuditLog()

    def db() -> Iterator[Session]:
        with session_factory() as session:
            yield session

    def audited(
        session: Session,
        change: Callable[[], T],
        *,
        actor: str,
        action: str,
        subject: str,
        detail: Callable[[T], dict[str, Any]] = lambda _: {},
    ) -> T:
        """``change()`` and its audit entry in one transaction; a refusal (AuthError)
        answers its HTTP status and stores nothing."""
        try:
            with session.begin():
                result = change()
                audit_log.record(
                    session, actor=actor, action=action, subject=subject, detail=detail(result)
                )
                return result
        except AuthError as exc:
            raise _http_error(_ERROR_STATUS[exc.code], exc.code, str(exc)) from None

    @router.post("/token", response_model=TokenOut)
    def login(
        username: Annotated[str, Form()],
        password: Annotated[str, Form()],
        session: Annotated[Session, Depends(db)],
    ) -> TokenOut:
        """Exchange a username and password (form fields) for a bearer token.

        401 ``invalid_credentials``; after ``MAX_FAILED_SIGN_INS`` wrong passwords in a
        row, 429 ``sign_in_locked`` for ``SIGN_IN_LOCKOUT`` (audited ``user.sign_in_locked``).
        """
        now = datetime.now(UTC)
        try:
            with session.begin():
                return issue_token(session, username, password, now)
        except AuthError as exc:
            if exc.code == "sign_in_locked":
                raise _http_error(status.HTTP_429_TOO_MANY_REQUESTS, exc.code, str(exc)) from None
            with session.begin():
                locked_until = record_failed_sign_in(session, username, now)
                if locked_until is not None:
                    audit_log.record(
                        session,
                        actor=username,
                        action="user.sign_in_locked",
                        subject=f"user:{username}",
                        detail={"until": locked_until.isoformat()},
                    )
            raise _http_error(status.HTTP_401_UNAUTHORIZED, exc.code, str(exc)) from None

    @router.post("/sign-out", status_code=status.HTTP_204_NO_CONTENT)
    def sign_out(
        session: Annotated[Session, Depends(db)],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(auth.bearer)],
        _: Principal = auth.require(*Role),
    ) -> None:
        """Revoke the token this request carries."""
        assert credentials is not None  # auth.require answered 401 otherwise
        with session.begin():
            session.execute(
                update(AccessToken)
                .where(AccessToken.token_sha256 == _digest(credentials.credentials))
                .values(revoked=True)
            )

    @router.post("/password", response_model=TokenOut)
    def change_password(
        body: PasswordChange,
        session: Annotated[Session, Depends(db)],
        principal: Principal = auth.require(*Role),
    ) -> TokenOut:
        """Change your own password (the current one proves it is you). Every token of
        yours is revoked; the answer carries a new one. Audited ``user.password_change``."""
        return audited(
            session,
            lambda: change_own_password(session, principal.username, body, datetime.now(UTC)),
            actor=principal.username,
            action="user.password_change",
            subject=f"user:{principal.username}",
        )

    @router.get("/me")
    def me(principal: Principal = auth.require(*Role)) -> dict[str, Any]:
        return {"username": principal.username, "role": principal.role.value}

    @router.post("/users", response_model=UserOut, status_code=status.HTTP_201_CREATED)
    def add_user(
        body: NewUser,
        session: Annotated[Session, Depends(db)],
        principal: Principal = auth.require(Role.ADMIN),
    ) -> Any:
        return audited(
            session,
            lambda: create_user(session, body),
            actor=principal.username,
            action="user.create",
            subject=f"user:{body.username}",
            detail=lambda user: {"role": user.role},
        )

    @router.get("/users", response_model=list[UserOut])
    def list_users(
        session: Annotated[Session, Depends(db)],
        _: Principal = auth.require(Role.ADMIN),
    ) -> Any:
        return session.scalars(select(User).order_by(User.id)).all()

    @router.put("/users/{username}/role", response_model=UserOut)
    def set_role(
        username: str,
        body: RoleChange,
        session: Annotated[Session, Depends(db)],
        principal: Principal = auth.require(Role.ADMIN),
    ) -> Any:
        """Give the user another role; it applies to their very next request."""
        try:
            with session.begin():
                user, old = change_role(session, username, body.role)
                if old is not body.role:
                    audit_log.record(
                        session,
                        actor=principal.username,
                        action="user.role_change",
                        subject=f"user:{username}",
                        detail={"from": old.value, "to": body.role.value},
                    )
                return user
        except AuthError as exc:
            raise _http_error(_ERROR_STATUS[exc.code], exc.code, str(exc)) from None

    def activation(username: str, session: Session, actor: str, active: bool) -> User:
        try:
            with session.begin():
                user, changed = set_active(session, username, active=active, actor=actor)
                if changed:
                    audit_log.record(
                        session,
                        actor=actor,
                        action="user.enable" if active else "user.disable",
                        subject=f"user:{username}",
                    )
                return user
        except AuthError as exc:
            raise _http_error(_ERROR_STATUS[exc.code], exc.code, str(exc)) from None

    @router.post("/users/{username}/disable", response_model=UserOut)
    def disable_user(
        username: str,
        session: Annotated[Session, Depends(db)],
        principal: Principal = auth.require(Role.ADMIN),
    ) -> Any:
        """Disable the user: their tokens stop working at once and they cannot sign in.
        Disabling a disabled user changes nothing (and is not audited again)."""
        return activation(username, session, principal.username, active=False)

    @router.post("/users/{username}/enable", response_model=UserOut)
    def enable_user(
        username: str,
        session: Annotated[Session, Depends(db)],
        principal: Principal = auth.require(Role.ADMIN),
    ) -> Any:
        """Enable the user again; they sign in anew (their old tokens stay revoked)."""
        return activation(username, session, principal.username, active=True)

    @router.post("/users/{username}/password", response_model=UserOut)
    def reset_password(
        username: str,
        body: PasswordReset,
        session: Annotated[Session, Depends(db)],
        principal: Principal = auth.require(Role.ADMIN),
    ) -> Any:
        """Give the user a new password (they forgot theirs, or it leaked): their tokens
        are revoked and a sign-in lockout lifted; a disabled user stays disabled.
        Audited ``user.password_reset`` (never the password)."""
        return audited(
            session,
            lambda: set_password(session, username, body.new_password, datetime.now(UTC)),
            actor=principal.username,
            action="user.password_reset",
            subject=f"user:{username}",
        )

    return router
