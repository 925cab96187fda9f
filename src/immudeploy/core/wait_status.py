"""One look at what a wait waits for, as every evaluator and wait loop reports it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WaitStatus:
    """`message` is what the task log shows on every poll; `pending` and `failed_ids` name instances."""

    done: bool
    failed: bool
    message: str
    pending: list[str] = field(default_factory=list)
    failed_ids: list[str] = field(default_factory=list)
