"""How a key change is shown: the JSON answer and the technician's printout."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from protocols.sts import group_digits
from vending.key_changes import pending_key_change
from vending.models_keychange import KeyChangeRecord


def key_change_json(
    record: KeyChangeRecord, meter_number: str | None, *, with_tokens: bool
) -> dict[str, Any]:
    """The key change; its tokens only when ``with_tokens`` (they are handed out through
    the audited routes: the request's answer, the printout, the vend)."""

    def when(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    answer: dict[str, Any] = {
        "id": record.id,
        "meter_number": meter_number,
        "status": record.status,
        "from": {
            "supply_group_code": record.from_supply_group_code,
            "tariff_index": record.from_tariff_index,
            "key_revision": record.from_key_revision,
            "base_date": record.from_base_date,
        },
        "to": {
            "supply_group_code": record.to_supply_group_code,
            "tariff_index": record.to_tariff_index,
            "key_revision": record.to_key_revision,
            "base_date": record.to_base_date,
            "key_expiry_number": record.to_key_expiry_number,
        },
        "rollover": record.rollover,
        "token_count": len(record.tokens),
        "reason": record.reason,
        "requested_by": record.requested_by,
        "requested_at": when(record.requested_at),
        "completed_by": record.completed_by,
        "completed_at": when(record.completed_at),
        "completed_by_vend": (
            None
            if record.completed_vend_reference is None
            else {
                "channel": record.completed_vend_channel,
                "reference": record.completed_vend_reference,
            }
        ),
        "cancelled_by": record.cancelled_by,
        "cancelled_at": when(record.cancelled_at),
        "cancel_reason": record.cancel_reason,
    }
    if with_tokens:
        answer["tokens"] = list(record.tokens)
        answer["tokens_grouped"] = [group_digits(t) for t in record.tokens]
    return answer


def pending_key_change_json(session: Session, meter_id: int) -> dict[str, Any] | None:
    """What the pre-vend lookup shows of the meter's pending key change (no tokens: the
    vend hands them out), or None."""
    record = pending_key_change(session, meter_id)
    if record is None:
        return None
    return {
        "id": record.id,
        "requested_at": record.requested_at.isoformat(),
        "rollover": record.rollover,
        "token_count": len(record.tokens),
        "to": {
            "supply_group_code": record.to_supply_group_code,
            "tariff_index": record.to_tariff_index,
            "key_revision": record.to_key_revision,
            "base_date": record.to_base_date,
        },
    }


def render_key_change_text(record: KeyChangeRecord, meter_number: str | None) -> str:
    """The 40-column printout a technician takes to the meter."""
    width = 40
    out = [
        "KEY CHANGE".center(width).rstrip(),
        "-" * width,
        f"Meter  {meter_number or record.meter_id}",
        f"From   SGC {record.from_supply_group_code} TI {record.from_tariff_index} "
        f"KRN {record.from_key_revision}",
        f"To     SGC {record.to_supply_group_code} TI {record.to_tariff_index} "
        f"KRN {record.to_key_revision}",
        f"Base   {record.from_base_date} -> {record.to_base_date}"
        + (" (rollover)" if record.rollover else ""),
        "-" * width,
        "Enter in this order:",
        *(f"{index}. {group_digits(token)}" for index, token in enumerate(record.tokens, start=1)),
        "-" * width,
    ]
    return "\n".join(out) + "\n"
