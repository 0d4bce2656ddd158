"""The client's context dataclass and enums, as reference §1 describes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Dict, List, Optional


class SidebarStatus(Enum):
    ACTIVE = "active"
    TESTING = "testing"
    PAUSED = "paused"
    WAITING = "waiting"
    REVIEWING = "reviewing"
    SPAWNING_CHILD = "spawning_child"
    CONSOLIDATING = "consolidating"
    MERGED = "merged"
    ARCHIVED = "archived"
    FAILED = "failed"


class SidebarPriority(Enum):
    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"
    BACKGROUND = "background"


@dataclass
class SidebarContext:
    sidebar_id: str
    uuid: str
    parent_context_id: Optional[str]
    child_sidebar_ids: List[str] = field(default_factory=list)
    forked_from: Optional[str] = None
    participants: List[str] = field(default_factory=list)
    coordinator_agent: Optional[str] = "AGENT-operator"
    inherited_memory: List[Dict] = field(default_factory=list)
    local_memory: List[Dict] = field(default_factory=list)
    data_refs: Dict[str, Any] = field(default_factory=dict)
    cross_sidebar_refs: Dict[str, Dict] = field(default_factory=dict)
    scratchpad: Optional[Any] = None
    yarn_board_layout: Dict = field(default_factory=dict)
    relevance_scores: Dict[str, float] = field(default_factory=dict)
    active_focus: List[str] = field(default_factory=list)
    status: SidebarStatus = SidebarStatus.ACTIVE
    priority: SidebarPriority = SidebarPriority.NORMAL
    created_at: datetime = field(default_factory=datetime.now)
    last_activity: datetime = field(default_factory=datetime.now)
    task_description: Optional[str] = None
    success_criteria: Optional[str] = None
    failure_reason: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    display_names: Dict[str, str] = field(default_factory=dict)
