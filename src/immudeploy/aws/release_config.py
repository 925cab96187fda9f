"""A deploy's runtime configuration in SSM Parameter Store, under a path of its own per deploy.

`{ssm_prefix}/releases/{version}/{deploy key}`: the version says what it is for, the deploy key (a
short hash of the deploy id) makes it this run's own, so a redeploy of the version the live fleet
runs writes beside the live fleet's path and never into it. Every group is tagged with the path its
instances read (TAG_CONFIG_PATH); a path no group or launch template names any more is superseded
and deleted by the next deploy under the lock (delete_superseded_release_configs).

Values marked secret in the configuration file are references (`ssm:/path` of an existing
SecureString, `env:NAME` of the worker's environment), resolved only when publishing and written
as SecureString; the plan, XCom and the logs only ever carry the reference.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from immudeploy.aws.connection import AwsApi
from immudeploy.core.config import validate_secret_ref
from immudeploy.core.errors import InvalidInput
from immudeploy.core.naming import (
    TAG_APP,
    from_aws_tags,
    validate_app,
    validate_environment,
    validate_version,
)

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
# On every group, launch template and instance of a deploy: the path its instances read at boot.
TAG_CONFIG_PATH = "immutable:config-path"
# Tag values hold 256 characters; the path is a tag value.
MAX_PATH_LENGTH = 256
DEPLOY_KEY_LENGTH = 12
_DEPLOY_KEY_RE = re.compile(rf"^[0-9a-f]{{{DEPLOY_KEY_LENGTH}}}$")


@dataclass(frozen=True)
class PublishedConfig:
    """Where a release's configuration lives; `parameter_names` are full names, sorted."""

    path: str
    cache_key_prefix: str
    parameter_names: list[str] = field(default_factory=list)


def deploy_key(deploy_id: str) -> str:
    """The short, path-safe key of one deploy (Airflow run ids hold ':' and '+', which SSM refuses)."""
    if not isinstance(deploy_id, str) or not deploy_id:
        raise InvalidInput("deploy_id", f"must be a non-empty string, got {deploy_id!r}")
    return hashlib.sha256(deploy_id.encode()).hexdigest()[:DEPLOY_KEY_LENGTH]


def releases_root(ssm_prefix: str) -> str:
    return f"{ssm_prefix.rstrip('/')}/releases"


def release_path(ssm_prefix: str, version: str, key: str) -> str:
    """`{ssm_prefix}/releases/{version}/{key}`, checked against what SSM accepts in a name."""
    if not isinstance(key, str) or not _DEPLOY_KEY_RE.match(key):
        raise InvalidInput("deploy_key", f"{key!r} is not a deploy key (deploy_key(deploy_id))")
    path = f"{releases_root(ssm_prefix)}/{validate_version(version)}/{key}"
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
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidInput(
            "ssm_prefix", f"{path!r} is longer than a tag value ({MAX_PATH_LENGTH} characters)"
        )
    return path


def resolve_secrets(
    ssm: Any, refs: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Name -> value of each secret, read now (on the worker, at publish time). Raises naming the reference."""
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    for name, ref in sorted(refs.items()):
        where = f"secret_runtime_config[{name!r}]"
        source, _, location = validate_secret_ref(ref, where).partition(":")
        if source == "env":
            value = environ.get(location)
            if not value:
                raise InvalidInput(where, f"the worker's environment variable {location} is not set or empty")
        else:
            try:
                found = ssm.get_parameter(Name=location, WithDecryption=True)["Parameter"]
            except ssm.exceptions.ParameterNotFound:
                raise InvalidInput(where, f"parameter {location} does not exist") from None
            value = found["Value"]
        values[name] = value
    return values


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
    *,
    key: str,
    secrets: Mapping[str, str] | None = None,
) -> PublishedConfig:
    """Write `values` (and `extra`, values the pipeline adds, e.g. the image id) under the deploy's path.

    `secrets` (resolved values, see resolve_secrets) are written as SecureString; no value is ever
    logged. Idempotent and converging: unchanged parameters are not rewritten (no new SSM
    versions), and parameters under the path that are no longer configured are deleted. Every name
    and value is validated before anything is written.
    """
    path = release_path(ssm_prefix, version, key)
    prefix = cache_key_prefix(app, environment, version)
    extra = dict(extra or {})
    secrets = dict(secrets or {})
    clashes = sorted((set(values) & set(extra)) | (set(secrets) & (set(values) | set(extra))))
    if clashes:
        raise InvalidInput("extra", f"{', '.join(clashes)} set twice in the release configuration")
    merged = {**values, **extra, **secrets}
    _validate_values(path, merged)
    desired = {
        f"{path}/{name}": (value, "SecureString" if name in secrets else "String")
        for name, value in merged.items()
    }
    desired[f"{path}/{CACHE_KEY_PREFIX}"] = (prefix, "String")
    desired[f"{path}/{RELEASE_VERSION}"] = (version, "String")

    existing = {p["Name"]: p for p in _parameters_under(ssm, path)}
    written = 0
    for name, (value, kind) in sorted(desired.items()):
        current = existing.get(name)
        if current is not None and current["Value"] == value and current["Type"] == kind:
            continue
        if current is not None and current["Type"] != kind:
            # A parameter keeps its type: a value that became secret (or stopped being) is replaced.
            ssm.delete_parameter(Name=name)
        ssm.put_parameter(
            Name=name,
            Value=value,
            Type=kind,
            Overwrite=True,
            Description=f"{app}/{environment} {version}",
        )
        written += 1
    stale = sorted(set(existing) - set(desired))
    _delete_names(ssm, stale)
    logger.info(
        "Release config %s: %d parameters (%d secret), %d written, %d removed",
        path,
        len(desired),
        len(secrets),
        written,
        len(stale),
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


def _tagged_config_paths(clients: AwsApi, app: str) -> set[str]:
    """Every path a group or launch template of the app names (any environment, staging included).

    Groups being deleted count (their instances may still be running), and so do launch templates
    without a group: a launch that crashed between the two is retried with the same template.
    """
    paths: set[str] = set()
    paginator = clients.autoscaling.get_paginator("describe_auto_scaling_groups")
    for page in paginator.paginate(Filters=[{"Name": f"tag:{TAG_APP}", "Values": [app]}]):
        for raw in page["AutoScalingGroups"]:
            paths.add(from_aws_tags(raw.get("Tags")).get(TAG_CONFIG_PATH, ""))
    paginator = clients.ec2.get_paginator("describe_launch_templates")
    for page in paginator.paginate(Filters=[{"Name": f"tag:{TAG_APP}", "Values": [app]}]):
        for template in page["LaunchTemplates"]:
            paths.add(from_aws_tags(template.get("Tags")).get(TAG_CONFIG_PATH, ""))
    paths.discard("")
    return paths


def delete_superseded_release_configs(
    clients: AwsApi, app: str, environment: str, ssm_prefix: str, keep: Iterable[str] = ()
) -> list[str]:
    """Delete the deploy paths under `{ssm_prefix}/releases` that no group or launch template names.

    Run under the app/environment lock at the start of a publish: the groups retirement deleted
    since (and staging groups, failed launches) are gone by then, so their paths go with them,
    while every path a remaining group's instances may read at boot stays. `keep` is the caller's
    own path (published before its groups exist). Only paths of this scheme (a version, then a
    deploy key) are touched. Returns the paths deleted.
    """
    validate_app(app)
    validate_environment(environment)
    root = releases_root(ssm_prefix)
    by_path: dict[str, list[str]] = {}
    paginator = clients.ssm.get_paginator("get_parameters_by_path")
    for page in paginator.paginate(Path=root, Recursive=True, WithDecryption=False):
        for parameter in page["Parameters"]:
            parent = parameter["Name"].rsplit("/", 1)[0]
            version, _, key = parent[len(root) + 1 :].partition("/")
            if version and _DEPLOY_KEY_RE.match(key):
                by_path.setdefault(parent, []).append(parameter["Name"])
    in_use = _tagged_config_paths(clients, app) | set(keep)
    superseded = sorted(set(by_path) - in_use)
    for path in superseded:
        _delete_names(clients.ssm, sorted(by_path[path]))
        logger.info("Deleted superseded release config %s (no group of %s uses it)", path, app)
    return superseded
