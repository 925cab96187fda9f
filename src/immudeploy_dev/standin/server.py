"""StandIn: moto's WSGI app behind the layer's middleware, served by a werkzeug thread that can go dark."""

from __future__ import annotations

import contextlib
import http
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import ThreadedWSGIServer

from . import patches
from .control import CONTROL_PREFIX, handle_control
from .faults import Call, Fault, FaultRegistry, Injection, error_response, identify, make_fault
from .layer import Layer, Settings, log

StartResponse = Callable[..., Any]


class _Server(ThreadedWSGIServer):
    """A threaded werkzeug server that knows its open connections, so an outage can cut them."""

    def __init__(self, host: str, port: int, app: Callable[..., Iterable[bytes]]) -> None:
        self.connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(host, port, app, handler=MotoRequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._connections_lock:
            connections = list(self.connections)
        for sock in connections:
            # Already closed by its client: nothing to cut.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Outage:
    """A running outage: `started` once the port refuses connections, `ended` once it answers again."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = threading.Event()
        self.ended = threading.Event()
        self._cancel = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the endpoint answers again; False on timeout."""
        return self.ended.wait(timeout)


class StandInApp:
    """WSGI middleware: control API, faults, then moto with the layer active and its timeline advanced."""

    def __init__(self, standin: StandIn) -> None:
        self.standin = standin
        self.moto = DomainDispatcherApplication(create_backend_app)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL_PREFIX):
            return handle_control(self.standin, environ, start_response)
        layer = self.standin.layer
        if path.startswith("/moto-api/reset"):
            with layer.lock:
                body = self._moto(environ, start_response)
                self.standin._reset_layer()
            return [body]
        call = identify(environ)
        delay, fault = self.standin.faults.take(call)
        if delay:
            time.sleep(delay)
        if fault is not None:
            return self._error(fault, call, start_response)
        with layer.lock, layer.activated():
            layer.advance()
            return [self._moto(environ, start_response)]

    def _moto(self, environ: dict[str, Any], start_response: StartResponse) -> bytes:
        result = self.moto(environ, start_response)
        try:
            return b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    @staticmethod
    def _error(fault: Fault, call: Call, start_response: StartResponse) -> list[bytes]:
        status, headers, body = error_response(fault, call)
        start_response(f"{status} {http.HTTPStatus(status).phrase}", headers)
        return [body]


class StandIn:
    """moto with AWS's timing and faults on demand, on 127.0.0.1 (see the package docstring for the rules).

    Starts serving on construction; use as a context manager or call stop(). `clock` defaults to
    time.monotonic; pass a ManualClock to move the layer's time by hand (faults and outages stay on
    wall-clock time).
    """

    def __init__(
        self,
        time_scale: float = 1.0,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        **settings: Any,
    ) -> None:
        patches.install()
        self.settings = Settings()
        self.settings.update({"time_scale": time_scale, **settings})
        self.layer = Layer(self.settings, clock)
        self.faults = FaultRegistry()
        self.app = StandInApp(self)
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._server_lock = threading.Lock()
        self._outages: list[Outage] = []
        self._stopping = False
        self._serve()

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _serve(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                server = _Server(self.host, self.port, self.app)
                break
            except (OSError, SystemExit):
                # werkzeug exits on a busy port; right after an outage the old socket may linger briefly.
                if self.port == 0 or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="standin-server", daemon=True
        )
        self._thread.start()

    def _close(self) -> None:
        server, thread = self._server, self._thread
        self._server = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if thread is not None:
            thread.join(timeout=5)

    def stop(self) -> None:
        """Stop serving (ends any running outage without reopening the port)."""
        self._stopping = True
        for outage in self._outages:
            outage._cancel.set()
        with self._server_lock:
            self._close()

    def __enter__(self) -> StandIn:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Reset moto (POST /moto-api/reset: every moto backend of this process) and the layer's state.

        Settings stay; faults, the injection log, target records and pending events go.
        """
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def _reset_layer(self) -> None:
        self.layer.reset()
        self.faults.clear(log_too=True)

    # --- faults -----------------------------------------------------------------------------------

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
    ) -> Fault:
        """Switch a fault on; use the result as a context manager (or call .remove()) to switch it off.

        kind: "throttle" (the service's throttling code and status), "error" (status 500 or 503, the
        protocol's InternalFailure/ServiceUnavailable code), "latency" (`delay` seconds added).
        service: SigV4 signing name ("ec2", "autoscaling", "elasticloadbalancing" or "elbv2", "ssm") or "*";
        operation: API Action name ("DescribeTargetHealth") or "*". Bounded by `count` calls and/or
        `seconds` of wall-clock time.
        """
        fault = make_fault(
            service, operation, kind, count=count, seconds=seconds, delay=delay, status=status, code=code
        )
        return self.faults.add(fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    @property
    def injections(self) -> list[Injection]:
        """Everything injected so far, oldest first (a copy)."""
        with self.faults._lock:
            return list(self.faults.injections)

    def outage(self, seconds: float) -> Outage:
        """Close the listening socket (and cut open connections) for `seconds`, then reopen the same port.

        Returns once connections are refused; `.wait()` on the result blocks until the port answers again.
        """
        outage = Outage(float(seconds))
        self._outages.append(outage)
        threading.Thread(target=self._run_outage, args=(outage,), name="standin-outage", daemon=True).start()
        outage.started.wait(10)
        return outage

    def _run_outage(self, outage: Outage) -> None:
        with self._server_lock:
            if self._stopping or self._server is None:
                outage.started.set()
                outage.ended.set()
                return
            self._close()
            self.faults.record(Injection(time.time(), "outage", "*", "*", "outage", delay=outage.seconds))
            outage.started.set()
            outage._cancel.wait(outage.seconds)
            if not self._stopping:
                self._serve()
                log.warning("standin outage over, serving again on %s", self.endpoint_url)
        outage.ended.set()

    # --- behaviour settings -----------------------------------------------------------------------

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings (see Settings) for everything scheduled from now on; returns them all."""
        with self.layer.lock:
            self.settings.update(settings)
            return self.settings.to_dict()

    def set_target_group(self, target_group_arn: str, *, drain_fraction: float) -> None:
        """Per target group drain fraction (1.0: drains last the full deregistration delay)."""
        if not 0 <= float(drain_fraction) <= 1:
            raise ValueError(f"drain_fraction is a share of the delay (0..1), got {drain_fraction}")
        with self.layer.lock:
            self.settings.target_groups[target_group_arn] = {"drain_fraction": float(drain_fraction)}

    def mark_image_broken(self, image_id: str, broken: bool = True) -> None:
        """Targets launched from this image fail their health checks (same as tag standin:health=broken)."""
        with self.layer.lock:
            (self.settings.broken_images.add if broken else self.settings.broken_images.discard)(image_id)

    def mark_instance_broken(self, instance_id: str, broken: bool = True) -> None:
        with self.layer.lock:
            (self.settings.broken_instances.add if broken else self.settings.broken_instances.discard)(
                instance_id
            )

    def set_connections_closed(self, instance_id: str) -> int:
        """The instance has no connections left: its drains end now (and later ones at once).

        Returns how many drains this ended.
        """
        with self.layer.lock:
            self.layer.advance()
            return self.layer.set_connections_closed(instance_id)

    def advance(self) -> None:
        """Fire due timeline events now (requests do this anyway; useful after moving a ManualClock)."""
        self.layer.advance()

    def describe(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint_url,
            "settings": self.settings.to_dict(),
            "faults": [f.to_dict() for f in self.faults.active()],
            "pending_events": self.layer.pending_events(),
        }
