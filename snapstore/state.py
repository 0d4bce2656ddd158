"""A conversation's materialized state: the JSON document users commit and check out.

``{"conversation_id": ..., "active_context_id": ..., "contexts": [...]}``
where each context is a JSON object with the client's fields (reference
§1): enums as their string values, datetimes as ISO-8601 strings. Other
top-level keys are kept as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidInput

MAX_STATE_BYTES = 1 << 30


@dataclass
class ConversationState:
    """A whole conversation tree as plain JSON values."""

    conversation_id: str | None
    active_context_id: str | None
    contexts: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: Any) -> ConversationState:
        """Validate a parsed STATE.json document."""
        if not isinstance(value, dict):
            raise InvalidInput(f"state must be a JSON object, not {type(value).__name__}")
        if "contexts" not in value:
            raise InvalidInput("state has no 'contexts' list")
        contexts = value["contexts"]
        if not isinstance(contexts, list) or not all(isinstance(c, dict) for c in contexts):
            raise InvalidInput("state 'contexts' must be a list of JSON objects")
        conversation = value.get("conversation_id")
        if conversation is not None and not isinstance(conversation, str):
            raise InvalidInput("state 'conversation_id' must be a string")
        active = value.get("active_context_id")
        if active is not None and not isinstance(active, str):
            raise InvalidInput("state 'active_context_id' must be a string or null")
        extra = {
            k: v for k, v in value.items()
            if k not in ("conversation_id", "active_context_id", "contexts")
        }
        return cls(conversation, active, contexts, extra)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "state") -> ConversationState:
        if len(data) > MAX_STATE_BYTES:
            raise InvalidInput(f"{source} is larger than {MAX_STATE_BYTES} bytes")
        try:
            value = json.loads(data)
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{source} is not UTF-8 text: {exc.reason}") from None
        except json.JSONDecodeError as exc:
            raise InvalidInput(
                f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        except RecursionError:
            raise InvalidInput(f"{source} is nested too deeply") from None
        except ValueError as exc:  # e.g. an integer with more digits than Python allows
            raise InvalidInput(f"{source} is not valid JSON: {exc}") from None
        return cls.from_json(value)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "conversation_id": self.conversation_id,
            "active_context_id": self.active_context_id,
            "contexts": self.contexts,
        }
        out.update(self.extra)
        return out
