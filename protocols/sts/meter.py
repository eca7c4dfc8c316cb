"""The meter side: a pure STS decoder state machine.

:func:`process_token` takes a meter's :class:`MeterState`, the typed token text and the
current time, and returns a :class:`TokenResult` with the standard's status and the new
state (the old state is returned unchanged when a token is refused). Nothing here reads a
clock or does I/O; :class:`MeterState` is plain data with :meth:`MeterState.to_dict` /
:meth:`MeterState.from_dict` so a simulated meter can persist it.

Validation order (reference section 9): format, class, decrypt, CRC, subclass, range,
manufacturer code / DDTK, then for tokens with a TID: key expiry, used, old, overflow.
Key change sections are buffered until the set is complete (in any order), then the key
type rule is checked and the new key installed; with the rollover bit the TID memory is
cleared.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from protocols.sts.errors import (
    CrcError,
    FieldRangeError,
    KeyFormatError,
    MeterStateError,
    StsError,
    TokenFormatError,
    UnknownSubclassError,
)
from protocols.sts.fields import key_expired
from protocols.sts.keys import (
    DecoderKey,
    EncryptionAlgorithm,
    KeyType,
    check_key_expiry_number,
    check_key_revision,
    check_supply_group_code,
    check_tariff_index,
)
from protocols.sts.tokens import (
    CLEAR_ALL_REGISTERS,
    ClearCreditToken,
    ClearTamperToken,
    CreditToken,
    CurrencyCreditToken,
    KeyChange1Token,
    KeyChange2Token,
    KeyChange3Token,
    KeyChange4Token,
    MeterTestToken,
    SetMaximumPowerLimitToken,
    SetPhaseUnbalanceLimitToken,
    SetTariffRateToken,
    SetWaterMeterFactorToken,
    TidToken,
    Token,
    TokenClass,
    decrypt_token,
    parse_block,
)


class TokenStatus(enum.StrEnum):
    """The meter's answer to a token (names as in the standard and meter manuals)."""

    ACCEPT = "Accept"
    FIRST_KCT = "1stKCT"
    SECOND_KCT = "2ndKCT"
    # MISTY1 (EA11) key changes have four sections; these two extend the standard's list.
    THIRD_KCT = "3rdKCT"
    FOURTH_KCT = "4thKCT"
    FORMAT_ERROR = "Format error"
    CRC_ERROR = "CRC error"
    FUNCTION_ERROR = "Function error"
    RANGE_ERROR = "Range error"
    KEY_TYPE_ERROR = "Key type error"
    DDTK_ERROR = "DDTK error"
    MFR_CODE_ERROR = "Mfr code error"
    KEY_EXPIRED = "Key expired error"
    USED = "Used error"
    OLD = "Old error"
    OVERFLOW = "Overflow error"

    @property
    def accepted(self) -> bool:
        """True for Accept and for a buffered key change section."""
        return self in _ACCEPTED


_ACCEPTED = frozenset(
    {
        TokenStatus.ACCEPT,
        TokenStatus.FIRST_KCT,
        TokenStatus.SECOND_KCT,
        TokenStatus.THIRD_KCT,
        TokenStatus.FOURTH_KCT,
    }
)
_KCT_STATUS = {
    3: TokenStatus.FIRST_KCT,
    4: TokenStatus.SECOND_KCT,
    8: TokenStatus.THIRD_KCT,
    9: TokenStatus.FOURTH_KCT,
}

REGISTER_COUNT = 8  # credit registers 0..7: unit credit 0..3, currency credit 4..7
DEFAULT_CREDIT_MAX = 0xFFFF_FFFF  # a 32-bit credit register
DEFAULT_TID_MEMORY_SIZE = 20  # as one vendor firmware; the standard's minimum is unknown
DEFAULT_KCT_TIMEOUT_S = 600


@dataclass(frozen=True, slots=True)
class MeterState:
    """Everything an STS meter remembers, as plain serializable data.

    Credit registers are in base units (index = credit subclass: 0 electricity in 0.1 kWh,
    1 water and 2 gas in 0.1 m3, 3 time, 4..7 currency in 0.00001 units).
    ``tid_memory`` is sorted ascending and may hold repeats (a pre-filled memory).
    ``pending_sections`` holds the plaintext blocks of buffered key change sections.
    """

    decoder_key_hex: str
    algorithm: str = EncryptionAlgorithm.STA.value
    key_type: int = KeyType.DUTK
    key_revision: int = 1
    key_expiry_number: int = 255
    tariff_index: str = "01"
    supply_group_code: str = "000000"
    manufacturer_code: str = "00"
    credit_types: tuple[int, ...] = (0,)
    tid_memory_size: int = DEFAULT_TID_MEMORY_SIZE
    tid_memory: tuple[int, ...] = ()
    credit: tuple[int, ...] = (0,) * REGISTER_COUNT
    credit_max: int = DEFAULT_CREDIT_MAX
    maximum_power_limit_w: int | None = None
    phase_unbalance_limit_w: int | None = None
    tariff_rate: int | None = None
    water_meter_factor: int | None = None
    tamper: bool = False
    pending_sections: tuple[tuple[int, int], ...] = ()
    pending_since: str | None = None
    kct_timeout_s: int = DEFAULT_KCT_TIMEOUT_S

    def __post_init__(self) -> None:
        try:
            self.decoder_key  # noqa: B018 - validates the hex and its length
            check_key_revision(self.key_revision)
            check_key_expiry_number(self.key_expiry_number)
            check_tariff_index(self.tariff_index)
            check_supply_group_code(self.supply_group_code)
            KeyType(self.key_type)
        except (StsError, ValueError) as exc:
            raise MeterStateError(f"invalid meter state: {exc}") from None
        if len(self.manufacturer_code) not in (2, 4) or not self.manufacturer_code.isdigit():
            raise MeterStateError(
                f"meter manufacturer code must have 2 or 4 digits, got {self.manufacturer_code!r}"
            )
        if self.tid_memory_size < 1 or len(self.tid_memory) > self.tid_memory_size:
            raise MeterStateError("TID memory holds more TIDs than its size")
        if list(self.tid_memory) != sorted(self.tid_memory):
            raise MeterStateError("TID memory must be sorted ascending")
        if len(self.credit) != REGISTER_COUNT or any(c < 0 for c in self.credit):
            raise MeterStateError(f"credit must be {REGISTER_COUNT} non-negative registers")
        if any(not 0 <= t < REGISTER_COUNT for t in self.credit_types):
            raise MeterStateError("credit types must be credit subclasses 0..7")

    @property
    def decoder_key(self) -> DecoderKey:
        """The meter's current decoder key."""
        return DecoderKey.from_hex(self.decoder_key_hex, self.algorithm)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["tid_memory"] = list(self.tid_memory)
        data["credit"] = list(self.credit)
        data["credit_types"] = list(self.credit_types)
        data["pending_sections"] = [list(p) for p in self.pending_sections]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeterState:
        """Rebuild a state saved with :meth:`to_dict`.

        Raises:
            MeterStateError: unknown keys or invalid values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise MeterStateError(f"unknown meter state fields: {sorted(unknown)}")
        values = dict(data)
        for name in ("tid_memory", "credit", "credit_types"):
            if name in values:
                values[name] = tuple(values[name])
        if "pending_sections" in values:
            values["pending_sections"] = tuple(
                (int(s), int(b)) for s, b in values["pending_sections"]
            )
        try:
            return cls(**values)
        except TypeError as exc:
            raise MeterStateError(f"invalid meter state: {exc}") from None


def new_meter_state(
    decoder_key: DecoderKey,
    *,
    key_type: KeyType = KeyType.DUTK,
    key_revision: int = 1,
    key_expiry_number: int = 255,
    tariff_index: str = "01",
    supply_group_code: str = "000000",
    manufacturer_code: str = "00",
    credit_types: tuple[int, ...] = (0,),
    tid_memory_size: int = DEFAULT_TID_MEMORY_SIZE,
    manufactured_tid: int | None = None,
) -> MeterState:
    """A fresh meter. ``manufactured_tid`` pre-fills the whole TID memory with that TID, so
    tokens older than manufacture are refused as Old (as the STS wiki describes).

    Raises:
        MeterStateError: an invalid field.
    """
    memory = () if manufactured_tid is None else (manufactured_tid,) * tid_memory_size
    return MeterState(
        decoder_key_hex=decoder_key.hex,
        algorithm=decoder_key.algorithm.value,
        key_type=int(key_type),
        key_revision=key_revision,
        key_expiry_number=key_expiry_number,
        tariff_index=tariff_index,
        supply_group_code=supply_group_code,
        manufacturer_code=manufacturer_code,
        credit_types=credit_types,
        tid_memory_size=tid_memory_size,
        tid_memory=memory,
    )


@dataclass(frozen=True, slots=True)
class TokenResult:
    """The meter's answer: status, the state after the token, the token and a message."""

    status: TokenStatus
    state: MeterState
    token: Token | None = None
    message: str = ""

    @property
    def accepted(self) -> bool:
        return self.status.accepted


def _reject(
    state: MeterState, status: TokenStatus, message: str, token: Token | None = None
) -> TokenResult:
    return TokenResult(status, state, token, message)


def process_token(state: MeterState, text: str, now: datetime) -> TokenResult:
    """Enter a token into a meter and return the meter's status and new state.

    ``now`` is the meter's clock; it only times out a half-entered key change. Never raises
    for a bad token: every refusal is a status, with ``state`` unchanged.
    """
    try:
        token_class, block = decrypt_token(text, state.decoder_key)
    except (TokenFormatError, KeyFormatError) as exc:
        return _reject(state, TokenStatus.FORMAT_ERROR, str(exc))
    if token_class not in (0, 1, 2):
        return _reject(state, TokenStatus.FUNCTION_ERROR, f"token class {token_class} is reserved")
    try:
        token = parse_block(token_class, block)
    except CrcError as exc:
        return _reject(state, TokenStatus.CRC_ERROR, str(exc))
    except UnknownSubclassError as exc:
        return _reject(state, TokenStatus.FUNCTION_ERROR, str(exc))
    except FieldRangeError as exc:
        return _reject(state, TokenStatus.RANGE_ERROR, str(exc))

    if isinstance(token, MeterTestToken):
        if token.manufacturer_code != int(state.manufacturer_code):
            return _reject(
                state,
                TokenStatus.MFR_CODE_ERROR,
                f"token is for manufacturer {token.manufacturer_code}, this meter is "
                f"{state.manufacturer_code}",
                token,
            )
        return TokenResult(TokenStatus.ACCEPT, state, token, "meter test/display requested")
    if isinstance(token, KeyChange1Token | KeyChange2Token | KeyChange3Token | KeyChange4Token):
        return _key_change_section(state, token, block, now)
    return _tid_token(state, token)


def _tid_token(state: MeterState, token: TidToken) -> TokenResult:
    if isinstance(token, CreditToken | CurrencyCreditToken):
        if token.subclass not in state.credit_types:
            return _reject(
                state,
                TokenStatus.FUNCTION_ERROR,
                f"this meter does not take credit of subclass {token.subclass}",
                token,
            )
        if state.key_type == KeyType.DDTK:
            return _reject(
                state,
                TokenStatus.DDTK_ERROR,
                "this meter holds a default key (DDTK) and refuses credit until it gets its "
                "own key by key change",
                token,
            )
    if isinstance(token, ClearCreditToken) and not (
        token.register < REGISTER_COUNT or token.register == CLEAR_ALL_REGISTERS
    ):
        return _reject(
            state, TokenStatus.RANGE_ERROR, f"no credit register {token.register}", token
        )
    if key_expired(token.tid, state.key_expiry_number):
        return _reject(
            state,
            TokenStatus.KEY_EXPIRED,
            f"the meter's key expired (KEN {state.key_expiry_number}); a key change is needed",
            token,
        )
    memory = state.tid_memory
    if token.tid in memory:
        return _reject(state, TokenStatus.USED, "this token was already entered", token)
    if len(memory) >= state.tid_memory_size and token.tid < memory[0]:
        return _reject(
            state,
            TokenStatus.OLD,
            "this token is older than every token the meter remembers",
            token,
        )
    credit = list(state.credit)
    changes: dict[str, Any] = {}
    if isinstance(token, CreditToken | CurrencyCreditToken):
        sign = -1 if isinstance(token, CurrencyCreditToken) and token.negative else 1
        new_value = credit[token.subclass] + sign * token.amount
        if not 0 <= new_value <= state.credit_max:
            return _reject(
                state,
                TokenStatus.OVERFLOW,
                f"credit register {token.subclass} would leave 0..{state.credit_max} "
                f"(would be {new_value})",
                token,
            )
        credit[token.subclass] = new_value
    elif isinstance(token, ClearCreditToken):
        for register in range(REGISTER_COUNT):
            if token.register in (register, CLEAR_ALL_REGISTERS):
                credit[register] = 0
    elif isinstance(token, SetMaximumPowerLimitToken):
        changes["maximum_power_limit_w"] = token.watts
    elif isinstance(token, SetPhaseUnbalanceLimitToken):
        changes["phase_unbalance_limit_w"] = token.watts
    elif isinstance(token, SetTariffRateToken):
        changes["tariff_rate"] = token.rate
    elif isinstance(token, SetWaterMeterFactorToken):
        changes["water_meter_factor"] = token.factor
    elif isinstance(token, ClearTamperToken):
        changes["tamper"] = False
    # Remember the TID; a full memory forgets its smallest (oldest) TID.
    stored = sorted((*memory, token.tid))
    if len(stored) > state.tid_memory_size:
        stored = stored[1:]
    new_state = dataclasses.replace(
        state, credit=tuple(credit), tid_memory=tuple(stored), **changes
    )
    return TokenResult(TokenStatus.ACCEPT, new_state, token, "token accepted")


def _key_change_section(
    state: MeterState,
    token: KeyChange1Token | KeyChange2Token | KeyChange3Token | KeyChange4Token,
    block: int,
    now: datetime,
) -> TokenResult:
    wide = len(state.decoder_key.key) == 16
    needed = {3, 4, 8, 9} if wide else {3, 4}
    if token.subclass not in needed:
        return _reject(
            state,
            TokenStatus.FUNCTION_ERROR,
            "3rd/4th key change sections are only for 128-bit (MISTY1) keys",
            token,
        )
    pending = dict(state.pending_sections)
    if state.pending_since is not None:
        started = datetime.fromisoformat(state.pending_since)
        if now - started > timedelta(seconds=state.kct_timeout_s) or now < started:
            pending = {}  # a half-entered key change times out
    since = now.isoformat() if not pending else state.pending_since
    pending[token.subclass] = block
    if set(pending) != needed:
        new_state = dataclasses.replace(
            state, pending_sections=tuple(sorted(pending.items())), pending_since=since
        )
        return TokenResult(
            _KCT_STATUS[token.subclass], new_state, token, "key change section stored"
        )
    return _install_key(state, pending, token)


def _install_key(state: MeterState, pending: dict[int, int], last: Token) -> TokenResult:
    cleared = dataclasses.replace(state, pending_sections=(), pending_since=None)
    sections = {
        sub: parse_block(TokenClass.METER_SPECIFIC, block) for sub, block in pending.items()
    }
    first, second = sections[3], sections[4]
    assert isinstance(first, KeyChange1Token) and isinstance(second, KeyChange2Token)
    if first.key_type == KeyType.DITK and state.key_type != KeyType.DITK:
        return _reject(
            cleared,
            TokenStatus.KEY_TYPE_ERROR,
            "a meter can only be given an initialisation key (DITK) while it holds one",
            last,
        )
    supply_group_code = state.supply_group_code
    if 8 in sections:
        third, fourth = sections[8], sections[9]
        assert isinstance(third, KeyChange3Token) and isinstance(fourth, KeyChange4Token)
        sgc = (fourth.sgc_high << 12) | third.sgc_low
        if sgc > 999_999:
            return _reject(
                cleared, TokenStatus.RANGE_ERROR, f"supply group code {sgc} > 999999", last
            )
        supply_group_code = f"{sgc:06d}"
        key = (first.key_bits << 96) | (third.key_bits << 64) | (fourth.key_bits << 32)
        key |= second.key_bits
        key_hex = f"{key:032x}"
    else:
        key_hex = f"{(first.key_bits << 32) | second.key_bits:016x}"
    new_state = dataclasses.replace(
        cleared,
        decoder_key_hex=key_hex,
        key_type=int(first.key_type),
        key_revision=first.key_revision,
        key_expiry_number=(first.ken_high << 4) | second.ken_low,
        tariff_index=f"{second.tariff_index:02d}",
        supply_group_code=supply_group_code,
        tid_memory=() if first.rollover else state.tid_memory,
    )
    message = "new key installed" + (", TID memory cleared (rollover)" if first.rollover else "")
    return TokenResult(TokenStatus.ACCEPT, new_state, last, message)


class MeterDecoder:
    """A mutable holder around :func:`process_token`, for simulators.

    ``decoder.enter(text, now)`` processes a token and keeps the new state in
    ``decoder.state``.
    """

    def __init__(self, state: MeterState) -> None:
        self.state = state

    def enter(self, text: str, now: datetime) -> TokenResult:
        """Process one token; see :func:`process_token`."""
        result = process_token(self.state, text, now)
        self.state = result.state
        return result
