"""A group's Auto Scaling setup (scaling, schedules, hooks, health checks, tags): read from the live group, given to the new one."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from immudeploy.aws.connection import AwsApi
from immudeploy.aws.groups.inventory import require_group
from immudeploy.core.config import (
    DEFAULT_HEALTH_CHECK_GRACE_PERIOD_SECONDS,
    DEFAULT_HEALTH_CHECK_TYPE,
    validate_health_check_type,
)
from immudeploy.core.errors import InvalidInput
from immudeploy.core.naming import as_aws_tags, listed

log = logging.getLogger(__name__)

# This tool's own tags (identity, deploy id, restore size, state) and AWS's: never inherited.
RESERVED_TAG_PREFIXES = ("immutable:", "aws:")
# Set on the alarms copied for a group's step and simple policies: which group they drive.
TAG_SERVER_GROUP = "immutable:server-group"
# Policy types whose alarms the owner makes; target tracking and predictive policies manage their own.
ALARM_DRIVEN_POLICY_TYPES = ("StepScaling", "SimpleScaling")
GROUP_DIMENSION = "AutoScalingGroupName"

_POLICY_FIELDS = (
    "PolicyName",
    "PolicyType",
    "AdjustmentType",
    "MinAdjustmentMagnitude",
    "ScalingAdjustment",
    "Cooldown",
    "MetricAggregationType",
    "StepAdjustments",
    "EstimatedInstanceWarmup",
    "TargetTrackingConfiguration",
    "PredictiveScalingConfiguration",
    "Enabled",
)
_SCHEDULED_ACTION_FIELDS = (
    "ScheduledActionName",
    "StartTime",
    "EndTime",
    "Recurrence",
    "MinSize",
    "MaxSize",
    "DesiredCapacity",
    "TimeZone",
)
_LIFECYCLE_HOOK_FIELDS = (
    "LifecycleHookName",
    "LifecycleTransition",
    "NotificationTargetARN",
    "RoleARN",
    "NotificationMetadata",
    "HeartbeatTimeout",
    "DefaultResult",
)
_ALARM_FIELDS = (
    "AlarmName",
    "AlarmDescription",
    "ActionsEnabled",
    "OKActions",
    "AlarmActions",
    "InsufficientDataActions",
    "MetricName",
    "Namespace",
    "Statistic",
    "ExtendedStatistic",
    "Dimensions",
    "Period",
    "Unit",
    "EvaluationPeriods",
    "DatapointsToAlarm",
    "Threshold",
    "ComparisonOperator",
    "TreatMissingData",
    "EvaluateLowSampleCountPercentile",
    "Metrics",
    "ThresholdMetricId",
)
_ALARM_ACTION_FIELDS = ("AlarmActions", "OKActions", "InsufficientDataActions")
_ALARM_NAME_LIMIT = 255


class AutoScalingAndAlarms(AwsApi, Protocol):
    """Step and simple policies act through CloudWatch alarms: copying them needs CloudWatch too."""

    @property
    def cloudwatch(self) -> Any: ...


@dataclass(frozen=True)
class InheritedTag:
    key: str
    value: str
    propagate_at_launch: bool


@dataclass(frozen=True)
class GroupSetup:
    """How a group scales, is scheduled, hooked, health-checked and tagged; not its size, image or network.

    Scaling policies, scheduled actions, lifecycle hooks and alarms are kept as the arguments of the
    put_* call that recreates them (without the group name); `source_group` is the group they were
    read from, whose name their metric dimensions and alarm actions still carry.
    """

    health_check_type: str = DEFAULT_HEALTH_CHECK_TYPE
    health_check_grace_period: int = DEFAULT_HEALTH_CHECK_GRACE_PERIOD_SECONDS
    # Where the two health check values came from: "configured", "live group" or "default".
    health_check_origin: str = "default"
    termination_policies: tuple[str, ...] = ()
    default_cooldown: int | None = None
    default_instance_warmup: int | None = None
    capacity_rebalance: bool | None = None
    instance_maintenance_policy: Mapping[str, Any] | None = None
    enabled_metrics: tuple[str, ...] = ()
    metrics_granularity: str = "1Minute"
    tags: tuple[InheritedTag, ...] = ()
    scaling_policies: tuple[Mapping[str, Any], ...] = ()
    # Policy name -> its ARN on the source group (alarm actions name policies by ARN).
    source_policy_arns: Mapping[str, str] = field(default_factory=dict)
    alarms: tuple[Mapping[str, Any], ...] = ()
    scheduled_actions: tuple[Mapping[str, Any], ...] = ()
    lifecycle_hooks: tuple[Mapping[str, Any], ...] = ()
    source_group: str | None = None

    def validate(self) -> None:
        validate_health_check_type(self.health_check_type, "health_check_type")
        grace = self.health_check_grace_period
        if isinstance(grace, bool) or not isinstance(grace, int) or grace < 0:
            raise InvalidInput("health_check_grace_period", "must be an integer >= 0 (seconds)")
        for tag in self.tags:
            if tag.key.startswith(RESERVED_TAG_PREFIXES):
                raise InvalidInput("tags", f"{tag.key!r}: the immutable: and aws: prefixes are reserved")

    def group_attributes(self) -> dict[str, Any]:
        """The create/update_auto_scaling_group arguments this setup fixes (absent ones keep AWS's default)."""
        attributes: dict[str, Any] = {
            "HealthCheckType": self.health_check_type,
            "HealthCheckGracePeriod": self.health_check_grace_period,
        }
        if self.termination_policies:
            attributes["TerminationPolicies"] = list(self.termination_policies)
        if self.default_cooldown is not None:
            attributes["DefaultCooldown"] = self.default_cooldown
        if self.default_instance_warmup is not None:
            attributes["DefaultInstanceWarmup"] = self.default_instance_warmup
        if self.capacity_rebalance is not None:
            attributes["CapacityRebalance"] = self.capacity_rebalance
        if self.instance_maintenance_policy:
            attributes["InstanceMaintenancePolicy"] = dict(self.instance_maintenance_policy)
        return attributes

    def creation_arguments(self) -> dict[str, Any]:
        """What create_auto_scaling_group takes of this setup, so the first instance already has it.

        Lifecycle hooks go in the create call, not after it: a hook added once the group exists
        misses the instances launched in between, and the new fleet's instances must go through
        the same hooks as the live fleet's. That includes a launching hook, which holds each new
        instance in Pending:Wait until its consumer completes the lifecycle action (or the
        heartbeat timeout applies the default result): the live group's behaviour, copied on
        purpose. The consumer must also act on this group's instances (one filtering on the old
        group's name would leave them waiting out the timeout), and the InService wait of the
        launch must allow for the hook's time.
        """
        arguments = self.group_attributes()
        if self.lifecycle_hooks:
            arguments["LifecycleHookSpecificationList"] = [dict(hook) for hook in self.lifecycle_hooks]
        return arguments

    def aws_tags(self, group_name: str) -> list[dict[str, Any]]:
        return [
            {
                "ResourceId": group_name,
                "ResourceType": "auto-scaling-group",
                "Key": tag.key,
                "Value": tag.value,
                "PropagateAtLaunch": tag.propagate_at_launch,
            }
            for tag in self.tags
        ]


def configured_setup(health_check_type: str | None, health_check_grace_period: int | None) -> GroupSetup:
    """A group with nothing to inherit from (a first deploy, a staging group): the configured health checks."""
    return _with_health_checks(GroupSetup(), health_check_type, health_check_grace_period)


def setup_for_new_group(
    clients: AutoScalingAndAlarms,
    live_group_name: str | None,
    *,
    health_check_type: str | None,
    health_check_grace_period: int | None,
    now: datetime | None = None,
) -> GroupSetup:
    """The setup a new group of the app and environment gets: the live group's, so it autoscales like it.

    Health check type and grace period are the exception. The environment's configuration is
    the operator's stated intent, so a configured value wins over the live group's; without one
    the live group's value is kept; without a live group (first deploy) the default applies
    (ELB, 300 s). A live grace period of 0 counts as unset: it is the API's default and what this
    tool gave every group before the grace period was configurable, never a choice worth
    carrying on (ELB checks on an instance still booting replace it); configure 0 to mean 0.
    """
    if live_group_name is None:
        return configured_setup(health_check_type, health_check_grace_period)
    return _with_health_checks(
        read_group_setup(clients, live_group_name, now=now), health_check_type, health_check_grace_period
    )


def _with_health_checks(setup: GroupSetup, check_type: str | None, grace_period: int | None) -> GroupSetup:
    inherited = setup.source_group is not None
    origins = []
    if check_type is not None:
        origins.append("configured")
    elif not inherited:
        check_type = DEFAULT_HEALTH_CHECK_TYPE
        origins.append("default")
    else:
        check_type = setup.health_check_type
        origins.append("live group")
    if grace_period is not None:
        origins.append("configured")
    elif not inherited or not setup.health_check_grace_period:
        grace_period = DEFAULT_HEALTH_CHECK_GRACE_PERIOD_SECONDS
        origins.append("default")
    else:
        grace_period = setup.health_check_grace_period
        origins.append("live group")
    origin = origins[0] if origins[0] == origins[1] else f"type {origins[0]}, grace period {origins[1]}"
    resolved = replace(
        setup,
        health_check_type=check_type,
        health_check_grace_period=grace_period,
        health_check_origin=origin,
    )
    resolved.validate()
    return resolved


# --- reading -------------------------------------------------------------------------------------


def read_group_setup(
    clients: AutoScalingAndAlarms, group_name: str, *, now: datetime | None = None
) -> GroupSetup:
    """Everything of a group's setup that another group can be given; `now` decides which schedules are past."""
    raw = require_group(clients, group_name)
    autoscaling = clients.autoscaling
    policies = [
        policy
        for page in autoscaling.get_paginator("describe_policies").paginate(AutoScalingGroupName=group_name)
        for policy in page["ScalingPolicies"]
    ]
    actions = [
        action
        for page in autoscaling.get_paginator("describe_scheduled_actions").paginate(
            AutoScalingGroupName=group_name
        )
        for action in page["ScheduledUpdateGroupActions"]
    ]
    hooks = autoscaling.describe_lifecycle_hooks(AutoScalingGroupName=group_name)["LifecycleHooks"]
    policy_arns = {p["PolicyName"]: p["PolicyARN"] for p in policies if p.get("PolicyARN")}
    alarm_driven = [
        policy_arns[p["PolicyName"]]
        for p in policies
        if p.get("PolicyType", "SimpleScaling") in ALARM_DRIVEN_POLICY_TYPES
        and p["PolicyName"] in policy_arns
    ]
    metrics = raw.get("EnabledMetrics") or []
    return GroupSetup(
        health_check_type=raw.get("HealthCheckType") or DEFAULT_HEALTH_CHECK_TYPE,
        health_check_grace_period=int(raw.get("HealthCheckGracePeriod") or 0),
        health_check_origin="live group",
        termination_policies=tuple(raw.get("TerminationPolicies") or ()),
        default_cooldown=raw.get("DefaultCooldown"),
        default_instance_warmup=raw.get("DefaultInstanceWarmup"),
        capacity_rebalance=raw.get("CapacityRebalance"),
        instance_maintenance_policy=raw.get("InstanceMaintenancePolicy") or None,
        enabled_metrics=tuple(sorted({m["Metric"] for m in metrics})),
        metrics_granularity=metrics[0].get("Granularity", "1Minute") if metrics else "1Minute",
        tags=tuple(
            InheritedTag(tag["Key"], tag["Value"], bool(tag.get("PropagateAtLaunch")))
            for tag in sorted(raw.get("Tags") or [], key=lambda tag: tag["Key"])
            if not tag["Key"].startswith(RESERVED_TAG_PREFIXES)
        ),
        scaling_policies=tuple(_present(policy, _POLICY_FIELDS) for policy in policies),
        source_policy_arns=policy_arns,
        alarms=tuple(_alarms_acting_on(clients, alarm_driven)) if alarm_driven else (),
        scheduled_actions=tuple(_still_due(actions, now or datetime.now(UTC))),
        lifecycle_hooks=tuple(_present(hook, _LIFECYCLE_HOOK_FIELDS) for hook in hooks),
        source_group=group_name,
    )


def _present(described: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """The put_* arguments in a describe_* entry: empty values left out (AWS rejects some, e.g. `{}`)."""
    return {
        key: described[key]
        for key in fields
        if described.get(key) is not None and described[key] not in ([], {})
    }


def _still_due(actions: Iterable[Mapping[str, Any]], now: datetime) -> Iterable[dict[str, Any]]:
    """Scheduled actions that will still run: AWS refuses a start time in the past."""
    for described in actions:
        action = _present(described, _SCHEDULED_ACTION_FIELDS)
        end = action.get("EndTime")
        if isinstance(end, datetime) and end <= now:
            continue
        start = action.get("StartTime")
        if isinstance(start, datetime) and start <= now:
            if not action.get("Recurrence"):
                continue  # a one-time action that has run
            del action["StartTime"]  # a recurrence that has started: it keeps running from now on
        yield action


def _alarms_acting_on(clients: AutoScalingAndAlarms, policy_arns: list[str]) -> Iterable[dict[str, Any]]:
    """The metric alarms whose actions execute these policies, as put_metric_alarm arguments."""
    seen: set[str] = set()
    paginator = clients.cloudwatch.get_paginator("describe_alarms")
    for arn in policy_arns:
        # ActionPrefix is a prefix: "policyName/scale-out" also finds "policyName/scale-out-fast".
        for page in paginator.paginate(ActionPrefix=arn, AlarmTypes=["MetricAlarm"]):
            for alarm in page.get("MetricAlarms", []):
                actions = {a for key in _ALARM_ACTION_FIELDS for a in alarm.get(key) or []}
                if arn in actions and alarm["AlarmName"] not in seen:
                    seen.add(alarm["AlarmName"])
                    yield _present(alarm, _ALARM_FIELDS)


# --- applying ------------------------------------------------------------------------------------


def apply_group_setup(clients: AutoScalingAndAlarms, group_name: str, setup: GroupSetup) -> list[str]:
    """Give a group this setup; safe to repeat: everything is put by name or key, nothing is added twice.

    Call it while the group's swap processes are suspended (launch_server_group does): a scheduled
    action put on a group whose ScheduledActions process runs could resize it at once, and a
    policy's alarm could scale it, in the middle of the swap. Returns what it set, also logged.
    """
    setup.validate()
    raw = require_group(clients, group_name)
    autoscaling = clients.autoscaling
    source, target = setup.source_group, group_name
    applied: list[str] = []

    attributes = setup.group_attributes()
    changed = {key: value for key, value in attributes.items() if raw.get(key) != value}
    if changed:
        autoscaling.update_auto_scaling_group(AutoScalingGroupName=group_name, **changed)
    applied.append(
        f"health check {setup.health_check_type} with {setup.health_check_grace_period} s grace "
        f"({setup.health_check_origin})"
    )
    applied += _describe_attributes(setup)

    # Already in place when create_auto_scaling_group took them; put again for a group made
    # without them (a retried launch, a kept group) and because put is an overwrite by name.
    for hook in setup.lifecycle_hooks:
        autoscaling.put_lifecycle_hook(AutoScalingGroupName=group_name, **hook)
    if setup.lifecycle_hooks:
        applied.append("lifecycle hooks " + listed([h["LifecycleHookName"] for h in setup.lifecycle_hooks]))

    if setup.tags:
        autoscaling.create_or_update_tags(Tags=setup.aws_tags(group_name))
        applied.append("tags " + listed([tag.key for tag in setup.tags]))

    enabled = {m["Metric"] for m in raw.get("EnabledMetrics") or []}
    missing = [metric for metric in setup.enabled_metrics if metric not in enabled]
    if missing:
        autoscaling.enable_metrics_collection(
            AutoScalingGroupName=group_name, Granularity=setup.metrics_granularity, Metrics=missing
        )
    if setup.enabled_metrics:
        applied.append("metrics " + listed(list(setup.enabled_metrics), limit=5))

    for policy in setup.scaling_policies:
        arguments = _retarget(dict(policy), source, target) if source else dict(policy)
        autoscaling.put_scaling_policy(AutoScalingGroupName=group_name, **arguments)
    if setup.scaling_policies:
        applied.append("scaling policies " + listed([p["PolicyName"] for p in setup.scaling_policies]))

    if setup.alarms and source:
        copied = _copy_alarms(clients, setup, source, target)
        applied.append("alarms " + listed(copied))

    for action in setup.scheduled_actions:
        autoscaling.put_scheduled_update_group_action(AutoScalingGroupName=group_name, **action)
    if setup.scheduled_actions:
        applied.append(
            "scheduled actions " + listed([a["ScheduledActionName"] for a in setup.scheduled_actions])
        )

    log.info(
        "Set up %s%s: %s",
        group_name,
        f" like {source}" if source else " with the configured defaults",
        "; ".join(applied),
    )
    return applied


def _describe_attributes(setup: GroupSetup) -> list[str]:
    described = []
    if setup.termination_policies:
        described.append("termination policies " + ", ".join(setup.termination_policies))
    if setup.default_cooldown is not None:
        described.append(f"cooldown {setup.default_cooldown} s")
    if setup.default_instance_warmup is not None:
        described.append(f"instance warmup {setup.default_instance_warmup} s")
    if setup.capacity_rebalance is not None:
        described.append(f"capacity rebalance {'on' if setup.capacity_rebalance else 'off'}")
    if setup.instance_maintenance_policy:
        policy = setup.instance_maintenance_policy
        described.append(
            f"maintenance policy {policy.get('MinHealthyPercentage')}-{policy.get('MaxHealthyPercentage')} %"
        )
    return described


def _copy_alarms(clients: AutoScalingAndAlarms, setup: GroupSetup, source: str, target: str) -> list[str]:
    """The source's step/simple policy alarms, watching the target group and executing its policies.

    Without them the copied step and simple policies would never run: their alarms name the old
    group in their dimensions and its policies' ARNs in their actions. put_metric_alarm overwrites
    by name, so a retry rewrites the same alarms.
    """
    names = list(setup.source_policy_arns)
    found = clients.autoscaling.describe_policies(AutoScalingGroupName=target, PolicyNames=names)
    # Read back rather than taken from put_scaling_policy's answer: moto's lacks PolicyARN.
    new_arns = {p["PolicyName"]: p["PolicyARN"] for p in found["ScalingPolicies"]}
    by_old_arn = {arn: new_arns[name] for name, arn in setup.source_policy_arns.items() if name in new_arns}
    copied = []
    for alarm in setup.alarms:
        arguments = _retarget(dict(alarm), source, target)
        for key in _ALARM_ACTION_FIELDS:
            if key in arguments:
                arguments[key] = [by_old_arn.get(action, action) for action in arguments[key]]
        arguments["AlarmName"] = copied_alarm_name(alarm["AlarmName"], source, target)
        clients.cloudwatch.put_metric_alarm(**arguments, Tags=as_aws_tags({TAG_SERVER_GROUP: target}))
        copied.append(arguments["AlarmName"])
    return copied


def copied_alarm_name(name: str, source: str, target: str) -> str:
    """`cpu-high-shop-prod-v001` -> `cpu-high-shop-prod-v002`; a name without the group gets it appended."""
    if source in name:
        return name.replace(source, target)
    suffix = f"-{target}"
    return name[: _ALARM_NAME_LIMIT - len(suffix)] + suffix


def _retarget(value: Any, source: str, target: str) -> Any:
    """A copy in which every AutoScalingGroupName metric dimension naming `source` names `target`."""
    if isinstance(value, list):
        return [_retarget(item, source, target) for item in value]
    if isinstance(value, dict):
        if value.get("Name") == GROUP_DIMENSION and value.get("Value") == source:
            return {**value, "Value": target}
        return {key: _retarget(item, source, target) for key, item in value.items()}
    return value
