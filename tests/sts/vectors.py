"""Loading the STS compliance vectors from tests/data/sts-vectors-dev.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS_PATH = Path(__file__).resolve().parents[1] / "data" / "sts-vectors-dev.json"


def load_vectors(*kinds: str) -> list[dict[str, Any]]:
    """All compliance vectors of the given kinds (all kinds when none given)."""
    data = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return [v for v in data["vectors"] if not kinds or v["kind"] in kinds]


def ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["id"] for v in vectors]
