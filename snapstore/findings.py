"""What a check found: one small record shared by ``fsck`` and ``verify``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Finding:
    """One problem, naming what it concerns (log sequence, snapshot, object, context)."""

    kind: str
    message: str
    sequence: int | None = None
    snapshot: str | None = None
    object: str | None = None
    context: str | None = None

    def to_json(self) -> dict[str, Any]:
        """``{"kind", "message", ...}`` with the keys that apply."""
        out: dict[str, Any] = {"kind": self.kind, "message": self.message}
        for key in ("sequence", "snapshot", "object", "context"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out
