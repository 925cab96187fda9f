"""Images: look one up, what is in use, delete those beyond retention."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from botocore.exceptions import ClientError

from immudeploy.aws.connection import AwsApi
from immudeploy.aws.errors import error_code
from immudeploy.aws.groups.inventory import (
    describe_groups,
    launch_template_specs,
    launch_template_versions,
    template_selector,
)
from immudeploy.core.errors import DeployError, InvalidInput
from immudeploy.core.naming import (
    TAG_APP,
    TAG_ENVIRONMENT,
    TAG_VERSION,
    from_aws_tags,
    validate_app,
)

log = logging.getLogger(__name__)


def images_in_use(clients: AwsApi, app: str | None = None) -> dict[str, list[str]]:
    """{image id: [group names]} over every version of every group's launch template(s).

    With `app`, only groups tagged immutable:app=app; without, every group in the region.
    """
    kwargs: dict[str, Any] = {}
    if app is not None:
        validate_app(app)
        kwargs["Filters"] = [{"Name": f"tag:{TAG_APP}", "Values": [app]}]
    used: dict[str, set[str]] = {}
    versions_cache: dict[tuple[str, str], list[dict[str, Any]]] = {}
    configurations: dict[str, list[str]] = {}
    for raw in describe_groups(clients, **kwargs):
        name = raw["AutoScalingGroupName"]
        for spec in launch_template_specs(raw):
            key = next(iter(template_selector(spec).items()))
            if key not in versions_cache:
                versions_cache[key] = launch_template_versions(clients, spec)
            for version in versions_cache[key]:
                image_id = version.get("LaunchTemplateData", {}).get("ImageId")
                if image_id:
                    used.setdefault(image_id, set()).add(name)
        if raw.get("LaunchConfigurationName"):
            configurations.setdefault(raw["LaunchConfigurationName"], []).append(name)
    names = list(configurations)
    for start in range(0, len(names), 50):
        response = clients.autoscaling.describe_launch_configurations(
            LaunchConfigurationNames=names[start : start + 50]
        )
        for configuration in response["LaunchConfigurations"]:
            for group_name in configurations[configuration["LaunchConfigurationName"]]:
                used.setdefault(configuration["ImageId"], set()).add(group_name)
    return {image_id: sorted(groups) for image_id, groups in sorted(used.items())}


def _images_of_live_instances(clients: AwsApi, image_ids: list[str]) -> set[str]:
    if not image_ids:
        return set()
    paginator = clients.ec2.get_paginator("describe_instances")
    pages = paginator.paginate(
        Filters=[
            {"Name": "image-id", "Values": image_ids},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
        ]
    )
    return {i["ImageId"] for page in pages for r in page["Reservations"] for i in r["Instances"]}


def delete_unused_images(
    clients: AwsApi, app: str, keep: int, recorded: Collection[str] = (), *, dry_run: bool = False
) -> list[str]:
    """Deregister this app's images (and their snapshots) beyond the newest `keep` of each environment.

    Counted per environment (the image's immutable:environment tag): a burst of qa bakes never pushes
    prod's images out. Never deleted: an image in `recorded` (the caller passes the images of the last
    `keep` entries of every environment's deploy record: what a rollback would go to), one named by
    any version of any group's launch template in the region, or one running an instance. `keep` is
    at least 1: the newest image may be baked but not launched yet. With `dry_run`, nothing is
    deregistered: the ids it would deregister.
    """
    validate_app(app)
    if not isinstance(keep, int) or keep < 1:
        raise InvalidInput("keep", f"must be an integer >= 1, got {keep!r}")
    paginator = clients.ec2.get_paginator("describe_images")
    pages = paginator.paginate(Owners=["self"], Filters=[{"Name": f"tag:{TAG_APP}", "Values": [app]}])
    by_environment: dict[str, list[dict[str, Any]]] = {}
    for page in pages:
        for image in page["Images"]:
            environment = from_aws_tags(image.get("Tags")).get(TAG_ENVIRONMENT, "")
            by_environment.setdefault(environment, []).append(image)
    beyond = []
    for images in by_environment.values():
        # CreationDate has one-second resolution: the name (which a bake makes unique) breaks ties.
        images.sort(key=lambda image: (image.get("CreationDate", ""), image.get("Name", "")), reverse=True)
        beyond.extend(images[keep:])
    in_use = set(images_in_use(clients)) | _images_of_live_instances(clients, [i["ImageId"] for i in beyond])
    deleted: list[str] = []
    for image in beyond:
        image_id = image["ImageId"]
        if image_id in recorded:
            log.info("Keeping image %s: a rollback target in the deploy record", image_id)
            continue
        if image_id in in_use:
            log.info("Keeping image %s: still in use", image_id)
            continue
        if dry_run:
            deleted.append(image_id)
            continue
        snapshots = [
            m["Ebs"]["SnapshotId"]
            for m in image.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")
        ]
        clients.ec2.deregister_image(ImageId=image_id)
        for snapshot_id in snapshots:
            try:
                clients.ec2.delete_snapshot(SnapshotId=snapshot_id)
            except ClientError as error:
                if error_code(error) != "InvalidSnapshot.NotFound":
                    raise
        log.info("Deregistered image %s (%s) and %d snapshots", image_id, image.get("Name"), len(snapshots))
        deleted.append(image_id)
    return deleted


def require_image(ec2: Any, image_id: str, app: str, field_name: str) -> dict[str, Any]:
    """An image given by id must exist, be available and belong to the app."""
    image = find_image(ec2, image_id)
    if image is None:
        raise InvalidInput(field_name, f"image {image_id} does not exist in this region")
    if image.get("State") != "available":
        raise InvalidInput(field_name, f"image {image_id} is {image.get('State')}, not available")
    owner_app = from_aws_tags(image.get("Tags")).get(TAG_APP)
    if owner_app not in (None, app):
        raise InvalidInput(field_name, f"image {image_id} was baked for app {owner_app!r}, not {app!r}")
    return dict(image)


def previous_version_image(
    ec2: Any, app: str, environment: str, current_version: str | None, to_version: str | None
) -> dict[str, Any]:
    """The newest image of this app baked for this environment, of `to_version` or another version.

    Only for targets the deploy record knows nothing about (deployed before it existed): it cannot
    tell an image whose deploy failed from one that served, but never crosses environments.
    """
    images = ec2.describe_images(
        Owners=["self"],
        Filters=[
            {"Name": f"tag:{TAG_APP}", "Values": [app]},
            {"Name": f"tag:{TAG_ENVIRONMENT}", "Values": [environment]},
            {"Name": "state", "Values": ["available"]},
        ],
    ).get("Images", [])
    candidates = []
    for image in images:
        version = from_aws_tags(image.get("Tags")).get(TAG_VERSION)
        if (to_version is not None and version == to_version) or (
            to_version is None and version and version != current_version
        ):
            candidates.append(image)
    if not candidates:
        wanted = f"version {to_version}" if to_version else f"a version other than {current_version}"
        raise DeployError(f"no image of {app} in {environment} with {wanted} to roll back to")
    return max(candidates, key=lambda image: image.get("CreationDate", ""))


def find_image(ec2: Any, image_id: str) -> dict[str, Any] | None:
    """One image by id; None when EC2 does not know it."""
    try:
        images = ec2.describe_images(ImageIds=[image_id]).get("Images", [])
    except ClientError as error:
        if error_code(error) != "InvalidAMIID.NotFound":
            raise
        return None
    return dict(images[0]) if images else None
