"""Request and answer documents of the channel API, with the examples OpenAPI shows."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vending.channels.service import REFERENCE_PATTERN

AMOUNT_PATTERN = r"^[0-9]{1,12}(\.[0-9]{1,4})?$"
Reference = Annotated[
    str, Field(pattern=REFERENCE_PATTERN, description="Unique per channel; 1-64 characters.")
]
Amount = Annotated[
    str, Field(pattern=AMOUNT_PATTERN, description='Major units as text, e.g. "150.00".')
]


class LookupRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"meter_number": "99000000017"}]},
    )

    meter_number: str | None = Field(default=None, max_length=20)
    account_number: str | None = Field(default=None, max_length=20)


class LookupAnswer(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "meter_number": "99000000017",
                    "account_number": "A000000001",
                    "customer_name": "T**** M*****",
                    "prepaid_mode": "token",
                    "currency": "ZAR",
                    "minimum_amount": "5.00",
                    "maximum_amount": "5000.00",
                    "arrears": "120.00",
                }
            ]
        }
    )

    meter_number: str
    account_number: str
    customer_name: str = Field(description="Each word's first letter, the rest starred.")
    prepaid_mode: Literal["token", "central"]
    currency: str
    minimum_amount: str
    maximum_amount: str
    arrears: str
    key_change_pending: bool = Field(
        default=False,
        description="A purchase must acknowledge the meter's pending key change "
        "(key_change_acknowledged) and print its tokens before the credit token.",
    )


class PurchaseRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "reference": "ACME-20261124-000123",
                    "amount": "150.00",
                    "currency": "ZAR",
                    "meter_number": "99000000017",
                }
            ]
        },
    )

    reference: Reference
    amount: Amount
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    meter_number: str | None = Field(default=None, max_length=20)
    account_number: str | None = Field(default=None, max_length=20)
    key_change_acknowledged: bool = Field(
        default=False,
        description="The meter has a pending key change (a purchase was refused with "
        "key_change_required) and the customer's receipt will show its tokens before the "
        "credit token: the purchase then completes the key change.",
    )


class Receipt(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "reference": "ACME-20261124-000123",
                    "status": "completed",
                    "receipt_number": "ch:acme-bank-0000000042",
                    "created_at": "2026-11-24T09:30:12+00:00",
                    "meter_number": "99000000017",
                    "account_number": "A000000001",
                    "customer_name": "T**** M*****",
                    "prepaid_mode": "token",
                    "amount": "150.00",
                    "currency": "ZAR",
                    "units_kwh": "52.3",
                    "token": "5713 4082 7731 9920 4418",
                    "tid": 24563219,
                    "balance": None,
                    "breakdown": {
                        "tendered": "150.00",
                        "debt_recovered": "0.00",
                        "fixed": "0.00",
                        "energy": "130.43",
                        "levies": "0.00",
                        "tax": "19.56",
                        "carry_in": "0.00",
                        "carry_out": "0.01",
                        "units_kwh": "52.3",
                        "lines": [],
                    },
                }
            ]
        }
    )

    reference: str
    status: Literal["completed"]
    receipt_number: str
    created_at: str
    meter_number: str
    account_number: str
    customer_name: str
    prepaid_mode: Literal["token", "central"]
    amount: str
    currency: str
    units_kwh: str
    token: str | None = Field(description="Token meters: 20 digits in groups of four.")
    tid: int | None
    balance: str | None = Field(description="Central-balance meters: the balance after.")
    breakdown: dict[str, Any] = Field(
        description="tendered = debt_recovered + fixed + energy + levies + tax + carry_out "
        "- carry_in; charge lines with their kWh and rates."
    )


class StatusAnswer(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "reference": "ACME-20261124-000123",
                    "status": "completed",
                    "confirmed": True,
                    "receipt_number": "ch:acme-bank-0000000042",
                    "amount": "150.00",
                    "currency": "ZAR",
                    "created_at": "2026-11-24T09:30:12+00:00",
                    "reversed_at": None,
                }
            ]
        }
    )

    reference: str
    status: Literal["unknown", "completed", "reversed"]
    confirmed: bool
    receipt_number: str | None = None
    amount: str | None = None
    currency: str | None = None
    created_at: str | None = None
    reversed_at: str | None = None


class AdviceRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "customer not debited"}]}
    )

    reason: str = Field(default="", max_length=200)


class AdviceAnswer(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "reference": "ACME-20261124-000123",
                    "advice": "reverse",
                    "outcome": "applied",
                    "code": None,
                    "status": "reversed",
                }
            ]
        }
    )

    reference: str
    advice: Literal["confirm", "reverse"]
    outcome: Literal["applied", "pending", "refused"] = Field(
        description="pending: the purchase is not known yet and the advice is kept for it."
    )
    code: str | None = Field(
        description="Why a refused advice was not applied: reversal_window_closed, "
        "purchase_confirmed, token_accepted, reversal_not_latest, purchase_reversed."
    )
    status: Literal["unknown", "completed", "reversed"]
    balance: str | None = None
    negative_balance: bool | None = None


class ReconciliationLine(BaseModel):
    reference: str
    outcome: Literal["matched", "missing_ours", "missing_theirs", "amount_mismatch"]
    their_amount: str | None
    our_amount: str | None
    their_time: str | None
    our_time: str | None


class ReconciliationAnswer(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 7,
                    "business_date": "2026-11-24",
                    "uploaded_at": "2026-11-25T01:00:00+00:00",
                    "file_sha256": "9f2c...",
                    "matched": 998,
                    "missing_ours": 1,
                    "missing_theirs": 0,
                    "amount_mismatch": 1,
                    "items": [
                        {
                            "reference": "ACME-000777",
                            "outcome": "amount_mismatch",
                            "their_amount": "100.00",
                            "our_amount": "10.00",
                            "their_time": "2026-11-24T10:00:00Z",
                            "our_time": "2026-11-24T10:00:01Z",
                        }
                    ],
                }
            ]
        }
    )

    id: int
    business_date: str
    uploaded_at: str
    file_sha256: str
    matched: int
    missing_ours: int = Field(description="In the channel's file, not sold by us.")
    missing_theirs: int = Field(description="Sold by us, not in the channel's file.")
    amount_mismatch: int
    items: list[ReconciliationLine] = Field(description="Every line that is not matched.")


class Refusal(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "code": "reference_conflict",
                    "message": "reference 'ACME-1' was used for another purchase on this channel",
                    "detail": {},
                }
            ]
        }
    )

    code: str
    message: str
    detail: dict[str, Any]


class NewChannel(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "code": "acme-bank",
                    "name": "ACME Bank",
                    "currency": "ZAR",
                    "payment_method": "bank",
                    "min_amount": "5.00",
                    "max_amount": "5000.00",
                    "daily_limit": "1000000.00",
                    "rate_limit_per_minute": 6000,
                    "reversal_window_minutes": 1440,
                }
            ]
        },
    )

    code: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,23}$")
    name: str = Field(min_length=1, max_length=128)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    payment_method: Literal["bank", "mobile_money"] = "bank"
    min_amount: Amount = "5"
    max_amount: Amount = "5000"
    daily_limit: Amount = "10000000"
    rate_limit_per_minute: int = Field(default=6000, ge=1, le=1_000_000)
    reversal_window_minutes: int = Field(default=1440, ge=0, le=60 * 24 * 31)


class ChannelOut(BaseModel):
    code: str
    name: str
    key_id: str
    currency: str
    payment_method: str
    min_amount: str
    max_amount: str
    daily_limit: str
    rate_limit_per_minute: int
    reversal_window_minutes: int
    active: bool
    created_at: str


class CreatedChannel(ChannelOut):
    secret: str = Field(description="Shown once; store it in the channel's HSM or vault.")
