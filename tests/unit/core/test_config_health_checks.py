"""Health check type and grace period per environment: unset means inherit, set means the operator's intent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from immudeploy.core.config import (
    DEFAULT_HEALTH_CHECK_GRACE_PERIOD_SECONDS,
    DEFAULT_HEALTH_CHECK_TYPE,
    EnvironmentConfig,
    parse_config,
)
from immudeploy.core.errors import InvalidInput

REPO = Path(__file__).resolve().parents[3]
WHERE = "apps.web.environments.prod"


def _environment(**fields: Any) -> EnvironmentConfig:
    data = {
        "apps": {
            "web": {
                "packer_template": str(REPO / "packer"),
                "base_image": {"image_id": "ami-785db401"},
                "environments": {
                    "prod": {"subnets": ["web-a"], "target_groups": ["web-prod"], **fields},
                },
            }
        }
    }
    return parse_config(yaml.safe_dump(data), REPO / "config" / "test.yaml").get("web", "prod")


def test_unset_health_checks_are_left_to_the_live_group_or_the_defaults() -> None:
    env = _environment()
    # None, not the default: a live group's own value must be able to win over an unset field.
    assert env.health_check_type is None
    assert env.health_check_grace_period_seconds is None
    assert (DEFAULT_HEALTH_CHECK_TYPE, DEFAULT_HEALTH_CHECK_GRACE_PERIOD_SECONDS) == ("ELB", 300)


@pytest.mark.parametrize("check_type", ["ELB", "EC2", "ELB,EBS", "VPC_LATTICE"])
def test_configured_health_checks_are_kept(check_type: str) -> None:
    env = _environment(health_check_type=check_type, health_check_grace_period_seconds=0)
    assert env.health_check_type == check_type
    # 0 is a legitimate explicit choice; only the unset default moved away from it.
    assert env.health_check_grace_period_seconds == 0


def test_app_defaults_set_the_health_checks_of_every_environment() -> None:
    data = {
        "apps": {
            "web": {
                "packer_template": str(REPO / "packer"),
                "base_image": {"image_id": "ami-785db401"},
                "defaults": {"health_check_grace_period_seconds": 420},
                "environments": {"prod": {"subnets": ["web-a"], "target_groups": ["web-prod"]}},
            }
        }
    }
    env = parse_config(yaml.safe_dump(data), REPO / "config" / "test.yaml").get("web", "prod")
    assert env.health_check_grace_period_seconds == 420


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"health_check_type": "HTTP"}, "health_check_type", "is not one of EC2, ELB"),
        ({"health_check_type": "ELB,ELB"}, "health_check_type", "is not one of"),
        ({"health_check_type": 5}, "health_check_type", "must be a string"),
        ({"health_check_grace_period_seconds": -1}, "health_check_grace_period_seconds", "at least 0"),
        ({"health_check_grace_period_seconds": "300"}, "health_check_grace_period_seconds", "whole number"),
        ({"health_check_grace_period_seconds": True}, "health_check_grace_period_seconds", "whole number"),
    ],
)
def test_a_bad_health_check_setting_is_named(fields: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason) as raised:
        _environment(**fields)
    assert raised.value.field == f"{WHERE}.{field}"
