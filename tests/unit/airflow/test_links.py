"""Console links of the tasks: the AWS console page of an image, an Auto Scaling group, a target group."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest

from immudeploy.airflow.links import (
    ImageLink,
    ServerGroupLink,
    TargetGroupLink,
    console_url,
    image_console_url,
    server_group_console_url,
    target_group_console_url,
)

TG_ARN = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/shop-prod-live/0123abcd"


def test_image_link() -> None:
    assert image_console_url("us-east-1", "ami-0123456789abcdef0") == (
        "https://us-east-1.console.aws.amazon.com/ec2/home?region=us-east-1"
        "#ImageDetails:imageId=ami-0123456789abcdef0"
    )


def test_auto_scaling_group_link() -> None:
    assert server_group_console_url("eu-west-2", "shop-prod-v002") == (
        "https://eu-west-2.console.aws.amazon.com/ec2/home?region=eu-west-2"
        "#AutoScalingGroupDetails:id=shop-prod-v002;view=details"
    )


def test_target_group_link_keeps_the_arn_readable() -> None:
    url = target_group_console_url("us-east-1", TG_ARN)
    assert url == (
        "https://us-east-1.console.aws.amazon.com/ec2/home?region=us-east-1"
        f"#TargetGroup:targetGroupArn={TG_ARN}"
    )


@pytest.mark.parametrize("region", ["us-gov-west-1", "ap-southeast-2", "cn-north-1", "il-central-1"])
def test_every_shape_of_region_gets_its_own_console_host(region: str) -> None:
    url = image_console_url(region, "ami-785db401")
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname) == ("https", f"{region}.console.aws.amazon.com")
    assert parts.query == f"region={region}"


@pytest.mark.parametrize(
    "region",
    [
        "",
        "evil.example.com",
        "evil.example.com/us-east-1",
        "us-east-1.evil.example.com",
        "us-east-1@evil.example.com",
        "us-east-1#",
        "us-east-1\n",
        "US-EAST-1",
        "us-east",
        "us-east-1 ",
        "../us-east-1",
    ],
)
def test_a_malformed_region_gives_no_link(region: str) -> None:
    assert console_url(region, "ImageDetails:imageId=ami-785db401") == ""
    assert image_console_url(region, "ami-785db401") == ""
    assert server_group_console_url(region, "shop-prod-v002") == ""
    assert target_group_console_url(region, TG_ARN) == ""


@pytest.mark.parametrize(
    "value",
    ["ami-1#x", "shop-prod-v002;view=other", "a b", "x/../y", "x?region=evil", "é", "x&y=z", "x\ny"],
)
def test_ids_are_quoted_so_they_cannot_change_the_page(value: str) -> None:
    for url, prefix in [
        (image_console_url("us-east-1", value), "ImageDetails:imageId="),
        (server_group_console_url("us-east-1", value), "AutoScalingGroupDetails:id="),
    ]:
        parts = urlsplit(url)
        assert parts.hostname == "us-east-1.console.aws.amazon.com"
        assert parts.query == "region=us-east-1"
        quoted = parts.fragment.removeprefix(prefix).removesuffix(";view=details")
        # Nothing of the id survives unquoted except letters, digits and "-_.~".
        assert all(c.isascii() and (c.isalnum() or c in "-_.~%") for c in quoted), quoted
        assert unquote(quoted) == value


def test_a_target_group_arn_keeps_colons_and_slashes_but_nothing_else() -> None:
    url = target_group_console_url("us-east-1", TG_ARN + "#x y")
    fragment = urlsplit(url).fragment
    assert fragment == f"TargetGroup:targetGroupArn={TG_ARN}%23x%20y"


def test_each_operator_link_has_its_name_and_builds_its_url() -> None:
    assert [link.name for link in (ImageLink(), ServerGroupLink(), TargetGroupLink())] == [
        "AWS Image",
        "Auto Scaling Group",
        "Target Group",
    ]
    assert ImageLink().url("us-east-1", "ami-785db401") == image_console_url("us-east-1", "ami-785db401")
    assert ServerGroupLink().url("us-east-1", "shop-prod-v002") == server_group_console_url(
        "us-east-1", "shop-prod-v002"
    )
    assert TargetGroupLink().url("us-east-1", TG_ARN) == target_group_console_url("us-east-1", TG_ARN)
    assert TargetGroupLink().url("not a region", TG_ARN) == ""
