"""Hypothesis strategies for STS token values and keys."""

from __future__ import annotations

from hypothesis import strategies as st

from protocols.sts.fields import AMOUNT_MAX, TID_MAX, decode_currency_amount
from protocols.sts.keys import DecoderKey, EncryptionAlgorithm, KeyType
from protocols.sts.tokens import (
    ClearCreditToken,
    ClearTamperToken,
    CreditToken,
    CreditType,
    CurrencyCreditToken,
    CurrencyType,
    KeyChange1Token,
    KeyChange2Token,
    KeyChange3Token,
    KeyChange4Token,
    MeterTestToken,
    SetMaximumPowerLimitToken,
    SetPhaseUnbalanceLimitToken,
    SetTariffRateToken,
    SetWaterMeterFactorToken,
    Token,
    round_up_amount,
)

tids = st.integers(0, TID_MAX)
rnds = st.integers(0, 15)
exact_amounts = st.integers(0, AMOUNT_MAX).map(round_up_amount)
words16 = st.integers(0, 0xFFFF)
words32 = st.integers(0, 0xFFFF_FFFF)

meter_test_tokens = st.one_of(
    st.builds(MeterTestToken, st.integers(0, (1 << 36) - 1), st.integers(0, 99), st.just(0)),
    st.builds(MeterTestToken, st.integers(0, (1 << 28) - 1), st.integers(0, 9999), st.just(1)),
)

currency_tokens = st.builds(
    CurrencyCreditToken,
    st.sampled_from(CurrencyType),
    tids,
    st.builds(decode_currency_amount, st.integers(0, 31), st.integers(0, 0x3FFF)),
    st.booleans(),
)

encrypted_tokens: st.SearchStrategy[Token] = st.one_of(
    st.builds(CreditToken, st.sampled_from(CreditType), tids, exact_amounts, rnds),
    currency_tokens,
    st.builds(SetMaximumPowerLimitToken, tids, exact_amounts, rnds),
    st.builds(ClearCreditToken, tids, words16, rnds),
    st.builds(SetTariffRateToken, tids, words16, rnds),
    st.builds(ClearTamperToken, tids, rnds),
    st.builds(SetPhaseUnbalanceLimitToken, tids, exact_amounts, rnds),
    st.builds(SetWaterMeterFactorToken, tids, words16, rnds),
    st.builds(
        KeyChange1Token,
        st.integers(0, 15),
        st.integers(1, 9),
        st.booleans(),
        st.sampled_from(KeyType),
        words32,
        st.integers(0, 1),
    ),
    st.builds(KeyChange2Token, st.integers(0, 15), st.integers(0, 99), words32),
    st.builds(KeyChange3Token, st.integers(0, 0xFFF), words32),
    st.builds(KeyChange4Token, st.integers(0, 0xFFF), words32),
)

all_tokens: st.SearchStrategy[Token] = st.one_of(meter_test_tokens, encrypted_tokens)


@st.composite
def decoder_keys(draw: st.DrawFn) -> DecoderKey:
    algorithm = draw(st.sampled_from(EncryptionAlgorithm))
    return DecoderKey(
        draw(st.binary(min_size=algorithm.key_bytes, max_size=algorithm.key_bytes)), algorithm
    )
