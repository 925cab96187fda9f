"""A release's runtime configuration in SSM Parameter Store, under a path of its own per release version."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from immudeploy.core.errors import InvalidInput
from immudeploy.core.naming import validate_app, validate_environment, validate_version

logger = logging.getLogger(__name__)

CACHE_KEY_PREFIX = "CACHE_KEY_PREFIX"
RELEASE_VERSION = "RELEASE_VERSION"
RESERVED_NAMES = frozenset({CACHE_KEY_PREFIX, RELEASE_VERSION})

# What SSM accepts in a parameter name; one level only, so a republish can see every name it owns.
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
# SSM limits: standard-tier values, full name length, hierarchy depth, names AWS reserves.
MAX_VALUE_LENGTH = 4096
MAX_NAME_LENGTH = 1011
MAX_LEVELS = 15
_RESERVED_FIRST_SEGMENT = re.compile(r"^(aws|ssm)", re.IGNORECASE)
# DeleteParameters takes at most ten names per call.
DELETE_BATCH = 10


@dataclass(frozen=True)
class PublishedConfig:
    """Where a release's configuration lives; `parameter_names` are full names, sorted."""

    path: str
    cache_key_prefix: str
    parameter_names: list[str] = field(default_factory=list)


def release_path(ssm_prefix: str, version: str) -> str:
    """`{ssm_prefix}/releases/{version}`, checked against what SSM accepts in a name."""
    path = f"{ssm_prefix.rstrip('/')}/releases/{validate_version(version)}"
    segments = path.split("/")
    if not ssm_prefix.startswith("/") or any(not _SEGMENT_RE.match(s) for s in segments[1:]):
        raise InvalidInput(
            "ssm_prefix/version",
            f"{path!r} is not a valid SSM path: it must start with '/' and use only letters, digits, "
            "'_', '.', '-' between single slashes ('+' in a version is not allowed by SSM)",
        )
    if _RESERVED_FIRST_SEGMENT.match(segments[1]):
        raise InvalidInput("ssm_prefix", f"{ssm_prefix!r}: SSM reserves paths starting with 'aws' or 'ssm'")
    if len(segments) - 1 >= MAX_LEVELS:
        raise InvalidInput("ssm_prefix", f"{path!r} leaves no room under SSM's {MAX_LEVELS}-level limit")
    return path


def cache_key_prefix(app: str, environment: str, version: str) -> str:
    """Versioned by release: old and new fleets never read each other's cache entries during a swap."""
    return f"{validate_app(app)}:{validate_environment(environment)}:{validate_version(version)}:"


def _validate_values(path: str, values: Mapping[str, str]) -> None:
    for name, value in values.items():
        where = f"config[{name!r}]"
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            raise InvalidInput(
                where,
                f"{name!r} is not a valid SSM parameter name (pattern {NAME_PATTERN}: letters, digits, '_', "
                "'.', '-'; no slashes or spaces)",
            )
        if name in RESERVED_NAMES:
            raise InvalidInput(where, f"{name} is reserved: the pipeline writes it")
        if len(f"{path}/{name}") > MAX_NAME_LENGTH:
            raise InvalidInput(where, f"the full parameter name exceeds SSM's {MAX_NAME_LENGTH} characters")
        if not isinstance(value, str):
            raise InvalidInput(where, f"must be a string, got {type(value).__name__}")
        if not value:
            raise InvalidInput(where, "SSM does not store empty values; leave the setting out instead")
        if len(value) > MAX_VALUE_LENGTH:
            raise InvalidInput(
                where, f"is {len(value)} characters; SSM standard parameters hold {MAX_VALUE_LENGTH}"
            )


def _parameters_under(ssm: Any, path: str) -> Iterator[dict[str, Any]]:
    # Not recursive: nested parameters were not written by this module, so they are not ours to remove.
    paginator = ssm.get_paginator("get_parameters_by_path")
    for page in paginator.paginate(Path=path, Recursive=False, WithDecryption=True):
        yield from page["Parameters"]


def _delete_names(ssm: Any, names: list[str]) -> None:
    for start in range(0, len(names), DELETE_BATCH):
        ssm.delete_parameters(Names=names[start : start + DELETE_BATCH])


def publish_release_config(
    ssm: Any,
    ssm_prefix: str,
    app: str,
    environment: str,
    version: str,
    values: Mapping[str, str],
    extra: Mapping[str, str] | None = None,
) -> PublishedConfig:
    """Write `values` (and `extra`, values the pipeline adds, e.g. the image id) under the release path.

    Idempotent and converging: unchanged parameters are not rewritten (no new SSM versions), and
    parameters under the path that are no longer configured are deleted. Every name and value is
    validated before anything is written.
    """
    path = release_path(ssm_prefix, version)
    prefix = cache_key_prefix(app, environment, version)
    extra = dict(extra or {})
    clashes = sorted(set(values) & set(extra))
    if clashes:
        raise InvalidInput("extra", f"{', '.join(clashes)} also set in the release configuration")
    merged = {**values, **extra}
    _validate_values(path, merged)
    desired = {f"{path}/{name}": value for name, value in merged.items()}
    desired[f"{path}/{CACHE_KEY_PREFIX}"] = prefix
    desired[f"{path}/{RELEASE_VERSION}"] = version

    existing = {p["Name"]: p for p in _parameters_under(ssm, path)}
    written = 0
    for name, value in sorted(desired.items()):
        current = existing.get(name)
        if current is not None and current["Value"] == value and current["Type"] == "String":
            continue
        ssm.put_parameter(
            Name=name,
            Value=value,
            Type="String",
            Overwrite=True,
            Description=f"{app}/{environment} {version}",
        )
        written += 1
    stale = sorted(set(existing) - set(desired))
    _delete_names(ssm, stale)
    logger.info(
        "Release config %s: %d parameters, %d written, %d removed", path, len(desired), written, len(stale)
    )
    return PublishedConfig(path=path, cache_key_prefix=prefix, parameter_names=sorted(desired))


def read_release_config(ssm: Any, path: str) -> dict[str, str]:
    """Short name -> value of every parameter directly under `path` (empty when nothing is there)."""
    base = path.rstrip("/")
    return {p["Name"][len(base) + 1 :]: p["Value"] for p in _parameters_under(ssm, base)}


def delete_release_config(ssm: Any, path: str) -> list[str]:
    """Delete every parameter directly under `path`; returns the names deleted. Idempotent."""
    names = sorted(p["Name"] for p in _parameters_under(ssm, path.rstrip("/")))
    _delete_names(ssm, names)
    logger.info("Deleted release config %s (%d parameters)", path, len(names))
    return names
