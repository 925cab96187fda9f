"""Apps and environments from a YAML file, validated at load with errors naming app, environment and field."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from immudeploy.core.errors import InvalidInput
from immudeploy.core.naming import (
    staging_environment,
    validate_ami_id,
    validate_app,
    validate_environment,
)

log = logging.getLogger(__name__)

CONFIG_ENV_VAR = "IMMUDEPLOY_CONFIG"
REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG_PATH = REPO_ROOT / "config" / "deployments.yaml"

# A new group's health checks when neither the configuration nor a live group says otherwise:
# the load balancer's view (this tool always deploys behind one), after 300 s to boot, not 0.
DEFAULT_HEALTH_CHECK_TYPE = "ELB"
DEFAULT_HEALTH_CHECK_GRACE_PERIOD_SECONDS = 300
# Auto Scaling's health check types; EC2 is always on, the others combine ("ELB,EBS").
HEALTH_CHECK_TYPES = ("EC2", "ELB", "EBS", "VPC_LATTICE")
# An instance profile by name, or by ARN (IAM's character set; paths allowed in the ARN).
INSTANCE_PROFILE_NAME_PATTERN = r"^[\w+=,.@-]{1,128}$"
INSTANCE_PROFILE_ARN_PATTERN = (
    r"^arn:aws[a-z-]*:iam::\d{12}:instance-profile/([\w+=,.@-]+/)*[\w+=,.@-]{1,128}$"
)
# EC2 key pair names: up to 255 ASCII characters; printable only, they end up in a launch template.
KEY_NAME_PATTERN = r"^[\x21-\x7e][\x20-\x7e]{0,254}$"
# A secret runtime setting is a reference, never a value: an existing SSM parameter (a
# SecureString, read with decryption when the release is published) or a variable of the
# worker's environment. The configuration file holds no secret.
SECRET_REF_PATTERN = r"^(ssm:/[A-Za-z0-9_.\-/]{1,1010}|env:[A-Za-z_][A-Za-z0-9_]{0,254})$"
# The one placeholder of `release_url`: the bake installs the artifact of the version it builds.
RELEASE_URL_VERSION = "{version}"
DEFAULT_NIGHTLY_SCHEDULE = "0 3 * * *"
# What a kept group keeps while it waits for a rollback: its running instances ("full", the rollback
# is a swap) or only its launch template and image ("zero", the rollback scales it up and boots).
KEPT_CAPACITIES = ("full", "zero")


@dataclass(frozen=True)
class CapacityConfig:
    min: int
    max: int
    desired: int


@dataclass(frozen=True)
class StagingConfig:
    target_group: str
    subnets: tuple[str, ...]
    # argv, run without a shell; the staging endpoint and instance ids arrive in its environment.
    test_command: tuple[str, ...]
    test_timeout_seconds: int = 600
    capacity: int = 1


@dataclass(frozen=True)
class BaseImageConfig:
    image_id: str | None = None
    name_pattern: str | None = None
    owners: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnvironmentConfig:
    app: str
    environment: str
    packer_template: Path
    base_image: BaseImageConfig
    release_url: str
    instance_type: str
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    target_groups: tuple[str, ...]
    staging: StagingConfig | None
    first_deploy_capacity: CapacityConfig
    health_timeout_seconds: int | None
    drain_timeout_seconds: int | None
    in_service_timeout_seconds: int
    bake_timeout_seconds: int
    keep_old_groups: int
    keep_images: int
    observation_minutes: float
    # Detaching the old group needs this share of its desired count healthy in the new one.
    min_healthy_percent: int
    alarms: tuple[str, ...]
    nightly: bool
    nightly_schedule: str
    ssm_prefix: str
    runtime_config: Mapping[str, str] = field(default_factory=dict)
    # None when the environment does not set them: a new group then keeps the live group's values,
    # and a first deploy gets DEFAULT_HEALTH_CHECK_TYPE and DEFAULT_HEALTH_CHECK_GRACE_PERIOD_SECONDS.
    # A value set here is the operator's intent and wins over the live group's
    # (immudeploy.aws.groups.setup.setup_for_new_group).
    health_check_type: str | None = None
    health_check_grace_period_seconds: int | None = None
    # Name -> reference (`ssm:/path`, `env:VAR`); resolved only when the release config is published.
    secret_runtime_config: Mapping[str, str] = field(default_factory=dict)
    # The instances' instance profile (name or ARN): on real AWS they need it to read their
    # configuration. None: no profile (a local stand-in needs none).
    iam_instance_profile: str | None = None
    # An EC2 key pair for SSH; None: no key.
    key_name: str | None = None
    # How long a kept group stays after the cutover; None: until a later deploy retires it.
    keep_for_minutes: float | None = None
    # "full": a kept group keeps its instances; "zero": it is scaled to 0, its launch template kept.
    kept_capacity: str = "full"

    @property
    def target(self) -> str:
        return f"{self.app}/{self.environment}"


@dataclass(frozen=True)
class DeploymentConfig:
    path: Path
    environments: Mapping[tuple[str, str], EnvironmentConfig]
    # What could not be read, by (app, environment), or (app, None) when the app entry itself is
    # broken: kept, not raised, so one broken entry does not stop every other app's runs (or the
    # DAGs from parsing); `get` raises it for the runs that ask for that entry.
    errors: Mapping[tuple[str, str | None], InvalidInput] = field(default_factory=dict)

    def get(self, app: str, environment: str) -> EnvironmentConfig:
        try:
            return self.environments[(app, environment)]
        except KeyError:
            pass
        error = self.errors.get((app, environment)) or self.errors.get((app, None))
        if error is not None:
            raise InvalidInput(
                error.field, f"{error.reason} (in {self.path}; {app}/{environment} cannot run)"
            )
        known = ", ".join(f"{a}/{e}" for a, e in sorted(self.environments)) or "none"
        raise InvalidInput(
            "app/environment",
            f"{app}/{environment} is not configured in {self.path} (configured: {known})",
        )

    def targets(self) -> list[tuple[str, str | None]]:
        """Every app/environment the file names, broken ones included (their runs fail with the reason)."""
        return sorted({*self.environments, *self.errors}, key=lambda key: (key[0], key[1] or ""))

    def check(self) -> DeploymentConfig:
        """Raise the first error, for a caller that wants the whole file valid (a linter, a test)."""
        for key in sorted(self.errors, key=lambda key: (key[0], key[1] or "")):
            raise self.errors[key]
        return self

    def nightly_targets(self) -> list[EnvironmentConfig]:
        return [env for key, env in sorted(self.environments.items()) if env.nightly]


class _Reader:
    """Reads one mapping, raising InvalidInput with the full dotted path of a bad field."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise InvalidInput(where, f"must be a mapping, got {type(data).__name__}")
        self.data = data
        self.where = where

    def name(self, key: str) -> str:
        return f"{self.where}.{key}"

    def _get(self, key: str, default: Any, required: bool) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                raise InvalidInput(self.name(key), "is required")
            return default
        return self.data[key]

    def string(self, key: str, default: str | None = None, required: bool = False) -> Any:
        value = self._get(key, default, required)
        if value is not None and not isinstance(value, str):
            raise InvalidInput(self.name(key), f"must be a string, got {type(value).__name__}")
        return value

    def integer(self, key: str, default: int | None = None, minimum: int = 0, required: bool = False) -> Any:
        value = self._get(key, default, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(self.name(key), f"must be a whole number, got {value!r}")
        if value < minimum:
            raise InvalidInput(self.name(key), f"must be at least {minimum}, got {value}")
        return value

    def number(self, key: str, default: float = 0.0) -> float:
        value = self._get(key, default, False)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise InvalidInput(self.name(key), f"must be a non-negative number, got {value!r}")
        return float(value)

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self._get(key, default, False)
        if not isinstance(value, bool):
            raise InvalidInput(self.name(key), f"must be true or false, got {value!r}")
        return value

    def strings(self, key: str, required: bool = False, non_empty: bool = False) -> tuple[str, ...]:
        value = self._get(key, [], required)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise InvalidInput(self.name(key), "must be a list of non-empty strings")
        if non_empty and not value:
            raise InvalidInput(self.name(key), "must name at least one entry")
        return tuple(value)

    def mapping(self, key: str, required: bool = False) -> _Reader | None:
        value = self._get(key, None, required)
        return None if value is None else _Reader(value, self.name(key))

    def unknown_keys(self, known: set[str]) -> None:
        extra = sorted(set(self.data) - known)
        if extra:
            raise InvalidInput(self.name(extra[0]), f"unknown field (known: {', '.join(sorted(known))})")


_ENV_FIELDS = {
    "instance_type",
    "subnets",
    "security_groups",
    "target_groups",
    "staging",
    "first_deploy_capacity",
    "health_timeout_seconds",
    "drain_timeout_seconds",
    "in_service_timeout_seconds",
    "bake_timeout_seconds",
    "keep_old_groups",
    "keep_images",
    "observation_minutes",
    "min_healthy_percent",
    "alarms",
    "nightly",
    "runtime_config",
    "secret_runtime_config",
    "ssm_prefix",
    "iam_instance_profile",
    "key_name",
    "keep_for_minutes",
    "kept_capacity",
    "health_check_type",
    "health_check_grace_period_seconds",
}
_APP_FIELDS = {"packer_template", "base_image", "release_url", "environments", "defaults"}


def _capacity(reader: _Reader | None, where: str) -> CapacityConfig:
    if reader is None:
        return CapacityConfig(1, 1, 1)
    capacity = CapacityConfig(
        min=reader.integer("min", required=True),
        max=reader.integer("max", required=True, minimum=1),
        desired=reader.integer("desired", required=True, minimum=1),
    )
    if not capacity.min <= capacity.desired <= capacity.max:
        raise InvalidInput(where, f"needs min <= desired <= max, got {capacity}")
    return capacity


def _environment(app: str, app_reader: _Reader, name: str, data: Any, base_dir: Path) -> EnvironmentConfig:
    environment = validate_environment(name, f"apps.{app}.environments.{name!r}")
    where = f"apps.{app}.environments.{environment}"
    defaults = app_reader.data.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise InvalidInput(f"apps.{app}.defaults", "must be a mapping")
    merged = {**defaults, **(data or {})}
    env = _Reader(merged, where)
    env.unknown_keys(_ENV_FIELDS)

    staging_reader = env.mapping("staging")
    staging = None
    if staging_reader is not None:
        staging_reader.unknown_keys(
            {"target_group", "subnets", "test_command", "test_timeout_seconds", "capacity"}
        )
        staging = StagingConfig(
            target_group=staging_reader.string("target_group", required=True),
            subnets=staging_reader.strings("subnets", required=True, non_empty=True),
            test_command=staging_reader.strings("test_command", required=True, non_empty=True),
            test_timeout_seconds=staging_reader.integer("test_timeout_seconds", 600, minimum=1),
            capacity=staging_reader.integer("capacity", 1, minimum=1),
        )

    template = Path(app_reader.string("packer_template", "packer"))
    template = template if template.is_absolute() else (base_dir / template)
    if not template.is_dir():
        raise InvalidInput(f"apps.{app}.packer_template", f"{template} is not a directory")

    base = app_reader.mapping("base_image", required=True)
    assert base is not None
    base.unknown_keys({"image_id", "name_pattern", "owners"})
    image_id = base.string("image_id")
    if image_id:
        validate_ami_id(image_id, f"apps.{app}.base_image.image_id")
    base_image = BaseImageConfig(image_id, base.string("name_pattern"), base.strings("owners"))
    if not (base_image.image_id or base_image.name_pattern):
        raise InvalidInput(f"apps.{app}.base_image", "needs image_id or name_pattern")

    runtime = merged.get("runtime_config") or {}
    if not isinstance(runtime, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int | float | bool) for k, v in runtime.items()
    ):
        raise InvalidInput(f"{where}.runtime_config", "must map parameter names to plain values")

    nightly_reader = env.mapping("nightly")
    nightly, schedule = False, DEFAULT_NIGHTLY_SCHEDULE
    if nightly_reader is not None:
        nightly_reader.unknown_keys({"enabled", "schedule"})
        nightly = nightly_reader.boolean("enabled", False)
        schedule = _cron(nightly_reader, "schedule", schedule)

    if staging is not None:
        # Staging groups carry `{environment}stg` where the environment's own name goes.
        validate_environment(
            staging_environment(environment),
            f"{where}.staging (its groups' environment name {staging_environment(environment)!r})",
        )

    ssm_prefix = env.string("ssm_prefix", f"/immutable/{app}/{environment}")
    if not ssm_prefix.startswith("/") or " " in ssm_prefix:
        raise InvalidInput(f"{where}.ssm_prefix", "must be an absolute parameter path without spaces")

    return EnvironmentConfig(
        app=app,
        environment=environment,
        packer_template=template,
        base_image=base_image,
        release_url=_release_url(app_reader, "release_url"),
        instance_type=env.string("instance_type", "t3.micro"),
        subnets=env.strings("subnets", required=True, non_empty=True),
        security_groups=env.strings("security_groups"),
        target_groups=env.strings("target_groups", required=True, non_empty=True),
        staging=staging,
        first_deploy_capacity=_capacity(
            env.mapping("first_deploy_capacity"), f"{where}.first_deploy_capacity"
        ),
        health_timeout_seconds=env.integer("health_timeout_seconds", None, minimum=1),
        drain_timeout_seconds=env.integer("drain_timeout_seconds", None, minimum=1),
        in_service_timeout_seconds=env.integer("in_service_timeout_seconds", 900, minimum=1),
        bake_timeout_seconds=env.integer("bake_timeout_seconds", 3600, minimum=1),
        keep_old_groups=env.integer("keep_old_groups", 0),
        keep_images=env.integer("keep_images", 5, minimum=1),
        observation_minutes=env.number("observation_minutes", 0.0),
        min_healthy_percent=_percent(env, "min_healthy_percent", 100),
        alarms=env.strings("alarms"),
        nightly=nightly,
        nightly_schedule=schedule,
        ssm_prefix=ssm_prefix.rstrip("/"),
        runtime_config={k: str(v) for k, v in runtime.items()},
        health_check_type=_health_check_type(env, "health_check_type"),
        health_check_grace_period_seconds=env.integer("health_check_grace_period_seconds", None, minimum=0),
        secret_runtime_config=_secret_runtime_config(env, runtime),
        iam_instance_profile=_optional(env, "iam_instance_profile", validate_instance_profile),
        key_name=_optional(env, "key_name", validate_key_name),
        keep_for_minutes=_keep_for_minutes(env, "keep_for_minutes"),
        kept_capacity=_kept_capacity(env, "kept_capacity"),
    )


def _keep_for_minutes(env: _Reader, key: str) -> float | None:
    """Minutes a kept group stays after the cutover (> 0), or None: until the next deploy."""
    value = env._get(key, None, False)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidInput(
            env.name(key),
            f"must be a number of minutes greater than 0 (omit it to keep until the next deploy), got {value!r}",
        )
    return float(value)


def _kept_capacity(env: _Reader, key: str) -> str:
    value = env.string(key, "full")
    if value not in KEPT_CAPACITIES:
        raise InvalidInput(env.name(key), f"must be one of {', '.join(KEPT_CAPACITIES)}, got {value!r}")
    return str(value)


def validate_instance_profile(value: object, field_name: str) -> str:
    """An instance profile's name or ARN."""
    if not isinstance(value, str) or not (
        re.fullmatch(INSTANCE_PROFILE_NAME_PATTERN, value)
        or re.fullmatch(INSTANCE_PROFILE_ARN_PATTERN, value)
    ):
        raise InvalidInput(
            field_name,
            f"{value!r} is neither an instance profile name (letters, digits, +=,.@_-, up to 128) nor an "
            "instance profile ARN (arn:aws:iam::123456789012:instance-profile/NAME)",
        )
    return value


def validate_key_name(value: object, field_name: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(KEY_NAME_PATTERN, value):
        raise InvalidInput(field_name, f"{value!r} is not an EC2 key pair name (printable ASCII, up to 255)")
    return value


def validate_secret_ref(value: object, field_name: str) -> str:
    """`ssm:/name/of/a/SecureString` or `env:VARIABLE`; the error never repeats the value (it may be a secret)."""
    if not isinstance(value, str) or not re.fullmatch(SECRET_REF_PATTERN, value):
        raise InvalidInput(
            field_name,
            "a secret must be a reference, 'ssm:/name/of/an/existing/parameter' or 'env:VARIABLE' "
            "(of the worker's environment), never the value itself",
        )
    return value


def _optional(env: _Reader, key: str, check: Any) -> str | None:
    value = env.string(key)
    return None if value is None else check(value, env.name(key))


def _secret_runtime_config(env: _Reader, runtime: Mapping[str, Any]) -> dict[str, str]:
    secrets = env.mapping("secret_runtime_config")
    if secrets is None:
        return {}
    refs = {}
    for name, ref in secrets.data.items():
        if not isinstance(name, str):
            raise InvalidInput(secrets.where, f"{name!r}: parameter names are strings")
        if name in runtime:
            raise InvalidInput(
                secrets.name(name), "is also set in runtime_config: a setting is secret or not"
            )
        refs[name] = validate_secret_ref(ref, secrets.name(name))
    return refs


def validate_health_check_type(value: object, field_name: str) -> str:
    """`ELB`, `EC2`, or a combination such as `ELB,EBS` (Auto Scaling's HealthCheckType)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(field_name, f"must be a health check type such as ELB, got {value!r}")
    parts = value.split(",")
    unknown = [part for part in parts if part not in HEALTH_CHECK_TYPES]
    if unknown or len(set(parts)) != len(parts):
        raise InvalidInput(
            field_name,
            f"{value!r} is not one of {', '.join(HEALTH_CHECK_TYPES)} or a comma-separated combination",
        )
    return value


def _health_check_type(env: _Reader, key: str) -> str | None:
    value = env.string(key)
    return None if value is None else validate_health_check_type(value, env.name(key))


def _cron(reader: _Reader, key: str, default: str) -> str:
    """A cron expression (UTC) the nightly DAG's timetable accepts; checked here, not at DAG parse."""
    from croniter import croniter

    value = reader.string(key, default)
    if not croniter.is_valid(value):
        raise InvalidInput(reader.name(key), f"{value!r} is not a valid cron expression (e.g. '0 3 * * *')")
    return str(value)


def _release_url(app_reader: _Reader, key: str) -> str:
    """Empty (a bake with no artifact, the local demo) or a URL template naming the version it serves."""
    value = app_reader.string(key, "")
    if not value:
        return ""
    if RELEASE_URL_VERSION not in value:
        raise InvalidInput(
            app_reader.name(key),
            f"{value!r} has no {RELEASE_URL_VERSION}: a rebuild of an old version would install "
            "whatever the URL serves today",
        )
    rest = value.replace(RELEASE_URL_VERSION, "")
    if "{" in rest or "}" in rest:
        raise InvalidInput(app_reader.name(key), f"{value!r}: {RELEASE_URL_VERSION} is its only placeholder")
    return value


def _percent(env: _Reader, key: str, default: int) -> int:
    value = env.integer(key, default, minimum=1)
    if value > 100:
        raise InvalidInput(env.name(key), f"is a percentage of the old group's size (1 to 100), got {value}")
    return int(value)


def parse_config(text: str, path: Path) -> DeploymentConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidInput(str(path), f"is not valid YAML: {error}") from None
    root = _Reader(data, "config")
    root.unknown_keys({"apps"})
    apps = root.mapping("apps", required=True)
    assert apps is not None
    environments: dict[tuple[str, str], EnvironmentConfig] = {}
    errors: dict[tuple[str, str | None], InvalidInput] = {}
    for app_name, app_data in apps.data.items():
        try:
            app = validate_app(app_name, f"apps.{app_name!r}")
            app_reader = _Reader(app_data, f"apps.{app}")
            app_reader.unknown_keys(_APP_FIELDS)
            envs = app_reader.mapping("environments", required=True)
            assert envs is not None
        except InvalidInput as error:
            errors[(str(app_name), None)] = error
            continue
        for env_name, env_data in envs.data.items():
            try:
                config = _environment(app, app_reader, env_name, env_data, path.parent)
            except InvalidInput as error:
                errors[(app, str(env_name))] = error
                continue
            environments[(app, config.environment)] = config
    _refuse_staging_collisions(environments, errors)
    for (app, environment), error in sorted(errors.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        log.warning("%s/%s is not usable and its runs will fail: %s", app, environment or "*", error)
    return DeploymentConfig(path=path, environments=environments, errors=errors)


def _refuse_staging_collisions(
    environments: dict[tuple[str, str], EnvironmentConfig], errors: dict[tuple[str, str | None], InvalidInput]
) -> None:
    """An environment named like another one's staging groups (`prod` and `prodstg`): both are refused.

    Each would take the other's groups for its own: a deploy of one would remove the other's
    "abandoned" staging group, or read a staging group as its live fleet.
    """
    for (app, environment), env in list(environments.items()):
        if env.staging is None:
            continue
        named = staging_environment(environment)
        if (app, named) not in environments and (app, named) not in errors:
            continue
        reason = f"its staging groups ({app}-{named}-vNNN) would be the groups of environment {named!r}"
        for victim in (environment, named):
            environments.pop((app, victim), None)
            errors.setdefault(
                (app, victim),
                InvalidInput(
                    f"apps.{app}.environments.{environment}.staging", f"{reason}; rename one of them"
                ),
            )


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH)


def load_config(path: Path | None = None) -> DeploymentConfig:
    path = path or config_path()
    try:
        text = path.read_text()
    except OSError as error:
        raise InvalidInput(CONFIG_ENV_VAR, f"cannot read the configuration file {path}: {error}") from None
    return parse_config(text, path)
