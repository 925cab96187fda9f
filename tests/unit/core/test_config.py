"""Configuration of apps and environments: the sample loads, and every mistake names its field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from immudeploy.core.config import DEFAULT_CONFIG_PATH, load_config, parse_config
from immudeploy.core.errors import InvalidInput

REPO = Path(__file__).resolve().parents[3]

MINIMAL = {
    "apps": {
        "web": {
            "packer_template": str(REPO / "packer"),
            "base_image": {"image_id": "ami-785db401"},
            "environments": {
                "prod": {"subnets": ["web-a"], "target_groups": ["web-prod"]},
            },
        }
    }
}


def _parse(data: dict) -> object:
    return parse_config(yaml.safe_dump(data), REPO / "config" / "test.yaml")


def test_the_sample_configuration_loads() -> None:
    config = load_config(DEFAULT_CONFIG_PATH)
    assert config.environments, "the sample configuration defines no app"
    for env in config.environments.values():
        assert env.packer_template.is_dir()
        assert env.target_groups


def test_defaults_apply() -> None:
    env = _parse(MINIMAL).get("web", "prod")  # type: ignore[attr-defined]
    assert env.keep_old_groups == 0
    assert env.first_deploy_capacity.desired == 1
    assert env.ssm_prefix == "/immutable/web/prod"
    assert env.staging is None and env.nightly is False


def test_app_defaults_are_merged_into_each_environment() -> None:
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["apps"]["web"]["defaults"] = {"instance_type": "c7g.large", "keep_old_groups": 2}
    env = _parse(data).get("web", "prod")  # type: ignore[attr-defined]
    assert (env.instance_type, env.keep_old_groups) == ("c7g.large", 2)


def _with(path: list[str], value: object) -> dict:
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return data


ENV = ["apps", "web", "environments", "prod"]


@pytest.mark.parametrize(
    ("path", "value", "field", "reason"),
    [
        ([*ENV, "target_groups"], [], "apps.web.environments.prod.target_groups", "at least one"),
        ([*ENV, "keep_old_groups"], -1, "apps.web.environments.prod.keep_old_groups", "at least 0"),
        ([*ENV, "keep_old_groups"], "two", "apps.web.environments.prod.keep_old_groups", "whole number"),
        (
            [*ENV, "first_deploy_capacity"],
            {"min": 3, "max": 2, "desired": 2},
            "first_deploy_capacity",
            "min <= desired",
        ),
        ([*ENV, "staging"], {"target_group": "x", "subnets": ["a"]}, "staging.test_command", "is required"),
        ([*ENV, "instance_typo"], "t3.micro", "apps.web.environments.prod.instance_typo", "unknown field"),
        (["apps", "web", "base_image"], {"image_id": "ami-XYZ"}, "apps.web.base_image.image_id", "AMI id"),
        (["apps", "Web"], {}, "apps.'Web'", "lower-case"),
        (["apps", "web", "packer_template"], "/no/such/dir", "apps.web.packer_template", "not a directory"),
    ],
)
def test_a_bad_field_is_named_with_its_app_environment_and_reason(path, value, field, reason) -> None:
    # Kept with its entry when read (tests/unit/core/test_config_errors.py); check() raises it.
    with pytest.raises(InvalidInput) as failure:
        _parse(_with(path, value)).check()  # type: ignore[attr-defined]
    assert field in str(failure.value)
    assert reason in str(failure.value)


def test_an_unknown_target_names_what_is_configured() -> None:
    with pytest.raises(InvalidInput, match="web/prod"):
        _parse(MINIMAL).get("web", "qa")  # type: ignore[attr-defined]


def test_unreadable_or_malformed_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="IMMUDEPLOY_CONFIG"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("apps: [unclosed")
    with pytest.raises(InvalidInput, match="not valid YAML"):
        load_config(bad)
