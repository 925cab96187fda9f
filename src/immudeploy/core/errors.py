"""Exceptions the domain code raises; each message names what failed and why."""

from __future__ import annotations


class DeployError(Exception):
    """Base class for every error this package raises on purpose."""


class InvalidInput(DeployError, ValueError):
    """A user-supplied value is malformed; raised before anything in AWS changes."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class WaitTimeout(DeployError, TimeoutError):
    """A wait ran out of time; the message says what it was waiting for."""


class TrafficGuardError(DeployError):
    """A step would leave a target group without a healthy target."""


class BakeError(DeployError):
    """Packer failed; the message carries Packer's own error lines."""
