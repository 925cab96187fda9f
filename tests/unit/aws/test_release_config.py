"""Publishing a deploy's configuration to moto's SSM: per-deploy paths, idempotent, converging, validated."""

from __future__ import annotations

from typing import Any

import pytest

from immudeploy.aws.release_config import (
    cache_key_prefix,
    delete_release_config,
    deploy_key,
    publish_release_config,
    read_release_config,
    release_path,
)
from immudeploy.core.errors import InvalidInput

PREFIX = "/immutable/shop/prod"
VALUES = {"DATABASE_HOST": "db.internal", "FEATURE_X": "on", "worker.threads": "8"}
KEY = deploy_key("immutable_deploy-0123456789abcdef")


def _publish(ssm: Any, version: str = "1.2.0", values: dict[str, str] | None = None, **kw: Any) -> Any:
    kw.setdefault("key", KEY)
    return publish_release_config(
        ssm, PREFIX, "shop", "prod", version, VALUES if values is None else values, **kw
    )


def _history_lengths(ssm: Any, path: str) -> dict[str, int]:
    names = [p["Name"] for p in ssm.describe_parameters()["Parameters"] if p["Name"].startswith(path)]
    return {n: len(ssm.get_parameter_history(Name=n)["Parameters"]) for n in names}


def test_paths_and_cache_prefixes() -> None:
    assert release_path(PREFIX, "1.2.0", KEY) == f"/immutable/shop/prod/releases/1.2.0/{KEY}"
    assert release_path(PREFIX + "/", "1.2.0", KEY) == f"/immutable/shop/prod/releases/1.2.0/{KEY}"
    assert cache_key_prefix("shop", "prod", "1.2.0") == "shop:prod:1.2.0:"
    assert release_path(PREFIX, "1.2.0", KEY) != release_path(PREFIX, "1.3.0", KEY)
    # Two deploys of one version: two paths.
    assert release_path(PREFIX, "1.2.0", KEY) != release_path(PREFIX, "1.2.0", deploy_key("other-run"))
    assert cache_key_prefix("shop", "prod", "1.2.0") != cache_key_prefix("shop", "prod", "1.3.0")


@pytest.mark.parametrize(
    ("prefix", "version", "field"),
    [
        (PREFIX, "1.2.0+build7", "version"),  # SSM names cannot hold "+", so versions may not either
        ("immutable/shop", "1.2.0", "ssm_prefix/version"),
        ("/immutable//shop", "1.2.0", "ssm_prefix/version"),
        ("/aws/shop", "1.2.0", "ssm_prefix"),
        ("/" + "/".join(["a"] * 14), "1.2.0", "ssm_prefix"),
        (PREFIX, "1 2", "version"),
        ("/" + "a" * 240, "1.2.0", "ssm_prefix"),  # the path is a tag value: 256 characters at most
    ],
)
def test_bad_paths_refused(prefix: str, version: str, field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        release_path(prefix, version, KEY)
    assert raised.value.field == field


def test_publish_writes_values_and_release_markers(aws: Any) -> None:
    ssm = aws.client("ssm")
    published = _publish(ssm, extra={"IMAGE_ID": "ami-785db401"})
    path = f"/immutable/shop/prod/releases/1.2.0/{KEY}"
    assert published.path == path
    assert published.cache_key_prefix == "shop:prod:1.2.0:"
    assert published.parameter_names == sorted(
        f"{path}/{n}" for n in [*VALUES, "IMAGE_ID", "CACHE_KEY_PREFIX", "RELEASE_VERSION"]
    )
    assert read_release_config(ssm, path) == {
        **VALUES,
        "IMAGE_ID": "ami-785db401",
        "CACHE_KEY_PREFIX": "shop:prod:1.2.0:",
        "RELEASE_VERSION": "1.2.0",
    }
    assert {p["Type"] for p in ssm.describe_parameters()["Parameters"]} == {"String"}


def test_publish_twice_is_the_same_state(aws: Any) -> None:
    ssm = aws.client("ssm")
    first = _publish(ssm)
    versions = _history_lengths(ssm, first.path)
    second = _publish(ssm)
    assert second == first
    assert read_release_config(ssm, second.path) == read_release_config(ssm, first.path)
    # Unchanged values are not rewritten: no new parameter versions.
    assert _history_lengths(ssm, first.path) == versions


def test_republish_converges(aws: Any) -> None:
    ssm = aws.client("ssm")
    many = {f"SETTING_{n:02d}": str(n) for n in range(25)}  # more than one page and one delete batch
    _publish(ssm, values=many)
    published = _publish(ssm, values={"SETTING_03": "changed", "NEW": "yes"})
    assert read_release_config(ssm, published.path) == {
        "SETTING_03": "changed",
        "NEW": "yes",
        "CACHE_KEY_PREFIX": "shop:prod:1.2.0:",
        "RELEASE_VERSION": "1.2.0",
    }


def test_two_versions_do_not_share_anything(aws: Any) -> None:
    ssm = aws.client("ssm")
    old = _publish(ssm, "1.2.0", {"COLOR": "blue"})
    new = _publish(ssm, "1.3.0", {"COLOR": "green"})
    assert old.path != new.path and old.cache_key_prefix != new.cache_key_prefix
    assert read_release_config(ssm, old.path)["COLOR"] == "blue"
    assert read_release_config(ssm, new.path)["COLOR"] == "green"
    # Publishing 1.3.0 without COLOR leaves 1.2.0 alone.
    _publish(ssm, "1.3.0", {})
    assert read_release_config(ssm, old.path)["COLOR"] == "blue"


def test_parameters_below_the_release_path_are_not_ours(aws: Any) -> None:
    ssm = aws.client("ssm")
    published = _publish(ssm)
    ssm.put_parameter(Name=f"{published.path}/nested/thing", Value="x", Type="String")
    _publish(ssm)
    assert ssm.get_parameter(Name=f"{published.path}/nested/thing")["Parameter"]["Value"] == "x"


@pytest.mark.parametrize(
    ("values", "extra", "named"),
    [
        ({"GOOD": "1", "has space": "x"}, None, "has space"),
        ({"GOOD": "1", "a/b": "x"}, None, "a/b"),
        ({"GOOD": "1", "DOLLAR$": "x"}, None, "DOLLAR$"),
        ({"GOOD": "1", "RELEASE_VERSION": "x"}, None, "RELEASE_VERSION"),
        ({"GOOD": "1", "EMPTY": ""}, None, "EMPTY"),
        ({"GOOD": "1", "HUGE": "x" * 4097}, None, "HUGE"),
        ({"GOOD": "1"}, {"GOOD": "2"}, "GOOD"),
    ],
)
def test_bad_names_refused_before_anything_is_written(
    aws: Any, values: dict[str, str], extra: dict[str, str] | None, named: str
) -> None:
    ssm = aws.client("ssm")
    with pytest.raises(InvalidInput, match=named.replace("$", r"\$")):
        _publish(ssm, values=values, extra=extra)
    assert ssm.describe_parameters()["Parameters"] == []


def test_delete_release_config(aws: Any) -> None:
    ssm = aws.client("ssm")
    old = _publish(ssm, "1.2.0")
    new = _publish(ssm, "1.3.0")
    deleted = delete_release_config(ssm, old.path)
    assert deleted == old.parameter_names
    assert read_release_config(ssm, old.path) == {}
    assert read_release_config(ssm, new.path) != {}
    assert delete_release_config(ssm, old.path) == []
