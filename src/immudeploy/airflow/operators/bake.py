"""BakeImageOperator: the bake phase as an Airflow task (thin: the work is in immudeploy.release.bake)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator, Context

from immudeploy.airflow.links import ImageLink
from immudeploy.aws.connection import DEFAULT_CONN_ID, AwsClients, packer_aws_settings
from immudeploy.aws.images import find_image
from immudeploy.core.errors import InvalidInput
from immudeploy.core.naming import validate_ami_id
from immudeploy.release.bake import (
    DEFAULT_BAKE_TIMEOUT_SECONDS,
    BakeRequest,
    BaseImage,
    bake_image,
    default_template_dir,
)
from immudeploy.release.packer import PackerRunner


class BakeImageOperator(BaseOperator):
    """Bake the release's image with Packer, or return the one already baked from the same template.

    Returns the image id; also pushes `image_id` and `region` for the console link.
    """

    template_fields: Sequence[str] = (
        "plan",
        "app",
        "version",
        "image_id",
        "environment",
        "base_image_id",
        "base_image_name_pattern",
        "base_image_owners",
        "template_dir",
        "instance_type",
        "git_sha",
        "release_url",
        "force",
        "bake_timeout",
    )
    operator_extra_links = (ImageLink(),)
    ui_color = "#f9e2af"

    def __init__(
        self,
        *,
        plan: Any = None,
        app: str = "",
        version: str = "",
        environment: str = "",
        image_id: str | None = None,
        base_image_id: str | None = None,
        base_image_name_pattern: str | None = None,
        base_image_owners: Sequence[str] | None = None,
        template_dir: str | None = None,
        instance_type: str = "t3.micro",
        git_sha: str | None = None,
        release_url: str = "",
        force: bool = False,
        bake_timeout: float = DEFAULT_BAKE_TIMEOUT_SECONDS,
        packer_executable: str = "packer",
        aws_conn_id: str = DEFAULT_CONN_ID,
        region_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # A run's plan (the prepare task's XCom) supplies every field below when given.
        self.plan = plan
        self.app = app
        self.version = version
        self.environment = environment
        self.image_id = image_id
        self.base_image_id = base_image_id
        self.base_image_name_pattern = base_image_name_pattern
        self.base_image_owners = base_image_owners
        self.template_dir = template_dir
        self.instance_type = instance_type
        self.git_sha = git_sha
        self.release_url = release_url
        self.force = force
        self.bake_timeout = bake_timeout
        self.packer_executable = packer_executable
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self._runner: PackerRunner | None = None

    def _apply_plan(self) -> None:
        if not self.plan:
            return
        from immudeploy.airflow.xcom import plan_from_xcom

        deploy = plan_from_xcom(self.plan)
        self.app, self.version, self.environment = deploy.app, deploy.version, deploy.environment
        self.image_id = deploy.ami_id
        self.base_image_id = deploy.base_image_id
        self.base_image_name_pattern = deploy.base_image_name_pattern
        self.base_image_owners = deploy.base_image_owners
        self.template_dir = deploy.packer_template
        self.instance_type = deploy.instance_type
        self.git_sha = deploy.git_sha
        self.release_url = deploy.release_url
        self.bake_timeout = deploy.bake_timeout_seconds

    def execute(self, context: Context) -> str:
        self._apply_plan()
        clients = AwsClients(self.aws_conn_id, self.region_name)
        if not self.plan:
            return self._bake(context, clients)
        from immudeploy.airflow.locking import holding_lock

        # In a deploy run: only while the run holds the app/environment lock (heartbeat during Packer).
        with holding_lock(clients, self.app, self.environment):
            return self._bake(context, clients)

    def _bake(self, context: Context, clients: AwsClients) -> str:
        ti = context["ti"]
        settings = packer_aws_settings(self.aws_conn_id, self.region_name)
        if self.image_id:
            # The run names an image that was baked (and staged) before: deploy it as it is.
            validate_ami_id(self.image_id, "ami_id")
            image = find_image(clients.ec2, self.image_id)
            if image is None or image.get("State") != "available":
                raise InvalidInput("ami_id", f"image {self.image_id} does not exist or is not available")
            self.log.info("Using the given image %s; not baking", self.image_id)
            return self._publish(ti, self.image_id, settings.region, reused=True)
        request = BakeRequest(
            app=self.app,
            version=self.version,
            environment=self.environment,
            template_dir=Path(self.template_dir) if self.template_dir else default_template_dir(),
            base_image=BaseImage(
                image_id=self.base_image_id or None,
                name_pattern=self.base_image_name_pattern or None,
                owners=tuple(self.base_image_owners or ()),
            ),
            instance_type=self.instance_type,
            git_sha=self.git_sha or None,
            release_url=self.release_url,
            force=_as_bool(self.force),
            timeout_seconds=float(self.bake_timeout),
        )
        self._runner = PackerRunner(self.packer_executable, settings.environment, logger=self.log)
        image = bake_image(clients.ec2, self._runner, settings, request)
        return self._publish(ti, image.image_id, settings.region, reused=image.reused)

    @staticmethod
    def _publish(ti: Any, image_id: str, region: str, reused: bool) -> str:
        ti.xcom_push(key="image_id", value=image_id)
        ti.xcom_push(key="region", value=region)
        ti.xcom_push(key="reused", value=reused)
        return image_id

    def on_kill(self) -> None:
        if self._runner is not None:
            self._runner.terminate()


def _as_bool(value: object) -> bool:
    # Templated fields arrive as strings ("False") when rendered from params.
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
