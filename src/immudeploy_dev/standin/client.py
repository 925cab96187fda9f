"""StandInClient: the control API of a stand-in in another process, with the in-process StandIn's methods."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from types import TracebackType
from typing import Any

from .control import CONTROL_PREFIX


class StandInControlError(RuntimeError):
    pass


class RemoteFault:
    """A fault switched on in a remote stand-in; switch it off with .remove() or by leaving the `with`."""

    def __init__(self, client: StandInClient, data: dict[str, Any]) -> None:
        self.client = client
        self.data = data
        self.id: str = data["id"]

    def remove(self) -> None:
        # Already spent or expired: off either way.
        with contextlib.suppress(StandInControlError):
            self.client._call("DELETE", f"faults/{self.id}")

    def __enter__(self) -> RemoteFault:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()


class StandInClient:
    """Drive `python -m immudeploy_dev.standin` (or any StandIn) over HTTP; JSON in, JSON out."""

    def __init__(self, endpoint_url: str, timeout: float = 30.0) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, route: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.endpoint_url}{CONTROL_PREFIX}{route}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise StandInControlError(f"{method} {route}: {error.code} {error.read().decode()}") from error

    def health(self) -> dict[str, Any]:
        return self._call("GET", "health")

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.health()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def settings(self) -> dict[str, Any]:
        return self._call("GET", "settings")

    def configure(self, **settings: Any) -> dict[str, Any]:
        return self._call("POST", "settings", settings)

    def set_target_group(self, target_group_arn: str, *, drain_fraction: float) -> None:
        self._call(
            "POST", "target-groups", {"target_group_arn": target_group_arn, "drain_fraction": drain_fraction}
        )

    def mark_image_broken(self, image_id: str, broken: bool = True) -> None:
        self._call("POST", "broken", {"image_id": image_id, "broken": broken})

    def mark_instance_broken(self, instance_id: str, broken: bool = True) -> None:
        self._call("POST", "broken", {"instance_id": instance_id, "broken": broken})

    def inject(
        self,
        service: str,
        operation: str = "*",
        kind: str = "throttle",
        *,
        count: int | None = None,
        seconds: float | None = None,
        delay: float = 0.0,
        status: int | None = None,
        code: str | None = None,
    ) -> RemoteFault:
        body = {
            "service": service,
            "operation": operation,
            "kind": kind,
            "count": count,
            "seconds": seconds,
            "delay": delay,
            "status": status,
            "code": code,
        }
        return RemoteFault(self, self._call("POST", "faults", body))

    def faults(self) -> list[dict[str, Any]]:
        return self._call("GET", "faults")

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def injections(self) -> list[dict[str, Any]]:
        return self._call("GET", "injections")

    def outage(self, seconds: float) -> dict[str, Any]:
        """Starts the outage; the port refuses connections shortly after this returns."""
        return self._call("POST", "outage", {"seconds": seconds})

    def set_connections_closed(self, instance_id: str) -> int:
        return int(self._call("POST", "connections-closed", {"instance_id": instance_id})["drains_ended"])

    def reset(self) -> None:
        self._call("POST", "reset", {})
