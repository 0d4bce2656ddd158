"""snapstore: a Git-style content-addressed snapshot store for conversation trees.

Start with :class:`Repository` (``Repository.init`` / ``Repository.open``).
"""

from .errors import SnapstoreError
from .objects import Event, LogLink
from .repository import CommitResult, Repository
from .state import ConversationState

__version__ = "0.1.0"

__all__ = ["CommitResult", "ConversationState", "Event", "LogLink", "Repository", "SnapstoreError"]
