"""`python -m immudeploy_dev.standin`: run the stand-in as its own process for the demo and cross-process tests."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from .server import StandIn


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m immudeploy_dev.standin",
        description="moto with AWS's timing (target health, draining, Auto Scaling) and faults on demand. "
        "Prints the endpoint URL on stdout once it answers; stop it with SIGTERM or SIGINT.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000, help="0 picks a free port (default 5000)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiplies every AWS duration")
    parser.add_argument("--boot-seconds", type=float, default=60.0, help="ASG instance Pending -> InService")
    parser.add_argument("--lb-sync-seconds", type=float, default=2.0, help="attach/detach to target change")
    parser.add_argument("--group-delete-seconds", type=float, default=60.0, help="'Delete in progress' span")
    parser.add_argument("--drain-fraction", type=float, default=0.1, help="share of the deregistration delay")
    parser.add_argument("--broken-image", action="append", default=[], help="image id whose targets fail")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # The layer's own log is the point; werkzeug's access log would drown it.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    standin = StandIn(
        args.time_scale,
        host=args.host,
        port=args.port,
        boot_seconds=args.boot_seconds,
        lb_sync_seconds=args.lb_sync_seconds,
        group_delete_seconds=args.group_delete_seconds,
        drain_fraction=args.drain_fraction,
        broken_images=args.broken_image,
    )
    print(standin.endpoint_url, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
