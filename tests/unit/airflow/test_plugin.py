"""Airflow's plugins manager on the repository's plugins/ folder: one plugin, three links, no bare imports.

The plugins manager imports every .py file of the folder under its bare file name. The folder must
therefore hold only the plugin file itself: a package there (the old layout) made Airflow import
project modules a second time as `config`, `errors`, `waits`... beside `immudeploy.*`.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
PLUGINS = REPO / "plugins"
SRC = REPO / "src"
PLUGIN_NAME = "immudeploy_console_links"

# Runs in a fresh interpreter: the plugins manager caches what it loaded, and the point is what a
# scheduler or api-server process that starts with this plugins folder ends up importing.
LOAD_PLUGINS = r"""
import json, sys
from airflow import plugins_manager, settings

plugins, errors = plugins_manager._get_plugins()
modules = {}
for name, module in list(sys.modules.items()):
    # A namespace package (a folder without __init__.py) has no __file__, only a __path__.
    path = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", None) or []), None)
    modules[name] = path
print(json.dumps({
    "plugins_folder": settings.PLUGINS_FOLDER,
    "plugins": [
        {
            "name": p.name,
            "class": type(p).__module__ + "." + type(p).__qualname__,
            "links": [type(link).__module__ + "." + type(link).__qualname__ for link in p.operator_extra_links],
            "link_names": [link.name for link in p.operator_extra_links],
            "source": str(p.source),
        }
        for p in plugins
    ],
    "operator_extra_links": [type(link).__qualname__ for link in plugins_manager.get_operator_extra_links()],
    "errors": errors,
    "modules": modules,
}))
"""


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path_factory.mktemp("airflow-home")),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # The plugins manager loads with SourceFileLoader, which would write plugins/__pycache__.
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", LOAD_PLUGINS],
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _in_repo(path: str | None) -> bool:
    if not path:
        return False
    resolved = Path(path).resolve()
    return resolved.is_relative_to(REPO) and not resolved.is_relative_to(REPO / ".venv")


def test_airflow_loads_the_console_links_plugin_from_the_folder(loaded: dict[str, Any]) -> None:
    assert Path(loaded["plugins_folder"]).resolve() == PLUGINS.resolve()
    assert loaded["errors"] == {}
    ours = [p for p in loaded["plugins"] if p["name"] == PLUGIN_NAME]
    assert len(ours) == 1, loaded["plugins"]
    plugin = ours[0]
    assert plugin["class"] == f"{PLUGIN_NAME}.ImmudeployConsoleLinksPlugin"
    assert plugin["source"] == f"$PLUGINS_FOLDER/{PLUGIN_NAME}.py"
    assert plugin["links"] == [
        "immudeploy.airflow.links.ImageLink",
        "immudeploy.airflow.links.ServerGroupLink",
        "immudeploy.airflow.links.TargetGroupLink",
    ]
    assert plugin["link_names"] == ["AWS Image", "Auto Scaling Group", "Target Group"]
    assert {"ImageLink", "ServerGroupLink", "TargetGroupLink"} <= set(loaded["operator_extra_links"])


def test_no_project_module_is_imported_under_a_bare_name(loaded: dict[str, Any]) -> None:
    # Every file stem of the package (and of the old flat layout) that a bare import could shadow.
    stems = {p.stem for p in (SRC / "immudeploy").rglob("*.py") if p.stem != "__init__"}
    stems |= {p.name for p in (SRC / "immudeploy").rglob("*") if p.is_dir() and p.name != "__pycache__"}
    stems |= {"pipeline", "server_groups", "dag_tasks", "local_stack", "ci_client", "operators", "triggers"}
    bare = sorted(name for name in loaded["modules"] if name in stems and _in_repo(loaded["modules"][name]))
    assert bare == []


def test_every_module_from_the_repository_has_one_package_name(loaded: dict[str, Any]) -> None:
    """The plugin file under its own bare name, everything else under `immudeploy.`; no file twice."""
    from_repo = {name: path for name, path in loaded["modules"].items() if _in_repo(path)}
    assert PLUGIN_NAME in from_repo
    outside_package = sorted(
        name
        for name in from_repo
        if name not in (PLUGIN_NAME, "immudeploy") and not name.startswith("immudeploy.")
    )
    # Neither the developer tooling (immudeploy_dev) nor the CI client belongs in an Airflow process.
    assert outside_package == []
    by_file: dict[str, list[str]] = {}
    for name, path in from_repo.items():
        by_file.setdefault(str(Path(path).resolve()), []).append(name)
    assert {path: names for path, names in by_file.items() if len(names) > 1} == {}


def test_every_immudeploy_module_loaded_is_the_installed_package(loaded: dict[str, Any]) -> None:
    modules = {name: path for name, path in loaded["modules"].items() if "immudeploy" in name}
    assert modules, "the plugin imported nothing of immudeploy"
    for name, path in modules.items():
        if name == PLUGIN_NAME:
            assert Path(path).resolve() == (PLUGINS / f"{PLUGIN_NAME}.py").resolve()
        else:
            assert name == "immudeploy" or name.startswith("immudeploy."), name
            assert Path(path).resolve().is_relative_to(SRC / "immudeploy"), (name, path)


def _defines_airflow_plugin(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                if (isinstance(base, ast.Name) and base.id == "AirflowPlugin") or (
                    isinstance(base, ast.Attribute) and base.attr == "AirflowPlugin"
                ):
                    return True
    return False


def test_the_plugins_folder_holds_only_plugin_files() -> None:
    entries = sorted(p for p in PLUGINS.iterdir() if p.name != "__pycache__")
    assert entries, "plugins/ is empty"
    not_python = [p.name for p in entries if not (p.is_file() and p.suffix == ".py")]
    assert not_python == [], "plugins/ must hold only plugin modules (a package there is imported bare)"
    without_plugin = [p.name for p in entries if not _defines_airflow_plugin(ast.parse(p.read_text()))]
    assert without_plugin == []
