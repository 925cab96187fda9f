"""Operators that wait: instances InService, the health gate before traffic moves, the drain after it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, ClassVar

from airflow.sdk import BaseOperator, Context

from immudeploy.airflow import links
from immudeploy.aws import waits
from immudeploy.aws.connection import DEFAULT_CONN_ID
from immudeploy.aws.groups.inventory import describe_asg
from immudeploy.core.errors import DeployError, InvalidInput, WaitTimeout

# The trigger enforces the wait's own timeout and names what is late; Airflow's defer timeout only
# catches a trigger that never answered.
DEFER_TIMEOUT_MARGIN = 300.0


class _ImmutableWaitOperator(BaseOperator):
    """Check once (done: return, failed: raise), then defer to ImmutableWaitTrigger or block in wait_for."""

    kind: ClassVar[str]
    # The DeployPlan field that holds this wait's timeout when the operator is given a plan.
    plan_timeout_field: ClassVar[str]
    template_fields: Sequence[str] = (
        "plan",
        "group_name",
        "instance_ids",
        "target_group_arns",
        "aws_conn_id",
        "region_name",
        "timeout_seconds",
    )
    ui_color = "#f0e4ff"
    operator_extra_links = (links.ServerGroupLink(), links.TargetGroupLink())

    def __init__(
        self,
        *,
        group_name: str | None = None,
        instance_ids: list[str] | None = None,
        target_group_arns: list[str] | None = None,
        aws_conn_id: str = DEFAULT_CONN_ID,
        region_name: str | None = None,
        timeout_seconds: float | None = None,
        poll_interval: float = 10.0,
        deferrable: bool = True,
        plan: Any = None,
        staging: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # A run's plan (the prepare task's XCom) fills in target groups and the timeout not given.
        self.plan = plan
        self.staging = staging
        self.group_name = group_name
        self.instance_ids = instance_ids
        self.target_group_arns = target_group_arns
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.timeout_seconds = timeout_seconds
        self.poll_interval = poll_interval
        self.deferrable = deferrable
        self._aws_clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        """One client per service per run, built lazily (never at DAG parse time)."""
        # Through the trigger module: tests replace one function for the operator and the trigger.
        from immudeploy.airflow import triggers as trigger_waits

        if service not in self._aws_clients:
            self._aws_clients[service] = trigger_waits.build_client(
                service, self.aws_conn_id, self.region_name
            )
        return self._aws_clients[service]

    def trigger_args(self) -> dict[str, Any]:
        """The wait_check keyword arguments (JSON-serialisable): what exactly this run waits for."""
        raise NotImplementedError

    def default_timeout(self) -> float:
        raise NotImplementedError

    def result(self, trigger_args: dict[str, Any]) -> Any:
        """The task's XCom: the instance ids waited for (small)."""
        return trigger_args.get("instance_ids")

    def _push_link_values(self, context: Context) -> None:
        """What the console links of this task point at (the group and the first target group)."""
        ti = context.get("ti")
        if ti is None:  # executed outside a task run (unit tests)
            return
        ti.xcom_push(key=links.XCOM_REGION, value=self.client("elbv2").meta.region_name)
        if self.group_name:
            ti.xcom_push(key=links.XCOM_SERVER_GROUP_NAME, value=self.group_name)
        arns = [self.target_group_arns] if isinstance(self.target_group_arns, str) else self.target_group_arns
        if arns:
            ti.xcom_push(key=links.XCOM_TARGET_GROUP_ARN, value=arns[0])

    def _apply_plan(self) -> None:
        if not self.plan:
            return
        from immudeploy.airflow.xcom import plan_from_xcom

        deploy = plan_from_xcom(self.plan)
        if self.timeout_seconds is None:
            self.timeout_seconds = getattr(deploy, self.plan_timeout_field)
        if self.target_group_arns is None:
            if self.staging:
                self.target_group_arns = [deploy.staging.target_group_arn] if deploy.staging else []
            else:
                self.target_group_arns = list(deploy.target_group_arns)

    def execute(self, context: Context) -> Any:
        self._apply_plan()
        self._push_link_values(context)
        args = self.trigger_args()
        what, check = waits.wait_check(self.kind, self.client(waits.WAIT_SERVICES[self.kind]), **args)
        # A rerun after success finds the work done and returns without waiting.
        status = check()
        self.log.info("%s: %s", what, status.message)
        if status.failed:
            raise DeployError(waits.failure_message(what, status.message))
        if status.done:
            return self.result(args)
        timeout = float(self.timeout_seconds) if self.timeout_seconds is not None else self.default_timeout()
        if not self.deferrable:
            waits.wait_for(check, what=what, timeout=timeout, poll_interval=self.poll_interval, log=self.log)
            return self.result(args)
        from immudeploy.airflow.triggers import TRIGGERS

        self.log.info("Deferring for up to %.0fs while waiting for %s", timeout, what)
        self.defer(
            trigger=TRIGGERS[self.kind](
                aws_conn_id=self.aws_conn_id,
                region_name=self.region_name,
                poll_interval=self.poll_interval,
                timeout_seconds=timeout,
                **args,
            ),
            method_name="execute_complete",
            kwargs={"trigger_args": args},
            timeout=timedelta(seconds=timeout + DEFER_TIMEOUT_MARGIN),
        )

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any] | None = None,
        trigger_args: dict[str, Any] | None = None,
    ) -> Any:
        if not event or "status" not in event:
            raise DeployError(f"{self.task_id}: the wait ended without a status: {event!r}")
        message = event.get("message", "")
        if event["status"] == "timeout":
            raise WaitTimeout(message)
        if event["status"] != "success":
            raise DeployError(message)
        self.log.info("Done: %s", message)
        # dag.test() resumes with the event alone (it drops the defer kwargs): the event says it too.
        return self.result(trigger_args or dict(event.get("waited_for") or {}))


class WaitForInServiceOperator(_ImmutableWaitOperator):
    """Wait until `group_name` has `expected_count` (default: its desired capacity) InService, Healthy instances.

    Returns the ids of the group's instances.
    """

    kind = "in_service"
    plan_timeout_field = "in_service_timeout_seconds"
    template_fields: Sequence[str] = (*_ImmutableWaitOperator.template_fields, "expected_count")

    def __init__(self, *, group_name: str, expected_count: int | None = None, **kwargs: Any) -> None:
        super().__init__(group_name=group_name, **kwargs)
        self.expected_count = expected_count

    def trigger_args(self) -> dict[str, Any]:
        expected = self.expected_count
        if expected is None:
            group = describe_asg(self.client("autoscaling"), self.group_name)
            if group is None:
                raise DeployError(f"Auto Scaling group {self.group_name} does not exist")
            expected = int(group["DesiredCapacity"])
        return {"group_name": self.group_name, "expected_count": int(expected)}

    def default_timeout(self) -> float:
        return waits.DEFAULT_IN_SERVICE_TIMEOUT

    def result(self, trigger_args: dict[str, Any]) -> list[str]:
        return waits.group_instance_ids(self.client("autoscaling"), trigger_args["group_name"], serving=True)


class _TargetGroupWaitOperator(_ImmutableWaitOperator):
    """Common inputs of the health gate and the drain: target groups plus the instances (or their group)."""

    def __init__(self, *, target_group_arns: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(target_group_arns=target_group_arns, **kwargs)

    def _arns(self) -> list[str]:
        arns = [self.target_group_arns] if isinstance(self.target_group_arns, str) else self.target_group_arns
        if not arns:
            raise InvalidInput("target_group_arns", "at least one target group ARN is needed")
        return list(arns)

    def _instance_ids(self) -> list[str] | None:
        if self.instance_ids is not None:
            return list(self.instance_ids)
        if self.group_name:
            # The gate must not wait for instances on their way out; the drain wants them all.
            return waits.group_instance_ids(
                self.client("autoscaling"), self.group_name, serving=self.kind == "healthy"
            )
        return None


class HealthGateOperator(_TargetGroupWaitOperator):
    """Wait until every instance (given, or of `group_name`) is healthy in every target group.

    Fails as soon as one is unhealthy after its Auto Scaling group's health check grace period
    (counted from its launch), naming it and AWS's reason, unless `fail_fast=False` (then only the
    timeout fails it). The timeout defaults to what the groups' health check settings need.
    Returns the instance ids.
    """

    kind = "healthy"
    plan_timeout_field = "health_timeout_seconds"

    def __init__(self, *, fail_fast: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_fast = fail_fast

    def trigger_args(self) -> dict[str, Any]:
        instance_ids = self._instance_ids()
        if instance_ids is None:
            raise InvalidInput("instance_ids", "give instance_ids or group_name for the health gate")
        args: dict[str, Any] = {
            "target_group_arns": self._arns(),
            "instance_ids": instance_ids,
            "fail_fast": self.fail_fast,
        }
        if self.fail_fast:
            # Read once, here: the blocking wait and the trigger then judge the same deadlines.
            args["grace_ends"] = waits.health_check_grace_ends(
                self.client("autoscaling"), self.client("ec2"), instance_ids
            )
        return args

    def default_timeout(self) -> float:
        return waits.health_gate_timeout(self.client("elbv2"), self._arns())


class DrainSensor(_TargetGroupWaitOperator):
    """Wait until the instances (given, of `group_name`, or else every target) stop draining.

    A deferring operator rather than a BaseSensorOperator: the sensor loop's timeout message
    cannot name the targets still draining, and reschedule mode would lose the wait's status.
    The timeout defaults to the longest deregistration delay plus a margin. Returns the instance ids.
    """

    kind = "drained"
    plan_timeout_field = "drain_timeout_seconds"
    ui_color = "#e6f1f2"

    def trigger_args(self) -> dict[str, Any]:
        return {"target_group_arns": self._arns(), "instance_ids": self._instance_ids()}

    def default_timeout(self) -> float:
        return waits.drain_timeout(self.client("elbv2"), self._arns())
