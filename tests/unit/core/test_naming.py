"""Names and tags every phase shares: what the validators refuse, group names, labels and tag conversions."""

from __future__ import annotations

import pytest

from immudeploy.core.errors import InvalidInput
from immudeploy.core.naming import (
    TAG_APP,
    TAG_ENVIRONMENT,
    TAG_VERSION,
    ServerGroupName,
    as_aws_tags,
    from_aws_tags,
    identity_tags,
    listed,
    target_group_label,
    validate_ami_id,
    validate_app,
    validate_environment,
    validate_git_sha,
    validate_version,
)


@pytest.mark.parametrize(
    ("validate", "value"),
    [
        (validate_app, "shop"),
        (validate_app, "a" * 30),
        (validate_environment, "prod"),
        (validate_environment, "e2" + "x" * 18),
        (validate_version, "1.0.0"),
        (validate_version, "2024.01.05-rc_1"),
        (validate_ami_id, "ami-785db401"),
        (validate_ami_id, "ami-0123456789abcdef0"),
        (validate_git_sha, "abc1234"),
        (validate_git_sha, "0123456789abcdef0123456789abcdef01234567"),
    ],
)
def test_a_good_value_comes_back_unchanged(validate, value: str) -> None:
    assert validate(value) == value


@pytest.mark.parametrize(
    ("validate", "field", "value"),
    [
        (validate_app, "app", "Shop"),
        (validate_app, "app", "1shop"),
        (validate_app, "app", "shop-web"),
        (validate_app, "app", "a" * 31),
        (validate_app, "app", ""),
        (validate_app, "app", "shop\n"),
        (validate_environment, "environment", "prod env"),
        (validate_environment, "environment", "p" * 21),
        (validate_environment, "environment", "prod\n"),
        (validate_version, "version", "1.0.0\n"),
        (validate_version, "version", "1.0.0;rm -rf /"),
        (validate_version, "version", "$(id)"),
        (validate_version, "version", ".hidden"),
        (validate_version, "version", "1" * 65),
        (validate_version, "version", ""),
        (validate_ami_id, "ami_id", "ami-XYZ12345"),
        (validate_ami_id, "ami_id", "ami-1234567"),
        (validate_ami_id, "ami_id", "ami-785db401\n"),
        (validate_ami_id, "ami_id", "i-785db401"),
        (validate_git_sha, "git_sha", "abc123"),
        (validate_git_sha, "git_sha", "ABC1234"),
        (validate_git_sha, "git_sha", "abc1234\n"),
    ],
)
def test_a_bad_value_is_refused_naming_the_field(validate, field: str, value: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        validate(value)
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")
    assert repr(value) in str(raised.value)


@pytest.mark.parametrize("value", [None, 1, 1.0, ["1.0.0"], b"1.0.0"])
def test_a_value_that_is_not_a_string_is_refused_with_its_type(value: object) -> None:
    with pytest.raises(InvalidInput, match=f"must be a string, got {type(value).__name__}") as raised:
        validate_version(value)
    assert raised.value.field == "version"


def test_the_caller_can_name_the_field_for_the_message() -> None:
    with pytest.raises(InvalidInput) as raised:
        validate_version("1.0 .0", "to_version")
    assert raised.value.field == "to_version"
    assert str(raised.value).startswith("to_version: '1.0 .0' is not a release version")


@pytest.mark.parametrize(
    ("text", "app", "environment", "sequence"),
    [
        ("shop-prod-v001", "shop", "prod", 1),
        ("shop-prod-v042", "shop", "prod", 42),
        ("shop-prodstg-v007", "shop", "prodstg", 7),
        ("web2-qa1-v999", "web2", "qa1", 999),
        ("shop-prod-v1000", "shop", "prod", 1000),
    ],
)
def test_a_server_group_name_parses_and_prints_back_the_same(
    text: str, app: str, environment: str, sequence: int
) -> None:
    name = ServerGroupName.parse(text)
    assert name == ServerGroupName(app, environment, sequence)
    assert str(name) == text


def test_next_counts_up_past_three_digits() -> None:
    first = ServerGroupName("shop", "prod", 1)
    assert str(first) == "shop-prod-v001"
    assert str(first.next()) == "shop-prod-v002"
    assert str(ServerGroupName("shop", "prod", 999).next()) == "shop-prod-v1000"
    assert ServerGroupName.parse(str(ServerGroupName("shop", "prod", 999).next())) == ServerGroupName(
        "shop", "prod", 1000
    )


def test_names_order_by_sequence_within_an_app_and_environment() -> None:
    names = [ServerGroupName.parse(n) for n in ("shop-prod-v010", "shop-prod-v1000", "shop-prod-v002")]
    assert [str(n) for n in sorted(names)] == ["shop-prod-v002", "shop-prod-v010", "shop-prod-v1000"]


@pytest.mark.parametrize(
    "text",
    [
        "shop-prod-v01",  # fewer than three digits
        "shop-prod-001",
        "shop-prod",
        "Shop-prod-v001",
        "shop-prod-v001-old",
        "shop-web-prod-v001",  # an app name cannot contain a hyphen
        "shop-prod-vabc",
        " shop-prod-v001",
        "",
    ],
)
def test_anything_else_is_not_a_server_group_name(text: str) -> None:
    assert ServerGroupName.parse(text) is None


def test_a_server_group_name_with_a_trailing_newline_is_not_a_name() -> None:
    assert ServerGroupName.parse("shop-prod-v001\n") is None


@pytest.mark.parametrize(
    ("arn", "label"),
    [
        (
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/shop-prod-live/0123abcd",
            "shop-prod-live",
        ),
        ("arn:aws-cn:elasticloadbalancing:cn-north-1:123456789012:targetgroup/web/ffff0000", "web"),
        # Not a target group ARN: shown as given rather than half-parsed.
        ("shop-prod-live", "shop-prod-live"),
        (
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/demo/1/2",
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/demo/1/2",
        ),
    ],
)
def test_target_group_label_is_the_name_a_person_recognises(arn: str, label: str) -> None:
    assert target_group_label(arn) == label


def test_listed_shows_everything_up_to_the_limit() -> None:
    assert listed([]) == ""
    assert listed(["i-1"]) == "i-1"
    assert listed(["i-1", "i-2", "i-3"], limit=3) == "i-1, i-2, i-3"
    twenty = [f"i-{n}" for n in range(20)]
    assert listed(twenty) == ", ".join(twenty)


def test_listed_counts_what_it_leaves_out() -> None:
    ids = [f"i-{n}" for n in range(25)]
    assert listed(ids) == ", ".join(ids[:20]) + " and 5 more"
    assert listed(ids, limit=2) == "i-0, i-1 and 23 more"


def test_identity_tags_name_app_environment_and_version() -> None:
    assert identity_tags("shop", "prod", "2.0.0") == {
        TAG_APP: "shop",
        TAG_ENVIRONMENT: "prod",
        TAG_VERSION: "2.0.0",
    }
    assert (TAG_APP, TAG_ENVIRONMENT, TAG_VERSION) == (
        "immutable:app",
        "immutable:environment",
        "immutable:version",
    )


def test_aws_tags_are_sorted_key_value_pairs_and_convert_back() -> None:
    tags = {**identity_tags("shop", "prod", "2.0.0"), "Name": "shop-prod-v002"}
    as_aws = as_aws_tags(tags)
    assert as_aws == [
        {"Key": "Name", "Value": "shop-prod-v002"},
        {"Key": "immutable:app", "Value": "shop"},
        {"Key": "immutable:environment", "Value": "prod"},
        {"Key": "immutable:version", "Value": "2.0.0"},
    ]
    assert from_aws_tags(as_aws) == tags


def test_from_aws_tags_accepts_what_describe_calls_return() -> None:
    # Auto Scaling tags carry extra keys; a resource without tags has none or an empty list.
    described = [
        {"ResourceId": "shop-prod-v001", "Key": TAG_APP, "Value": "shop", "PropagateAtLaunch": True},
    ]
    assert from_aws_tags(described) == {TAG_APP: "shop"}
    assert from_aws_tags(None) == {}
    assert from_aws_tags([]) == {}
