"""The package uses only public names of the libraries it builds on: a private one (`dagster._core...`, a
Chroma collection's `_client`) can change in any release and stop every process that imports it."""

import ast
from pathlib import Path

import yaml

import s3sync_dagster

PACKAGE = Path(s3sync_dagster.__file__).parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str) -> list[str]:
    """Imports of private modules or names, and `x._name` on anything but self/cls, as `line: text`."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        imported: list[str] = []
        if isinstance(node, ast.Import):
            imported = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        for module in imported:
            if not module.startswith("s3sync_dagster") and any(_private(part) for part in module.split(".")):
                found.append(f"{node.lineno}: import {module}")
    return found


def test_the_rule_finds_what_it_is_for() -> None:
    assert private_uses("from dagster._core.storage import x\nimport chromadb\ncollection._client.y()\n") == [
        "1: import dagster._core.storage",
        "1: import dagster._core.storage.x",
        "3: collection._client",
    ]
    assert private_uses("from dagster import _private\nimport dagster._serdes as s\n") == [
        "1: import dagster._private",
        "2: import dagster._serdes",
    ]
    assert private_uses("self._lock\ncls._cache\nx.__dict__\nfrom __future__ import annotations\n") == []
    assert private_uses("from s3sync_dagster.defs.resources import _client\nfrom ._x import y\n") == []  # our own


def test_no_private_name_of_another_library_in_the_package() -> None:
    found = {
        str(path.relative_to(PACKAGE)): uses
        for path in sorted(PACKAGE.rglob("*.py"))
        if (uses := private_uses(path.read_text(encoding="utf-8")))
    }
    assert found == {}


def test_the_instance_config_names_only_dagster_classes() -> None:
    # A storage class of ours in dagster.yaml would stand on Dagster's internals (as event_log.py did).
    settings = yaml.safe_load((PACKAGE.parent / "dagster.yaml").read_text(encoding="utf-8"))
    modules = [value["module"] for value in settings.values() if isinstance(value, dict) and "module" in value]
    assert all(module.startswith("dagster") for module in modules), modules
