"""Shadowing a module's ``forward`` for the length of a ``with`` block -- the one way MotionKit does it.

Bypassing temporal modules (single-frame training), checkpointing chosen units and the fused LoRA forward all
replace ``forward`` with an instance attribute and must put back exactly what was there (an instance-level
wrapper such as accelerate's hooks, or nothing, so the class's method applies again), even on an exception.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator

from torch import nn

__all__ = ["replaced_forwards"]


@contextlib.contextmanager
def replaced_forwards(modules: Iterable[nn.Module], make: Callable[[nn.Module], Callable[..., Any]]) -> Iterator[int]:
    """Give every module of ``modules`` the forward ``make(module)`` while inside (``make`` sees the module's
    current ``forward``); yields how many were replaced. The previous forward comes back on exit."""
    missing = object()
    saved: list[tuple[nn.Module, Any]] = []
    try:
        for module in modules:
            saved.append((module, module.__dict__.get("forward", missing)))
            module.forward = make(module)
        yield len(saved)
    finally:
        for module, previous in reversed(saved):
            if previous is missing:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
