"""How long-running maintenance work reports progress, without knowing about terminals.

A :data:`Progress` is called with a phase label and the number of steps it
will take, and returns a context manager whose ``update(n)`` advances it.
``click.progressbar`` fits as it is; :func:`quiet` reports nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol


class Bar(Protocol):
    def update(self, n_steps: int) -> None: ...


Progress = Callable[[str, int], AbstractContextManager[Bar]]


class _NoBar:
    def update(self, n_steps: int) -> None:
        pass


def quiet(label: str, total: int) -> AbstractContextManager[Bar]:
    """A progress that reports nothing."""
    return nullcontext(_NoBar())
