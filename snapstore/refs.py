"""Conversation refs: names, validation and the keys they live under.

One ref per conversation, ``conversations/<id>``, pointing at its newest
snapshot. Refs change only by compare-and-swap through
:meth:`snapstore.backends.base.Backend.write`; this module only names them.
"""

from __future__ import annotations

import re
from typing import NewType

from .errors import InvalidInput

ConversationId = NewType("ConversationId", str)

REF_PREFIX = "conversations/"
ACTIVE_KEY = "active_conversation"
MAX_CONVERSATION_ID = 128
MAX_CONTEXT_ID = 256

# Letters, digits, '.', '_', '-', starting with a letter or digit: nothing that
# can climb out of a folder, start an option, clash with revision syntax
# (``~``, ``@{``) or move a terminal's cursor.
_CONVERSATION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def validate_conversation_id(value: object) -> ConversationId:
    """``value`` as a conversation id, or :class:`InvalidInput` saying why not."""
    if not isinstance(value, str):
        raise InvalidInput(f"conversation id must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidInput("conversation id is empty")
    if len(value) > MAX_CONVERSATION_ID:
        raise InvalidInput(
            f"conversation id is {len(value)} characters long (at most {MAX_CONVERSATION_ID})"
        )
    if not _CONVERSATION_RE.fullmatch(value) or ".." in value:
        raise InvalidInput(
            f"invalid conversation id {value!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return ConversationId(value)


_OBJECT_ID_LIKE = re.compile(r"[0-9a-f]{64}")


def validate_new_conversation_id(value: object) -> ConversationId:
    """``value`` as the id of a conversation about to be created (a first commit, a rename's new name).

    Besides :func:`validate_conversation_id`: not 64 lowercase hex digits, the
    shape of an object id, which a revision would read as the object (a
    conversation an older store holds under such a name stays readable).
    """
    conv = validate_conversation_id(value)
    if _OBJECT_ID_LIKE.fullmatch(conv):
        raise InvalidInput(
            f"invalid conversation id {conv!r}: 64 hex digits look like an object id (revisions would read it as one)"
        )
    return conv


def validate_context_id(value: object) -> str:
    """``value`` as a context id (``sidebar_id``): a printable string of sane length."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"context id must be a non-empty string, got {value!r}")
    if len(value) > MAX_CONTEXT_ID:
        raise InvalidInput(f"context id is {len(value)} characters long (at most {MAX_CONTEXT_ID})")
    if not value.isprintable():  # every character printable (one C call)
        raise InvalidInput(f"context id {value!r} contains control characters")
    return value


def ref_name(conversation: ConversationId) -> str:
    """The ref under which a conversation's head is kept."""
    return REF_PREFIX + conversation


def conversation_of(ref: str) -> ConversationId | None:
    """The conversation a ref name belongs to, or None for other refs."""
    if ref.startswith(REF_PREFIX):
        return ConversationId(ref[len(REF_PREFIX) :])
    return None
