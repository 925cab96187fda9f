"""The bake phase: one image per app, version and template content, built once and deployed many times."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import WaiterError

from immudeploy.aws.connection import PackerAwsSettings
from immudeploy.aws.images import find_image
from immudeploy.core.config import RELEASE_URL_VERSION
from immudeploy.core.errors import BakeError, InvalidInput, WaitTimeout
from immudeploy.core.naming import (
    TAG_APP,
    TAG_BAKE_FINGERPRINT,
    TAG_BASE_IMAGE,
    TAG_VERSION,
    as_aws_tags,
    from_aws_tags,
    identity_tags,
    validate_ami_id,
    validate_app,
    validate_environment,
    validate_git_sha,
    validate_version,
)
from immudeploy.release.packer import PackerRunner

log = logging.getLogger(__name__)

# Everything in a template directory defines the image except Packer's download cache and dot files.
IGNORED_TEMPLATE_PARTS = ("packer_cache", "__pycache__")
DEFAULT_BAKE_TIMEOUT_SECONDS = 3600
IMAGE_AVAILABLE_TIMEOUT_SECONDS = 1800


@dataclass(frozen=True)
class BaseImage:
    """Either a fixed image id or the newest image matching a name pattern and owners."""

    image_id: str | None = None
    name_pattern: str | None = None
    owners: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.image_id:
            validate_ami_id(self.image_id, "base_image.image_id")
        elif not self.name_pattern:
            raise InvalidInput("base_image", "needs an image_id or a name_pattern")


@dataclass(frozen=True)
class BakeRequest:
    app: str
    version: str
    environment: str
    template_dir: Path
    base_image: BaseImage
    instance_type: str = "t3.micro"
    git_sha: str | None = None
    release_url: str = ""
    force: bool = False
    timeout_seconds: float = DEFAULT_BAKE_TIMEOUT_SECONDS
    extra_vars: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_app(self.app)
        validate_version(self.version)
        validate_environment(self.environment)
        if self.git_sha:
            validate_git_sha(self.git_sha)
        if not Path(self.template_dir).is_dir():
            raise InvalidInput("template_dir", f"{self.template_dir} is not a directory")
        if self.timeout_seconds <= 0:
            raise InvalidInput("bake_timeout", "must be a positive number of seconds")
        if self.release_url and RELEASE_URL_VERSION not in self.release_url:
            raise InvalidInput("release_url", f"must contain {RELEASE_URL_VERSION}, got {self.release_url!r}")

    @property
    def resolved_release_url(self) -> str:
        """The artifact of this version: `{version}` replaced by the validated version, nothing else.

        A plain replace, not str.format: the URL is data (it reaches Packer as a variable, never a
        shell), and no other brace in it may pull in anything.
        """
        return self.release_url.replace(RELEASE_URL_VERSION, validate_version(self.version))


@dataclass(frozen=True)
class BakedImage:
    image_id: str
    name: str
    reused: bool
    base_image_id: str
    fingerprint: str


def template_fingerprint(template_dir: Path, inputs: dict[str, str]) -> str:
    """sha256 over the template's files and the inputs that change what the image contains."""
    digest = hashlib.sha256()
    root = Path(template_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if any(part in IGNORED_TEMPLATE_PARTS or part.startswith(".") for part in relative.parts):
            continue
        digest.update(relative.as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    digest.update(json.dumps(inputs, sort_keys=True).encode())
    return digest.hexdigest()


def image_name(app: str, version: str, fingerprint: str, unique: bool = False) -> str:
    """Deterministic, so a retry after a timed-out bake finds the registered image by name."""
    safe_version = version.replace("+", "-")  # '+' is not allowed in AMI names
    name = f"{app}-{safe_version}-{fingerprint[:12]}"
    if unique:
        name += "-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return name


def resolve_base_image(ec2: Any, base: BaseImage) -> str:
    """The base image id: the given one if it exists, else the newest available match."""
    if base.image_id:
        if find_image(ec2, base.image_id) is None:
            raise InvalidInput("base_image.image_id", f"{base.image_id} does not exist in this region")
        return base.image_id
    kwargs: dict[str, Any] = {
        "Filters": [
            {"Name": "name", "Values": [base.name_pattern]},
            {"Name": "state", "Values": ["available"]},
        ]
    }
    if base.owners:
        kwargs["Owners"] = list(base.owners)
    images = ec2.describe_images(**kwargs).get("Images", [])
    if not images:
        raise InvalidInput("base_image.name_pattern", f"no available image matches {base.name_pattern!r}")
    # Ties in creation date (one-second resolution) go to the later name: families put dates in names.
    newest = max(images, key=lambda image: (image.get("CreationDate", ""), image.get("Name", "")))
    return newest["ImageId"]


def find_baked_image(ec2: Any, app: str, version: str, fingerprint: str, name: str) -> dict[str, Any] | None:
    """An image of this app, version and fingerprint (by tags, or by name if tagging never happened)."""
    by_tags = ec2.describe_images(
        Owners=["self"],
        Filters=[
            {"Name": f"tag:{TAG_APP}", "Values": [app]},
            {"Name": f"tag:{TAG_VERSION}", "Values": [version]},
            {"Name": f"tag:{TAG_BAKE_FINGERPRINT}", "Values": [fingerprint]},
        ],
    ).get("Images", [])
    by_name = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}]).get(
        "Images", []
    )
    candidates = [i for i in by_tags + by_name if i.get("State") in ("available", "pending")]
    if not candidates:
        return None
    return max(candidates, key=lambda image: image.get("CreationDate", ""))


def wait_until_available(ec2: Any, image_id: str, timeout: float, poll_interval: float = 10.0) -> None:
    """Wait for the image with EC2's own `image_available` waiter (it fails on state `failed`)."""
    attempts = max(1, math.ceil(timeout / max(poll_interval, 0.001)))
    try:
        ec2.get_waiter("image_available").wait(
            ImageIds=[image_id], WaiterConfig={"Delay": poll_interval, "MaxAttempts": attempts}
        )
    except WaiterError as error:
        images = (error.last_response or {}).get("Images") or []
        state = images[0].get("State", "unknown") if images else "missing"
        if "Max attempts exceeded" in str(error):
            raise WaitTimeout(
                f"image {image_id} still {state} after {timeout:.0f} s (waiting for 'available')"
            ) from error
        raise BakeError(f"image {image_id} is {state}: {error}") from error


def packer_source(settings: PackerAwsSettings) -> str:
    """A local stand-in gets the communicator-less source; SSH into moto's fake address would hang."""
    return "amazon-ebs.local" if settings.ec2_endpoint else "amazon-ebs.aws"


def bake_image(
    ec2: Any, runner: PackerRunner, settings: PackerAwsSettings, request: BakeRequest
) -> BakedImage:
    """Return the image for this request, running Packer only if no matching image exists yet."""
    base_image_id = resolve_base_image(ec2, request.base_image)
    release_url = request.resolved_release_url
    # The resolved URL too: a rebuild of 1.4.2 must install 1.4.2's artifact, and an artifact moved to
    # another URL is another image.
    inputs = {
        "base_image_id": base_image_id,
        "instance_type": request.instance_type,
        "release_url": release_url,
        **request.extra_vars,
    }
    fingerprint = template_fingerprint(request.template_dir, inputs)
    name = image_name(request.app, request.version, fingerprint)
    tags = {
        **identity_tags(request.app, request.environment, request.version),
        TAG_BAKE_FINGERPRINT: fingerprint,
        TAG_BASE_IMAGE: base_image_id,
    }
    if request.git_sha:
        tags["immutable:git-sha"] = request.git_sha

    if not request.force:
        existing = find_baked_image(ec2, request.app, request.version, fingerprint, name)
        if existing is not None:
            image_id = existing["ImageId"]
            log.info("Image %s (%s) already baked from this template; not running packer", image_id, name)
            wait_until_available(ec2, image_id, IMAGE_AVAILABLE_TIMEOUT_SECONDS)
            _ensure_tags(ec2, existing, tags)
            return BakedImage(image_id, existing.get("Name", name), True, base_image_id, fingerprint)
    else:
        name = image_name(request.app, request.version, fingerprint, unique=True)

    variables = {
        "app": request.app,
        "version": request.version,
        "environment": request.environment,
        "base_ami_id": base_image_id,
        "instance_type": request.instance_type,
        "region": settings.region,
        "ec2_endpoint": settings.ec2_endpoint,
        "ami_name": name,
        "tags": tags,
        "release_url": release_url,
        **request.extra_vars,
    }
    with tempfile.TemporaryDirectory(prefix="immudeploy-bake-") as workdir:
        var_file = Path(workdir) / "bake.pkrvars.json"
        manifest = Path(workdir) / "manifest.json"
        variables["manifest_path"] = str(manifest)
        # Values go to Packer as data in a JSON file, never through a shell or a template string.
        var_file.write_text(json.dumps(variables, indent=2))
        source = packer_source(settings)
        log.info("Baking %s from %s with packer source %s", name, base_image_id, source)
        runner.validate(request.template_dir, var_file)
        run = runner.build(request.template_dir, var_file, only=source, timeout=request.timeout_seconds)
        image_id = _image_id_from(run.artifact_ids, manifest)
    wait_until_available(ec2, image_id, IMAGE_AVAILABLE_TIMEOUT_SECONDS)
    log.info("Baked image %s (%s)", image_id, name)
    return BakedImage(image_id, name, False, base_image_id, fingerprint)


def _image_id_from(artifact_ids: list[str], manifest: Path) -> str:
    candidates = list(artifact_ids)
    if not candidates and manifest.exists():
        builds = json.loads(manifest.read_text()).get("builds", [])
        candidates = [b["artifact_id"] for b in builds if b.get("artifact_id")]
    for artifact in reversed(candidates):
        # "us-east-1:ami-0abc" (one region) or "r1:ami-1,r2:ami-2" (copied to several)
        for part in artifact.split(","):
            image_id = part.rsplit(":", 1)[-1]
            if image_id.startswith("ami-"):
                return image_id
    raise BakeError("packer finished but reported no image id (no artifact line, no manifest entry)")


def _ensure_tags(ec2: Any, image: dict[str, Any], tags: dict[str, str]) -> None:
    """A bake killed after registering but before tagging left an untagged image: finish the job."""
    present = from_aws_tags(image.get("Tags"))
    missing = {k: v for k, v in tags.items() if k not in present}
    if missing:
        ec2.create_tags(Resources=[image["ImageId"]], Tags=as_aws_tags(missing))


def default_template_dir() -> Path:
    """`IMMUDEPLOY_PACKER_DIR`, else the repository's `packer/` beside `plugins/`."""
    import os

    configured = os.environ.get("IMMUDEPLOY_PACKER_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[3] / "packer"
