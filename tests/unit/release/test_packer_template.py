"""The Packer template in packer/: formatted, valid, and safe to build against a local moto server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

PACKER_DIR = Path(__file__).resolve().parents[3] / "packer"

# The bake step writes exactly these into its generated var file; a rename on either side breaks it.
REQUIRED_VARIABLES = {"app", "version", "environment", "base_ami_id", "region", "ami_name", "manifest_path"}
OPTIONAL_VARIABLES = {
    "instance_type",
    "ec2_endpoint",
    "tags",
    "release_url",
    "ssh_username",
    "subnet_id",
    "associate_public_ip_address",
    "ssh_interface",
}
LOCAL_SOURCE = "amazon-ebs.local"
AWS_SOURCE = "amazon-ebs.aws"

_BLOCK_HEADER = re.compile(r'(?m)^[ \t]*([A-Za-z][\w-]*)((?:[ \t]+"[^"\n]*")*)[ \t]*\{[ \t]*$')


@pytest.fixture(scope="module")
def packer() -> str:
    path = shutil.which("packer")
    if path is None:
        pytest.fail("packer is not on PATH: install it (Debian: apt-get install -y packer) to check packer/")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def _strip_comments(text: str) -> str:
    """HCL text with `#`, `//` and `/* */` comments blanked out (strings kept intact)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == '"':
            end = i + 1
            while text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            out.append(text[i : end + 1])
            i = end + 1
        elif char == "#" or text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _closing_brace(text: str, opening: int) -> int:
    depth = 0
    i = opening
    while True:
        char = text[i]
        if char == '"':
            i += 1
            while text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1


def _blocks(text: str) -> list[tuple[str, list[str], str]]:
    """The blocks directly inside `text` (comment-free HCL): (type, labels, body)."""
    found = []
    position = 0
    while match := _BLOCK_HEADER.search(text, position):
        end = _closing_brace(text, text.index("{", match.start(2)))
        found.append((match[1], re.findall(r'"([^"]*)"', match[2]), text[match.end() : end]))
        position = end + 1
    return found


def _attribute_outside_blocks(body: str, name: str) -> str | None:
    for _, _, inner in _blocks(body):
        body = body.replace(inner, "")
    match = re.search(rf"(?m)^[ \t]*{name}[ \t]*=[ \t]*(.+)$", body)
    return match[1].strip() if match else None


def _string_list(value: str | None) -> set[str]:
    return set(re.findall(r'"([^"]*)"', value or ""))


def _template_blocks() -> list[tuple[str, list[str], str]]:
    texts = [_strip_comments(path.read_text()) for path in sorted(PACKER_DIR.glob("*.pkr.hcl"))]
    return [block for text in texts for block in _blocks(text)]


def _write_var_file(tmp_path: Path, *, complete: bool) -> Path:
    values: dict[str, object] = {
        "app": "shop",
        "version": "1.2.3",
        "environment": "staging",
        "base_ami_id": "ami-785db401",
        "region": "us-east-1",
        "ami_name": "shop-staging-1.2.3-20250101T000000Z",
        "manifest_path": str(tmp_path / "manifest.json"),
    }
    if complete:
        values |= {
            "instance_type": "t3.small",
            "ec2_endpoint": "http://127.0.0.1:5000",
            "tags": {"immutable:app": "shop", "immutable:version": "1.2.3"},
            "release_url": "https://releases.example.com/shop-1.2.3.tar.gz",
            "ssh_username": "admin",
            "subnet_id": "subnet-0123456789abcdef0",
            "associate_public_ip_address": False,
            "ssh_interface": "private_ip",
        }
    var_file = tmp_path / "vars.json"
    var_file.write_text(json.dumps(values))
    return var_file


def test_template_is_formatted(packer: str) -> None:
    # Packer 1.6.6 has no -recursive; all HCL files sit at the top of packer/ (checked below).
    usage = _run(packer, "fmt", "-h")
    recursive = ["-recursive"] if "-recursive" in usage.stdout + usage.stderr else []
    result = _run(packer, "fmt", "-check", *recursive, str(PACKER_DIR))
    assert result.returncode == 0, f"run `packer fmt packer/`:\n{result.stdout}{result.stderr}"
    nested = [p for p in PACKER_DIR.rglob("*.pkr*hcl") if p.parent != PACKER_DIR]
    assert nested == [], "HCL files below packer/ escape `packer fmt -check` on Packer 1.6.6"


@pytest.mark.parametrize("complete", [False, True], ids=["required-only", "complete"])
def test_template_validates(packer: str, tmp_path: Path, complete: bool) -> None:
    var_file = _write_var_file(tmp_path, complete=complete)
    result = _run(packer, "validate", f"-var-file={var_file}", str(PACKER_DIR))
    assert result.returncode == 0, result.stdout + result.stderr
    # An unknown name in the var file is only a warning to Packer: catch renames here.
    assert "Undefined variable" not in result.stdout + result.stderr


def test_variables_are_the_bake_contract() -> None:
    variables = {labels[0]: body for kind, labels, body in _template_blocks() if kind == "variable"}
    assert set(variables) == REQUIRED_VARIABLES | OPTIONAL_VARIABLES
    for name, body in variables.items():
        assert _attribute_outside_blocks(body, "type"), f"variable {name} has no type"
        assert _attribute_outside_blocks(body, "description"), f"variable {name} has no description"
        has_default = _attribute_outside_blocks(body, "default") is not None
        assert has_default == (name in OPTIONAL_VARIABLES), f"variable {name}: default only where safe"


def test_local_source_has_no_communicator_and_runs_no_provisioner() -> None:
    blocks = _template_blocks()
    sources = {f"{labels[0]}.{labels[1]}": body for kind, labels, body in blocks if kind == "source"}
    local_communicator = _attribute_outside_blocks(sources[LOCAL_SOURCE], "communicator")
    assert local_communicator == '"none"', f"{LOCAL_SOURCE} must never SSH into moto's fake instance"
    aws_communicator = _attribute_outside_blocks(sources[AWS_SOURCE], "communicator")
    assert aws_communicator == '"ssh"', f"{AWS_SOURCE} builds over SSH"

    builds = [body for kind, _, body in blocks if kind == "build"]
    assert builds, "no build block"
    provisioner_count = 0
    for build in builds:
        listed = _string_list(_attribute_outside_blocks(build, "sources"))
        build_sources = {name.removeprefix("source.") for name in listed}
        build_sources |= {labels[0] for kind, labels, _ in _blocks(build) if kind == "source"}
        assert build_sources <= set(sources), f"build lists unknown sources: {build_sources - set(sources)}"
        for kind, labels, body in _blocks(build):
            if kind != "provisioner":
                continue
            provisioner_count += 1
            only = _string_list(_attribute_outside_blocks(body, "only"))
            runs_on = (only or build_sources) - _string_list(_attribute_outside_blocks(body, "except"))
            assert LOCAL_SOURCE not in runs_on, f"provisioner {labels[0]} would run on {LOCAL_SOURCE} (hangs)"
            assert runs_on and runs_on <= build_sources, f"provisioner {labels[0]} matches no source"
    assert provisioner_count > 0, "the aws source installs nothing"


def test_provisioning_scripts_are_strict_shell() -> None:
    scripts = sorted((PACKER_DIR / "scripts").glob("*.sh"))
    assert scripts
    for script in scripts:
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), script.name
        assert "\nset -euxo pipefail\n" in text, f"{script.name} lacks set -euxo pipefail"
        syntax = _run("bash", "-n", str(script))
        assert syntax.returncode == 0, f"{script.name}: {syntax.stderr}"
