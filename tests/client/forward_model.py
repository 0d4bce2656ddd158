"""A client context class with one annotation that names a type only a type checker imports."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Optional

from .model import SidebarStatus

if TYPE_CHECKING:
    from scratch_models import Scratchpad  # noqa: F401  (not importable at run time)


@dataclass
class ForwardContext:
    sidebar_id: str
    parent_context_id: Optional[str]
    status: SidebarStatus = SidebarStatus.ACTIVE
    last_activity: datetime = field(default_factory=datetime.now)
    scratchpad: Optional[Scratchpad] = None
