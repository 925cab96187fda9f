"""The bake phase with the real packer binary against a moto server over HTTP."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from immudeploy.aws.connection import AwsClients, packer_aws_settings
from immudeploy.core.errors import BakeError, InvalidInput
from immudeploy.core.naming import from_aws_tags
from immudeploy.release.bake import BakeRequest, BaseImage, bake_image, default_template_dir, packer_source
from immudeploy.release.packer import PackerRunner

BASE_IMAGE = "ami-785db401"  # one of the public images moto ships
PACKER = shutil.which("packer") or "packer"


@pytest.fixture
def template(tmp_path: Path) -> Path:
    """A private copy of the project's template, so a test may edit it."""
    copy = tmp_path / "packer"
    shutil.copytree(default_template_dir(), copy)
    return copy


def _request(template: Path, **overrides: object) -> BakeRequest:
    values: dict[str, object] = {
        "app": "web",
        "version": "1.4.2",
        "environment": "prod",
        "template_dir": template,
        "base_image": BaseImage(image_id=BASE_IMAGE),
    }
    values.update(overrides)
    return BakeRequest(**values)  # type: ignore[arg-type]


def _bake(request: BakeRequest, executable: str = PACKER):
    settings = packer_aws_settings()
    runner = PackerRunner(executable, settings.environment)
    return bake_image(AwsClients().ec2, runner, settings, request)


def test_a_local_stand_in_gets_the_source_without_ssh(aws) -> None:
    assert packer_source(packer_aws_settings()) == "amazon-ebs.local"


def test_bake_produces_an_available_image_tagged_with_app_and_version(aws, template: Path) -> None:
    image = _bake(_request(template))
    assert not image.reused
    described = aws.client("ec2").describe_images(ImageIds=[image.image_id])["Images"][0]
    assert described["State"] == "available"
    tags = from_aws_tags(described["Tags"])
    assert tags["immutable:app"] == "web"
    assert tags["immutable:version"] == "1.4.2"
    assert tags["immutable:environment"] == "prod"
    assert tags["immutable:base-image"] == BASE_IMAGE
    assert described["Name"].startswith("web-1.4.2-")


def test_a_second_bake_returns_the_same_image_without_running_packer(aws, template: Path) -> None:
    first = _bake(_request(template))
    # A packer that does not exist: the second bake can only succeed if it never runs packer.
    second = _bake(_request(template), executable="/nonexistent/packer")
    assert second.image_id == first.image_id
    assert second.reused
    own_images = aws.client("ec2").describe_images(Owners=["self"])["Images"]
    assert [i["ImageId"] for i in own_images] == [first.image_id]


def test_changing_the_template_rebakes(aws, template: Path) -> None:
    first = _bake(_request(template))
    with (template / "app.pkr.hcl").open("a") as handle:
        handle.write("\n# a change to the template\n")
    second = _bake(_request(template))
    assert second.image_id != first.image_id
    assert not second.reused


def test_force_rebakes_the_same_template(aws, template: Path) -> None:
    first = _bake(_request(template))
    forced = _bake(_request(template, force=True))
    assert forced.image_id != first.image_id
    assert not forced.reused


def test_retry_after_a_bake_that_registered_its_image_but_timed_out(aws, template: Path) -> None:
    """The first attempt registered the image and died before tagging it: the retry adopts it."""
    ec2 = aws.client("ec2")
    first = _bake(_request(template))
    name = ec2.describe_images(ImageIds=[first.image_id])["Images"][0]["Name"]
    ec2.deregister_image(ImageId=first.image_id)
    instance = ec2.run_instances(ImageId=BASE_IMAGE, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    untagged = ec2.create_image(InstanceId=instance, Name=name)["ImageId"]

    retry = _bake(_request(template), executable="/nonexistent/packer")

    assert retry.image_id == untagged
    tags = from_aws_tags(ec2.describe_images(ImageIds=[untagged])["Images"][0].get("Tags"))
    assert tags["immutable:version"] == "1.4.2"


def test_a_broken_template_fails_with_packers_message(aws, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(Path(__file__).resolve().parents[2] / "data" / "broken_template", broken)
    with pytest.raises(BakeError, match="no_such_argument"):
        _bake(_request(broken))
    assert aws.client("ec2").describe_images(Owners=["self"])["Images"] == []


@pytest.mark.parametrize(
    ("field", "overrides"),
    [
        ("version", lambda: {"version": "1.0; rm -rf /"}),
        ("app", lambda: {"app": "Web App"}),
        ("base_image.image_id", lambda: {"base_image": BaseImage(image_id="ami-nothex!")}),
    ],
)
def test_bad_input_names_the_field_and_changes_nothing(aws, template: Path, field: str, overrides) -> None:
    with pytest.raises(InvalidInput, match=field.replace(".", r"\.")):
        _bake(_request(template, **overrides()))
    assert aws.client("ec2").describe_images(Owners=["self"])["Images"] == []


def test_a_base_image_that_does_not_exist_is_refused(aws, template: Path) -> None:
    with pytest.raises(InvalidInput, match=r"base_image\.image_id"):
        _bake(_request(template, base_image=BaseImage(image_id="ami-0123456789abcdef0")))
