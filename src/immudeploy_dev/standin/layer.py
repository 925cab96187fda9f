"""The layer's own state: settings, the scaled timeline of pending AWS events, and target health records."""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

log = logging.getLogger("immudeploy_dev.standin")

# The moto patches consult this: set only while a layer serves a request (or fires its own events), so a
# plain moto server or mock_aws in the same process sees plain moto.
_ACTIVE: contextvars.ContextVar[Layer | None] = contextvars.ContextVar(
    "immudeploy_standin_layer", default=None
)

BROKEN_TAG = "standin:health"
BROKEN_VALUE = "broken"

# (state, reason, description) as ELBv2 DescribeTargetHealth reports them.
INITIAL = ("initial", "Elb.RegistrationInProgress", "Target registration is in progress")
UNHEALTHY = ("unhealthy", "Target.FailedHealthChecks", "Health checks failed")
DRAINING = ("draining", "Target.DeregistrationInProgress", "Target deregistration is in progress")
NOT_REGISTERED = ("unused", "Target.NotRegistered", "Target is not registered to the target group")
HEALTH_CHECK_DISABLED = ("unavailable", "Target.HealthCheckDisabled", "Health checks are disabled")
HEALTHY: tuple[str, str | None, str | None] = ("healthy", None, None)


def active_layer() -> Layer | None:
    """The layer serving the current request or event, None outside one (plain moto behaviour)."""
    return _ACTIVE.get()


class ManualClock:
    """A clock the test moves by hand: pass it as `clock=` to get exact, sleep-free timelines."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now


@dataclass
class Settings:
    """Durations in real-AWS seconds; the layer multiplies every one of them by `time_scale`."""

    time_scale: float = 1.0
    # Launch to InService of an Auto Scaling instance (EC2 boot plus status checks).
    boot_seconds: float = 60.0
    # Attach/DetachLoadBalancerTargetGroups return at once; the group's targets change this much later.
    lb_sync_seconds: float = 2.0
    # How long a force-deleted group shows Status "Delete in progress" before it disappears.
    group_delete_seconds: float = 60.0
    # Share of deregistration_delay.timeout_seconds a drain lasts before in-flight requests are done;
    # 1.0 models clients that hold connections open for the whole delay.
    drain_fraction: float = 0.1
    broken_images: set[str] = field(default_factory=set)
    broken_instances: set[str] = field(default_factory=set)
    # Per target group ARN: {"drain_fraction": float}.
    target_groups: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = sorted(value) if isinstance(value, set) else value
        return out

    def update(self, values: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown stand-in settings: {sorted(unknown)}")
        for name, value in values.items():
            if name in ("broken_images", "broken_instances"):
                value = set(value)
            elif name == "target_groups":
                value = {arn: dict(v) for arn, v in value.items()}
            else:
                value = float(value)
                # time_scale 0: AWS's order of events with no waiting (a detach still takes effect
                # on the next request, a force delete still terminates protected instances).
                if value < 0:
                    raise ValueError(f"{name} must be >= 0, got {value}")
                if name == "drain_fraction" and value > 1:
                    raise ValueError(f"drain_fraction is a share of the delay (0..1), got {value}")
            setattr(self, name, value)


@dataclass
class TargetRecord:
    """One target's life in one target group, in layer-clock seconds."""

    registered_at: float
    port: Any
    image_id: str | None
    image_tagged_broken: bool
    deregistered_at: float | None = None
    drain_until: float | None = None
    # The time scale when the target registered: its health checks keep that pace, so changing the
    # scale later (a test turning timing on) does not send long-healthy targets back to `initial`.
    time_scale: float | None = None


@dataclass(order=True)
class _Event:
    due: float
    seq: int
    label: str = field(compare=False)
    action: Callable[[], None] = field(compare=False)


class Layer:
    """Timeline and target records shared by the moto patches; every public method is thread-safe."""

    def __init__(self, settings: Settings | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or Settings()
        self.clock = clock
        # Moto's backends are not thread-safe and the server is threaded: requests and events take turns.
        self.lock = threading.RLock()
        self._events: list[_Event] = []
        self._seq = itertools.count()
        self._event_time: float | None = None
        self.records: dict[tuple[str, str], TargetRecord] = {}
        # Instances the test declared idle: their current and future drains end at once.
        self.idle_instances: set[str] = set()

    # --- time -------------------------------------------------------------------------------------

    def now(self) -> float:
        """The clock, or the due time of the event being fired, so chained effects start on schedule."""
        return self._event_time if self._event_time is not None else self.clock()

    def scaled(self, aws_seconds: float) -> float:
        return aws_seconds * self.settings.time_scale

    @contextlib.contextmanager
    def activated(self) -> Iterator[Layer]:
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def schedule(self, aws_seconds: float, label: str, action: Callable[[], None]) -> None:
        with self.lock:
            due = self.now() + self.scaled(aws_seconds)
            heapq.heappush(self._events, _Event(due, next(self._seq), label, action))
            log.debug("scheduled %s in %.3fs", label, due - self.now())

    def advance(self) -> None:
        """Fire every event that is due, oldest first; called before each request the layer serves."""
        with self.lock, self.activated():
            while self._events and self._events[0].due <= self.clock():
                event = heapq.heappop(self._events)
                self._event_time = event.due
                try:
                    log.info("standin event: %s", event.label)
                    event.action()
                except Exception:
                    # One broken event (a resource deleted meanwhile) must not stop the timeline.
                    log.exception("standin event failed: %s", event.label)
                finally:
                    self._event_time = None

    def pending_events(self) -> list[dict[str, Any]]:
        with self.lock:
            now = self.clock()
            return [{"label": e.label, "in_seconds": e.due - now} for e in sorted(self._events)]

    def reset(self) -> None:
        with self.lock:
            self._events.clear()
            self.records.clear()
            self.idle_instances.clear()

    # --- target health ----------------------------------------------------------------------------

    def on_register(self, tg_arn: str, target_id: str, port: Any, image_id: str | None, tagged: bool) -> None:
        with self.lock:
            self.records[(tg_arn, target_id)] = TargetRecord(
                self.now(), port, image_id, tagged, time_scale=self.settings.time_scale
            )
            # A target taking traffic again has connections again.
            self.idle_instances.discard(target_id)
            log.info("standin: %s registered in %s (initial)", target_id, tg_arn.rsplit("/", 2)[-2])

    def on_deregister(self, tg_arn: str, target_id: str, port: Any, delay_seconds: float) -> None:
        with self.lock:
            now = self.now()
            record = self.records.get((tg_arn, target_id))
            if record is None:
                # Registered while the layer was not active: it counts as long healthy.
                record = TargetRecord(float("-inf"), port, None, False)
                self.records[(tg_arn, target_id)] = record
            fraction = self.settings.target_groups.get(tg_arn, {}).get(
                "drain_fraction", self.settings.drain_fraction
            )
            drain = 0.0 if target_id in self.idle_instances else self.scaled(delay_seconds) * fraction
            record.deregistered_at = now
            record.drain_until = now + min(drain, self.scaled(delay_seconds))
            log.info("standin: %s draining from %s for %.3fs", target_id, tg_arn.rsplit("/", 2)[-2], drain)

    def draining_targets(self, tg_arn: str) -> list[dict[str, Any]]:
        with self.lock:
            now = self.now()
            return [
                {"Id": target_id, "Port": record.port}
                for (arn, target_id), record in self.records.items()
                if arn == tg_arn and record.drain_until is not None and now < record.drain_until
            ]

    def health(
        self,
        tg_arn: str,
        target_id: str,
        registered: bool,
        interval_seconds: float,
        healthy_threshold: int,
        unhealthy_threshold: int,
        checks_enabled: bool,
    ) -> tuple[str, str | None, str | None] | None:
        """The target's state now, or None when the layer never saw it (moto's answer stands)."""
        with self.lock:
            record = self.records.get((tg_arn, target_id))
            if record is None or registered != (record.drain_until is None):
                # Never seen, or (de)registered meanwhile through a plain moto server: moto's answer stands.
                return None
            now = self.now()
            if record.drain_until is not None:
                return DRAINING if now < record.drain_until else NOT_REGISTERED
            if not checks_enabled:
                return HEALTH_CHECK_DISABLED
            elapsed = now - record.registered_at
            scale = self.settings.time_scale if record.time_scale is None else record.time_scale
            interval = interval_seconds * scale
            if self.is_broken(target_id, record):
                return INITIAL if elapsed < interval * unhealthy_threshold else UNHEALTHY
            return INITIAL if elapsed < interval * healthy_threshold else HEALTHY

    def is_broken(self, target_id: str, record: TargetRecord) -> bool:
        return (
            record.image_tagged_broken
            or (record.image_id is not None and record.image_id in self.settings.broken_images)
            or target_id in self.settings.broken_instances
        )

    def set_connections_closed(self, instance_id: str) -> int:
        """Declare the instance idle: drains of it end now, and any later drain ends at once."""
        with self.lock:
            self.idle_instances.add(instance_id)
            now = self.now()
            ended = 0
            for (_, target_id), record in self.records.items():
                if target_id == instance_id and record.drain_until is not None and now < record.drain_until:
                    record.drain_until = now
                    ended += 1
            log.info("standin: connections of %s closed, %d drain(s) ended", instance_id, ended)
            return ended
