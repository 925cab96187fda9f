"""The domain's values: a group's capacity, a server group as read from AWS, and a run's plan."""

from __future__ import annotations

from dataclasses import dataclass, field

from immudeploy.core.errors import InvalidInput
from immudeploy.core.naming import TAG_RESTORE_CAPACITY


@dataclass(frozen=True)
class Capacity:
    """Auto Scaling group size limits."""

    min: int
    max: int
    desired: int

    def __post_init__(self) -> None:
        sizes = (self.min, self.max, self.desired)
        # bool is an int in Python; a size of True is a configuration mistake, not 1.
        if not all(isinstance(value, int) and not isinstance(value, bool) and value >= 0 for value in sizes):
            raise InvalidInput("capacity", f"min, max and desired must be integers >= 0, got {self}")
        if not self.min <= self.desired <= self.max:
            raise InvalidInput("capacity", f"needs min <= desired <= max, got {self}")

    def pinned(self) -> Capacity:
        """min = max = desired: nothing scales the group while the swap runs."""
        return Capacity(self.desired, self.desired, self.desired)

    def to_tag(self) -> str:
        return f"{self.min},{self.max},{self.desired}"

    @classmethod
    def from_tag(cls, value: str) -> Capacity:
        try:
            low, high, desired = (int(part) for part in value.split(","))
            return cls(low, high, desired)
        except InvalidInput as error:
            raise InvalidInput(TAG_RESTORE_CAPACITY, f"{value!r}: {error.reason}") from error
        except ValueError as error:
            raise InvalidInput(TAG_RESTORE_CAPACITY, f"{value!r} is not 'min,max,desired'") from error


@dataclass
class ServerGroup:
    """One release's Auto Scaling group as read from AWS (image and network from its launch template)."""

    name: str
    app: str
    environment: str
    sequence: int
    version: str | None
    image_id: str | None
    launch_template_name: str | None
    capacity: Capacity
    instance_type: str | None
    subnet_ids: list[str]
    security_group_ids: list[str]
    target_group_arns: list[str]
    # InService or Pending instances: the ones that serve, or are about to serve, this release.
    instance_ids: list[str]
    suspended_processes: list[str]
    deploy_id: str | None
    created_time: str
    disabled: bool = False
    restore_capacity: Capacity | None = None


@dataclass
class StagingPlan:
    target_group_arn: str
    subnet_ids: list[str]
    endpoint: str
    test_command: list[str]
    test_timeout_seconds: int
    capacity: int


@dataclass
class DeployPlan:
    """Everything the later steps need, decided once at the start of a run (and read under the lock)."""

    dag_id: str
    run_id: str
    deploy_id: str
    app: str
    environment: str
    version: str
    git_sha: str | None
    ami_id: str | None
    instance_type: str
    subnet_ids: list[str]
    security_group_ids: list[str]
    target_group_arns: list[str]
    staging: StagingPlan | None
    # The group serving when the run started (None: first deploy) and the size the new one gets.
    live: ServerGroup | None
    capacity: Capacity
    keep_old_groups: int
    keep_images: int
    observation_seconds: float
    alarms: list[str]
    health_timeout_seconds: int | None
    drain_timeout_seconds: int | None
    in_service_timeout_seconds: int
    bake_timeout_seconds: int
    ssm_prefix: str
    # Plain settings only; secret ones travel as references (secret_runtime_config), never values.
    runtime_config: dict[str, str]
    base_image_id: str | None
    base_image_name_pattern: str | None
    base_image_owners: list[str]
    packer_template: str
    release_url: str
    planned_at: str
    # Rollback only: "swap" to a kept group, or "redeploy" the previous image.
    # The traffic guard: share of the old group's desired count the new one must have healthy.
    min_healthy_percent: int = 100
    rollback_mode: str | None = None
    rollback_group: str | None = None
    notes: list[str] = field(default_factory=list)
    # The environment's configured health checks; None: the live group's, else the defaults.
    health_check_type: str | None = None
    health_check_grace_period_seconds: int | None = None
    # Name -> `ssm:/path` or `env:VAR`: resolved when the config is published, so no secret is in XCom.
    secret_runtime_config: dict[str, str] = field(default_factory=dict)
    # Launch template: the instances' profile (name or ARN) and an optional SSH key pair.
    iam_instance_profile: str | None = None
    key_name: str | None = None
    # Retention of the groups this run keeps: minutes after the cutover (None: until a later
    # deploy) and what they keep running ("full", or "zero": scaled to 0, launch template kept).
    keep_for_minutes: float | None = None
    kept_capacity: str = "full"
