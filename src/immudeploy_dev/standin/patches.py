"""Patches to moto's ELBv2, Auto Scaling and EC2 models that give them AWS's timing while a layer is active.

The patches are process-wide (moto's backends are module globals) but every patched method first asks
`active_layer()`: outside a request served by a StandIn, or one of its own timeline events, it runs moto's
original code unchanged. A plain ThreadedMotoServer or `mock_aws` in the same process therefore keeps plain
moto behaviour; it does share moto's backend state with the stand-in, as any two moto servers in one process do.
"""

from __future__ import annotations

import threading
from typing import Any

from moto.autoscaling.exceptions import AutoscalingClientError
from moto.autoscaling.models import AutoScalingBackend, FakeAutoScalingGroup, InstanceState
from moto.autoscaling.responses import AutoScalingResponse
from moto.core.responses import ActionResult, EmptyResult
from moto.ec2.models.instances import InstanceBackend
from moto.elbv2.models import ELBv2Backend, FakeHealthStatus, FakeTargetGroup, elbv2_backends

from .layer import BROKEN_TAG, BROKEN_VALUE, Layer, active_layer, log

DELETE_IN_PROGRESS = "Delete in progress"

_installed = False
_install_lock = threading.Lock()


class ResourceInUseError(AutoscalingClientError):
    code = "ResourceInUse"


def install() -> None:
    """Install the patches once per process; idempotent."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _patch_target_group()
        _patch_elbv2_backend()
        _patch_ec2()
        _patch_autoscaling()
        _installed = True


def _original(cls: type, name: str) -> Any:
    return cls.__dict__[name]


# --- ELBv2 ----------------------------------------------------------------------------------------


def _patch_target_group() -> None:
    register = _original(FakeTargetGroup, "register")
    deregister = _original(FakeTargetGroup, "deregister")
    deregister_terminated = _original(FakeTargetGroup, "deregister_terminated_instances")
    health_for = _original(FakeTargetGroup, "health_for")

    def patched_register(self: FakeTargetGroup, targets: list[dict[str, Any]]) -> None:
        layer = active_layer()
        before = set(self.targets)
        register(self, targets)
        if layer is None:
            return
        for target_id in [t["Id"] for t in targets if t["Id"] not in before and t["Id"] in self.targets]:
            image_id, tagged = _image_of(self, target_id)
            layer.on_register(self.arn, target_id, self.targets[target_id]["Port"], image_id, tagged)

    def _deregistering(self: FakeTargetGroup, original: Any, arg: Any) -> None:
        layer = active_layer()
        before = dict(self.targets)
        try:
            original(self, arg)
        finally:
            if layer is not None:
                delay = float(self.attributes.get("deregistration_delay.timeout_seconds", 300))
                for target_id in set(before) - set(self.targets):
                    layer.on_deregister(self.arn, target_id, before[target_id]["Port"], delay)

    def patched_deregister(self: FakeTargetGroup, targets: list[dict[str, Any]]) -> None:
        _deregistering(self, deregister, targets)

    def patched_deregister_terminated(self: FakeTargetGroup, instance_ids: list[str]) -> None:
        _deregistering(self, deregister_terminated, instance_ids)

    def patched_health_for(
        self: FakeTargetGroup, target: dict[str, Any], ec2_backend: Any
    ) -> FakeHealthStatus:
        layer = active_layer()
        target_id = target["Id"]
        if layer is None or _stopped(self, target_id, ec2_backend):
            return health_for(self, target, ec2_backend)
        state = layer.health(
            self.arn,
            target_id,
            target_id in self.targets,
            float(self.health_check_interval_seconds),
            int(self.healthy_threshold_count),
            int(self.unhealthy_threshold_count),
            bool(self.health_check_enabled),
        )
        if state is None:
            return health_for(self, target, ec2_backend)
        record = layer.records[(self.arn, target_id)]
        port = target.get("Port", record.port)
        return FakeHealthStatus(target_id, port, self.health_check_port, *state)

    FakeTargetGroup.register = patched_register  # type: ignore[method-assign]
    FakeTargetGroup.deregister = patched_deregister  # type: ignore[method-assign]
    FakeTargetGroup.deregister_terminated_instances = patched_deregister_terminated  # type: ignore[method-assign]
    FakeTargetGroup.health_for = patched_health_for  # type: ignore[method-assign]


def _image_of(tg: FakeTargetGroup, target_id: str) -> tuple[str | None, bool]:
    """The instance's image and whether that image carries the broken tag (judged once, at registration)."""
    instance = tg.ec2_backend.get_instance_by_id(target_id) if target_id.startswith("i-") else None
    if instance is None:
        return None, False
    image_id = getattr(instance, "image_id", None)
    tags = tg.ec2_backend.tags.get(image_id, {}) if image_id else {}
    return image_id, tags.get(BROKEN_TAG) == BROKEN_VALUE


def _stopped(tg: FakeTargetGroup, target_id: str, ec2_backend: Any) -> bool:
    if target_id not in tg.targets or not target_id.startswith("i-"):
        return False
    instance = ec2_backend.get_instance_by_id(target_id)
    return instance is not None and instance.state == "stopped"


def _patch_elbv2_backend() -> None:
    describe_target_health = _original(ELBv2Backend, "describe_target_health")

    def patched_describe_target_health(
        self: ELBv2Backend, target_group_arn: str, targets: list[dict[str, Any]]
    ) -> list[FakeHealthStatus]:
        layer = active_layer()
        target_group = self.target_groups.get(target_group_arn)
        if layer is not None and target_group is not None and not targets:
            # AWS lists draining targets with the registered ones until their drain ends.
            targets = list(target_group.targets.values()) + layer.draining_targets(target_group_arn)
            if not targets:
                return []
        return describe_target_health(self, target_group_arn, targets)

    ELBv2Backend.describe_target_health = patched_describe_target_health  # type: ignore[method-assign]


# --- EC2 ------------------------------------------------------------------------------------------


def _patch_ec2() -> None:
    terminate_instances = _original(InstanceBackend, "terminate_instances")

    def patched_terminate_instances(self: Any, instance_ids: list[str]) -> list[tuple[Any, Any]]:
        result = terminate_instances(self, instance_ids)
        if active_layer() is not None:
            # Moto deregisters only on the TerminateInstances API; Auto Scaling terminations skip it.
            elbv2_backends[self.account_id][self.region_name].notify_terminate_instances(
                [instance.id for instance, _ in result]
            )
        return result

    InstanceBackend.terminate_instances = patched_terminate_instances  # type: ignore[method-assign]


# --- Auto Scaling ---------------------------------------------------------------------------------


def _live(group: FakeAutoScalingGroup) -> bool:
    """The group still exists in its backend and is not being deleted."""
    backend = group.autoscaling_backend
    return backend.autoscaling_groups.get(group.name) is group and (
        getattr(group, "status", None) != DELETE_IN_PROGRESS
    )


def _register(group: FakeAutoScalingGroup, arns: list[str], states: list[InstanceState]) -> None:
    elbv2 = group.autoscaling_backend.elbv2_backend
    for arn in arns:
        target_group = elbv2.target_groups.get(arn)
        if target_group is None:
            continue
        targets = [
            {"Id": s.instance.id, "Port": target_group.port} for s in states if s.instance.state == "running"
        ]
        if targets:
            target_group.register(targets)


def _deregister(group: FakeAutoScalingGroup, arns: list[str], instance_ids: set[str]) -> None:
    elbv2 = group.autoscaling_backend.elbv2_backend
    for arn in arns:
        target_group = elbv2.target_groups.get(arn)
        if target_group is None:
            continue
        targets = [{"Id": i} for i in instance_ids if i in target_group.targets]
        if targets:
            target_group.deregister(targets)


def _in_service(group: FakeAutoScalingGroup) -> list[InstanceState]:
    return [s for s in group.instance_states if s.lifecycle_state == "InService"]


def _boot(group: FakeAutoScalingGroup, state: InstanceState) -> None:
    if state not in group.instance_states or state.lifecycle_state != "Pending":
        return
    state.lifecycle_state = "InService"
    log.info("standin: %s of %s InService", state.instance.id, group.name)
    if _live(group):
        _register(group, list(group.target_group_arns), [state])


def _patch_autoscaling() -> None:
    replace_instances = _original(FakeAutoScalingGroup, "replace_autoscaling_group_instances")
    active_instances = _original(FakeAutoScalingGroup, "active_instances")
    update_attached = _original(AutoScalingBackend, "update_attached_target_groups")
    attach = _original(AutoScalingBackend, "attach_load_balancer_target_groups")
    detach = _original(AutoScalingBackend, "detach_load_balancer_target_groups")
    delete_response = _original(AutoScalingResponse, "delete_auto_scaling_group")
    create_group = _original(AutoScalingBackend, "create_auto_scaling_group")

    def patched_create_group(self: AutoScalingBackend, *args: Any, **kwargs: Any) -> FakeAutoScalingGroup:
        group = create_group(self, *args, **kwargs)
        if active_layer() is not None:
            # AWS: an SDK create without HealthCheckGracePeriod, or with 0, has no grace period;
            # moto stores 300 for both. Only the value is modelled, not Auto Scaling acting on it.
            group.health_check_grace_period = int(kwargs.get("health_check_period") or 0)
        return group

    def patched_replace(
        self: FakeAutoScalingGroup, count_needed: int, propagated_tags: dict[str, str]
    ) -> None:
        layer = active_layer()
        before = set(map(id, self.instance_states))
        replace_instances(self, count_needed, propagated_tags)
        if layer is None:
            return
        for state in [s for s in self.instance_states if id(s) not in before]:
            state.lifecycle_state = "Pending"
            layer.schedule(
                layer.settings.boot_seconds,
                f"{state.instance.id} of {self.name} InService",
                lambda s=state: _boot(self, s),
            )

    def patched_active_instances(self: FakeAutoScalingGroup) -> list[InstanceState]:
        if active_layer() is None:
            return active_instances(self)
        # Pending instances count toward capacity, or every capacity change would launch them again.
        return [s for s in self.instance_states if s.lifecycle_state in ("Pending", "InService")]

    def patched_update_attached(self: AutoScalingBackend, group_name: str) -> None:
        if active_layer() is None:
            return update_attached(self, group_name)
        group = self.autoscaling_groups[group_name]
        if _live(group):
            # Only InService instances are registered; Pending ones register when they get there.
            _register(group, list(group.target_group_arns), _in_service(group))
        return None

    def patched_attach(self: AutoScalingBackend, group_name: str, target_group_arns: list[str]) -> None:
        layer = active_layer()
        if layer is None:
            return attach(self, group_name, target_group_arns)
        group = self.autoscaling_groups[group_name]
        self.elbv2_backend.describe_target_groups(
            target_group_arns=target_group_arns, load_balancer_arn=None, names=None
        )
        group.append_target_groups(target_group_arns)

        def sync() -> None:
            if _live(group):
                arns = [a for a in target_group_arns if a in group.target_group_arns]
                _register(group, arns, _in_service(group))

        layer.schedule(
            layer.settings.lb_sync_seconds, f"register {group_name} in {len(target_group_arns)} TG(s)", sync
        )
        return None

    def patched_detach(self: AutoScalingBackend, group_name: str, target_group_arns: list[str]) -> None:
        layer = active_layer()
        if layer is None:
            return detach(self, group_name, target_group_arns)
        group = self.autoscaling_groups[group_name]
        group.target_group_arns = [a for a in group.target_group_arns if a not in target_group_arns]

        def sync() -> None:
            arns = [a for a in target_group_arns if a not in group.target_group_arns]
            _deregister(group, arns, {s.instance.id for s in group.instance_states})

        layer.schedule(layer.settings.lb_sync_seconds, f"deregister {group_name} from TG(s)", sync)
        return None

    def patched_delete_response(self: AutoScalingResponse) -> ActionResult:
        layer = active_layer()
        if layer is None:
            return delete_response(self)
        group_name = self._get_param("AutoScalingGroupName")
        force = self._get_bool_param("ForceDelete", False)
        group = self.autoscaling_backend.autoscaling_groups.get(group_name)
        if group is None or getattr(group, "status", None) == DELETE_IN_PROGRESS:
            return delete_response(self) if group is None else EmptyResult()
        if group.instance_states and not force:
            raise ResourceInUseError(
                "You cannot delete an AutoScalingGroup while there are instances or pending Spot "
                "instance request(s) still in the group."
            )
        _force_delete(layer, self.autoscaling_backend, group)
        return EmptyResult()

    FakeAutoScalingGroup.replace_autoscaling_group_instances = patched_replace  # type: ignore[method-assign]
    FakeAutoScalingGroup.active_instances = patched_active_instances  # type: ignore[method-assign]
    AutoScalingBackend.update_attached_target_groups = patched_update_attached  # type: ignore[method-assign]
    AutoScalingBackend.attach_load_balancer_target_groups = patched_attach  # type: ignore[method-assign]
    AutoScalingBackend.detach_load_balancer_target_groups = patched_detach  # type: ignore[method-assign]
    AutoScalingResponse.delete_auto_scaling_group = patched_delete_response  # type: ignore[method-assign]
    AutoScalingBackend.create_auto_scaling_group = patched_create_group  # type: ignore[method-assign]


def _force_delete(layer: Layer, backend: AutoScalingBackend, group: FakeAutoScalingGroup) -> None:
    """Terminate every instance, scale-in protected or not, then drop the group after a while."""
    group.status = DELETE_IN_PROGRESS  # type: ignore[attr-defined]
    group.desired_capacity = group.min_size = group.max_size = 0
    instance_ids = [s.instance.id for s in group.instance_states]
    for state in group.instance_states:
        state.lifecycle_state = "Terminating"
    if instance_ids:
        # The patched terminate_instances deregisters them everywhere, so their targets drain.
        backend.ec2_backend.terminate_instances(instance_ids)
    log.info("standin: %s force-deleted, terminating %s", group.name, instance_ids)

    def gone() -> None:
        if backend.autoscaling_groups.get(group.name) is group:
            backend.autoscaling_groups.pop(group.name)

    layer.schedule(layer.settings.group_delete_seconds, f"{group.name} deleted", gone)


__all__ = ["DELETE_IN_PROGRESS", "install"]
