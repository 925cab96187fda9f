"""AWS stand-in: moto 5.2.5 with AWS's timing (target health, draining, Auto Scaling) and faults on demand.

moto stays the AWS implementation; this layer only adds time and faults. Every duration below is in real-AWS
seconds and is multiplied by one `time_scale` (0.05 turns a 30 s health check interval into 1.5 s).

In-process (tests)::

    with StandIn(time_scale=0.05) as aws:          # serves on 127.0.0.1, free port
        boto3.client("elbv2", endpoint_url=aws.endpoint_url, ...)
        with aws.inject("ec2", "DescribeInstances", "throttle", count=2): ...
        aws.outage(3).wait()
        aws.set_connections_closed("i-0123")

As a process (demo, Airflow components in other processes)::

    python -m immudeploy_dev.standin --port 5000 --time-scale 0.05   # prints the endpoint URL when ready
    StandInClient("http://127.0.0.1:5000").inject("autoscaling", "*", "error", status=503, count=3)

Rules
=====

=========================== ======================================================= ==============================
Rule                        What the stand-in does (defaults)                       AWS documentation it follows
=========================== ======================================================= ==============================
New target                  ``initial`` / ``Elb.RegistrationInProgress`` until      ELB User Guide, "Health checks
                            HealthCheckIntervalSeconds x HealthyThresholdCount      for Application Load Balancer
                            (the group's own values; moto's defaults 30 s x 5),     target groups": target health
                            then ``healthy``.                                       status, reason codes
Broken target               Instance launched from an image tagged                  same page (Target.
                            ``standin:health=broken``, or listed in                 FailedHealthChecks)
                            ``broken_images`` (or the instance in
                            ``broken_instances``): ``initial``, then ``unhealthy``
                            / ``Target.FailedHealthChecks`` after
                            Interval x UnhealthyThresholdCount (default 30 s x 2).
Health checks disabled      ``unavailable`` / ``Target.HealthCheckDisabled``.       same page
Deregistered or terminated  ``draining`` / ``Target.DeregistrationInProgress`` for  ELB User Guide, "Target group
target                      ``drain_fraction`` (default 0.1) x                      attributes", Deregistration
                            ``deregistration_delay.timeout_seconds`` (default       delay: ends early when the
                            300 s, so 30 s), never longer than the delay; at once   target has no in-flight
                            if ``set_connections_closed(id)`` was called; then      requests and no active
                            gone from DescribeTargetHealth (asked by id:            connections
                            ``unused`` / ``Target.NotRegistered``).
ASG instance launch         ``Pending`` for ``boot_seconds`` (default 60 s), then   Auto Scaling User Guide,
                            ``InService``; only then registered in the group's      "Amazon EC2 Auto Scaling
                            target groups (and ``initial`` there). Pending          instance lifecycle"
                            instances count toward desired capacity.
Attach/Detach target groups The call returns at once; the group's InService         Auto Scaling API Reference,
                            instances are registered / deregistered (-> draining)   AttachLoadBalancerTargetGroups,
                            ``lb_sync_seconds`` later (default 2 s).                DetachLoadBalancerTargetGroups
Scale-in, terminate         Instances terminated by Auto Scaling or EC2 leave       Auto Scaling User Guide, "Use
                            their target groups through ``draining`` (moto leaves   Elastic Load Balancing..."
                            scaled-in targets registered and ``healthy``).          (deregistration on terminate)
DeleteAutoScalingGroup      Without ForceDelete and with instances: error           Auto Scaling API Reference,
                            ``ResourceInUse`` (400). With ForceDelete: every        DeleteAutoScalingGroup;
                            instance is terminated, scale-in protected or not       AutoScalingGroup.Status
                            (targets drain), the group shows Status ``Delete in
                            progress``, desired/min/max 0, instances
                            ``Terminating``, for ``group_delete_seconds``
                            (default 60 s), then disappears.
Throttling (on demand)      ``Throttling`` 400 for query APIs (autoscaling,         EC2 API Reference, "Request
                            elasticloadbalancing), ``RequestLimitExceeded`` 503     throttling"; Auto Scaling /
                            for ec2, ``ThrottlingException`` 400 for JSON APIs      ELB "Common errors"; botocore
                            (ssm).                                                  data/_retry.json (code+status)
5xx burst (on demand)       status 500 or 503: query ``InternalFailure`` /          "Common errors" pages; EC2
                            ``ServiceUnavailable``; ec2 ``InternalError`` /         "Error codes"
                            ``Unavailable``; JSON ``InternalServerError`` /
                            ``ServiceUnavailable``.
Latency, outage (on demand) ``delay`` seconds before the answer; the listening      (network faults, no AWS page)
                            socket closed (open connections cut) for T seconds,
                            then reopened on the same port.
=========================== ======================================================= ==============================

Faults match the SigV4 signing name (``ec2``, ``autoscaling``, ``elasticloadbalancing`` or its boto3 name
``elbv2``, ``ssm``; ``*`` for any) and the API Action (``*`` for any), are bounded by ``count`` calls and/or
``seconds`` of wall-clock time (fault times are never scaled), are switched off by leaving their ``with``, and
are logged (logger ``immudeploy_dev.standin``, and ``StandIn.injections`` / ``GET /_standin/injections``).

Not modelled
============
- EC2 instance states: instances are ``running`` at once and ``terminated`` at once (moto). Auto Scaling
  terminates at once too, while AWS drains first and terminates after.
- Lifecycle hooks (``Pending:Wait`` ...), warm pools, instance refresh, ELB health check type of the ASG
  (unhealthy targets are never replaced). HealthCheckGracePeriod is only stored, as AWS stores it (absent
  or 0 means none; moto makes both 300), never acted on; it counts in real seconds, not scaled.
- ``Target.NotInUse`` (target group without a load balancer), ``Target.Timeout`` /
  ``Target.ResponseCodeMismatch``, health check path and matcher, slow start, cross-zone and AZ rules.
- A healthy target turning unhealthy: image brokenness is judged at registration; ``mark_instance_broken``
  applies at once, counted from registration.
- DescribeTrafficSources and the ``Removing`` state of a detaching target group (moto drops it at once).
- Classic Load Balancers; real rate limits (throttling happens only on demand).

Scope of the patches
====================
The moto patches are process-wide but inert outside the stand-in: they act only inside a request served by a
StandIn (or one of its timeline events), so a plain ThreadedMotoServer or ``mock_aws`` in the same process
behaves as plain moto. moto's backend state is process-global, though: every moto server in one process
shares it, and ``reset()`` (``POST /moto-api/reset``) resets it for all of them.
"""

from .client import RemoteFault, StandInClient, StandInControlError
from .faults import Fault, Injection
from .layer import ManualClock, Settings
from .server import Outage, StandIn

__all__ = [
    "Fault",
    "Injection",
    "ManualClock",
    "Outage",
    "RemoteFault",
    "Settings",
    "StandIn",
    "StandInClient",
    "StandInControlError",
]
