"""Names, tags and validation of the identifiers every phase shares (app, environment, version)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from immudeploy.core.errors import InvalidInput

TAG_APP = "immutable:app"
TAG_ENVIRONMENT = "immutable:environment"
TAG_VERSION = "immutable:version"
# Which run created a resource: lets a retried create find what its first attempt made.
TAG_DEPLOY_ID = "immutable:deploy-id"
# sha256 of the Packer template directory plus the inputs that change the image.
TAG_BAKE_FINGERPRINT = "immutable:bake-fingerprint"
TAG_BASE_IMAGE = "immutable:base-image"
# "disabled" marks a group that was detached on purpose and kept for an instant rollback.
TAG_STATE = "immutable:state"
STATE_DISABLED = "disabled"
# "min,max,desired" to restore after the swap; present only while a group's capacity is pinned,
# so a run that crashed mid-swap can still restore it.
TAG_RESTORE_CAPACITY = "immutable:restore-capacity"

# The patterns are also the trigger forms' JSON schema, which jsonschema applies with re.search and
# the browser with a JS RegExp. Each ends in `$(?!\n)`: Python's `$` also matches before a final
# newline, so "1.0.0\n" would pass a bare `$`; JS has no `\Z`, but both read the lookahead the same way.
# A `-` in a class is escaped: the HTML `pattern` attribute compiles with the `v` flag, which refuses `[_-]`.
# Lower-case DNS-label-like names: they end up in ASG, launch template and AMI names and SSM paths.
APP_PATTERN = r"^[a-z][a-z0-9]{0,29}$(?!\n)"
ENVIRONMENT_PATTERN = r"^[a-z][a-z0-9]{0,19}$(?!\n)"
# A release version: semantic version or a plain build tag, no spaces or shell metacharacters.
VERSION_PATTERN = r"^[0-9A-Za-z][0-9A-Za-z._\-]{0,63}$(?!\n)"
AMI_ID_PATTERN = r"^ami-[0-9a-f]{8,17}$(?!\n)"
GIT_SHA_PATTERN = r"^[0-9a-f]{7,40}$(?!\n)"
# `{app}-{environment}-vNNN` (ServerGroupName), as a deploy's expected live group.
SERVER_GROUP_PATTERN = r"^[a-z][a-z0-9]*-[a-z][a-z0-9]*-v[0-9]{3,}$(?!\n)"
# "app/environment", as the nightly DAG's manual `targets`.
TARGET_PATTERN = r"^[a-z][a-z0-9]*/[a-z][a-z0-9]*$(?!\n)"
# Staging groups are `{app}-{environment}stg-vNNN`: a server group of the environment `{environment}stg`.
STAGING_SUFFIX = "stg"

_SERVER_GROUP_RE = re.compile(
    r"^(?P<app>[a-z][a-z0-9]*)-(?P<environment>[a-z][a-z0-9]*)-v(?P<sequence>\d{3,})$"
)


def _check(field: str, value: object, pattern: str, meaning: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(field, f"must be a string, got {type(value).__name__}")
    if not re.fullmatch(pattern, value):
        raise InvalidInput(field, f"{value!r} is not {meaning} (pattern {pattern})")
    return value


def validate_app(value: object, field: str = "app") -> str:
    return _check(field, value, APP_PATTERN, "a lower-case app name of at most 30 letters and digits")


def validate_environment(value: object, field: str = "environment") -> str:
    return _check(field, value, ENVIRONMENT_PATTERN, "a lower-case environment name of at most 20 characters")


def validate_version(value: object, field: str = "version") -> str:
    return _check(field, value, VERSION_PATTERN, "a release version (letters, digits, '.', '_', '-')")


def validate_ami_id(value: object, field: str = "ami_id") -> str:
    return _check(field, value, AMI_ID_PATTERN, "an AMI id like ami-0123456789abcdef0")


def validate_git_sha(value: object, field: str = "git_sha") -> str:
    return _check(field, value, GIT_SHA_PATTERN, "a hexadecimal git commit id (7 to 40 characters)")


def validate_server_group_name(value: object, field: str = "server_group") -> str:
    return _check(field, value, SERVER_GROUP_PATTERN, "a server group name like shop-prod-v007")


def staging_environment(environment: str) -> str:
    """The environment name a staging group of `environment` carries in its name and tags."""
    return f"{environment}{STAGING_SUFFIX}"


@dataclass(frozen=True, order=True)
class ServerGroupName:
    """`{app}-{environment}-v{NNN}`: one Auto Scaling group (and its launch template) per release."""

    app: str
    environment: str
    sequence: int

    def __str__(self) -> str:
        return f"{self.app}-{self.environment}-v{self.sequence:03d}"

    @classmethod
    def parse(cls, name: str) -> ServerGroupName | None:
        match = _SERVER_GROUP_RE.fullmatch(name)
        if match is None:
            return None
        return cls(match["app"], match["environment"], int(match["sequence"]))

    def next(self) -> ServerGroupName:
        return ServerGroupName(self.app, self.environment, self.sequence + 1)


def identity_tags(app: str, environment: str, version: str) -> dict[str, str]:
    return {TAG_APP: app, TAG_ENVIRONMENT: environment, TAG_VERSION: version}


def as_aws_tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in sorted(tags.items())]


def from_aws_tags(tags: list[dict[str, str]] | None) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in tags or []}


def target_group_label(arn: str) -> str:
    """`arn:...:targetgroup/web/0123abcd` -> `web`: what a person recognises in the console and logs."""
    parts = arn.rsplit(":", 1)[-1].split("/")
    return parts[1] if len(parts) == 3 else arn


def listed(items: Sequence[str], limit: int = 20) -> str:
    """The first `limit` items and a count of the rest: log lines stay readable for big fleets."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"
