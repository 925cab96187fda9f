"""The trigger forms' JSON schema refuses what the run's own validation refuses, a final newline included.

jsonschema applies a `pattern` with re.search, where `$` also matches before a final newline: a bare
`^...$` lets "1.0.0\\n" through the trigger (HTTP 200) only for `prepare` to fail it later.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from immudeploy.core import naming

REPO = Path(__file__).resolve().parents[3]

# A valid example of every pattern the package defines; a new pattern needs one here.
EXAMPLES = {
    "APP_PATTERN": "shop",
    "ENVIRONMENT_PATTERN": "prod",
    "VERSION_PATTERN": "1.4.2-rc_1",
    "AMI_ID_PATTERN": "ami-0123456789abcdef0",
    "GIT_SHA_PATTERN": "0123abc",
    "SERVER_GROUP_PATTERN": "shop-prod-v001",
    "TARGET_PATTERN": "shop/prod",
}
VALID_CONF = {
    "app": "shop",
    "environment": "prod",
    "version": "1.0.0",
    "ami_id": "ami-0123456789abcdef0",
    "git_sha": "0123abc",
    "expect_live_version": "1.0.0",
    "expect_live_group": "shop-prod-v001",
}


def patterns() -> dict[str, str]:
    return {name: value for name, value in vars(naming).items() if name.endswith("_PATTERN")}


def test_every_pattern_has_an_example() -> None:
    assert set(patterns()) == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
@pytest.mark.parametrize("ending", ["\n", "\r\n", " ", "\n\n"])
def test_no_pattern_accepts_its_example_with_something_after_it(name: str, ending: str) -> None:
    pattern, example = patterns()[name], EXAMPLES[name]
    schema = {"type": "string", "pattern": pattern}
    jsonschema.validate(example, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(example + ending, schema)
    assert re.fullmatch(pattern, example)


@pytest.mark.skipif(shutil.which("node") is None, reason="no node to compile the patterns as a browser does")
def test_the_patterns_mean_the_same_to_a_browser() -> None:
    """JS RegExp without flags, with `u`, and with `v` (how an HTML `pattern` attribute compiles)."""
    cases = [(patterns()[name], example) for name, example in sorted(EXAMPLES.items())]
    script = """
const cases = JSON.parse(process.argv[1]);
const out = [];
for (const [pattern, example] of cases) for (const flags of ["", "u", "v"]) {
  const re = new RegExp(pattern, flags);
  out.push([pattern, flags, re.test(example), re.test(example + "\\n")]);
}
console.log(JSON.stringify(out));
"""
    result = subprocess.run(
        ["node", "-e", script, json.dumps(cases)], capture_output=True, text=True, timeout=60, check=True
    )
    for pattern, flags, accepts_example, accepts_newline in json.loads(result.stdout):
        assert accepts_example and not accepts_newline, (pattern, flags)


def serialized_dag(dag_id: str) -> Any:
    """The DAG as the api-server holds it: its trigger endpoint validates conf with these params."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return DagSerialization.from_dict(DagSerialization.to_dict(bag.dags[dag_id]))


def trigger(dag: Any, conf: dict[str, Any]) -> dict[str, Any]:
    """What POST /api/v2/dags/{id}/dagRuns runs before it creates the run (a failure there is a 400)."""
    return dag.params.deep_merge(conf).validate()


@pytest.fixture(scope="module")
def deploy_dag() -> Any:
    return serialized_dag("immutable_deploy")


def test_a_valid_deploy_conf_is_accepted(deploy_dag: Any) -> None:
    assert trigger(deploy_dag, VALID_CONF).items() >= VALID_CONF.items()


@pytest.mark.parametrize("field", sorted(VALID_CONF))
def test_a_deploy_conf_with_a_trailing_newline_is_refused_by_the_trigger(deploy_dag: Any, field: str) -> None:
    from airflow.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match=f"param {field}"):
        trigger(deploy_dag, {**VALID_CONF, field: VALID_CONF[field] + "\n"})


def test_a_nightly_target_with_a_trailing_newline_is_refused_by_the_trigger() -> None:
    from airflow.exceptions import ParamValidationError

    nightly = serialized_dag("immutable_nightly_rebuild")
    assert trigger(nightly, {"targets": ["shop/prod"]}) == {"targets": ["shop/prod"]}
    with pytest.raises(ParamValidationError, match="param targets"):
        trigger(nightly, {"targets": ["shop/prod\n"]})
