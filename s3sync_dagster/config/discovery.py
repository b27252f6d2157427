"""Where the sources are declared: `--config`, `$S3SYNC_CONFIG`, ./s3sync.yaml, or the S3ChromaSync component's
defs.yaml in the Dagster project around; the project's `.env`, and where `.s3sync/` goes."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from s3sync_dagster.config.errors import ConfigError

DEFAULT_CONFIG_FILE = "s3sync.yaml"
CONFIG_ENV_VAR = "S3SYNC_CONFIG"


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`--config PATH`, else `$S3SYNC_CONFIG`, else `./s3sync.yaml`."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV_VAR)
    return Path(from_env) if from_env else Path(DEFAULT_CONFIG_FILE)


# The S3ChromaSync component, as a Dagster project's defs.yaml names it (definitions.py builds it): found here
# without importing Dagster, so that `s3sync query` does not pay for it.
COMPONENT_TYPE = "s3sync_dagster.S3ChromaSync"
COMPONENT_FILES = ("defs.yaml", "defs.yml")


def component_file(path: Path) -> Path | None:
    """The defs.yaml that declares the S3ChromaSync component at `path` (the file, or its folder), if any."""
    candidates = [path / name for name in COMPONENT_FILES] if path.is_dir() else [path]
    for candidate in candidates:
        if candidate.name in COMPONENT_FILES and candidate.is_file():
            try:
                documents = list(yaml.safe_load_all(candidate.read_text(encoding="utf-8")))
            except (yaml.YAMLError, UnicodeDecodeError):
                return None
            if any(isinstance(doc, dict) and doc.get("type") == COMPONENT_TYPE for doc in documents):
                return candidate
    return None


def project_root(start: Path) -> Path | None:
    """The Dagster project holding `start`: the nearest folder with a dg.toml or a pyproject.toml with [tool.dg]."""
    for folder in [start, *start.parents]:
        if (folder / "dg.toml").is_file():
            return folder
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "[tool.dg" in pyproject.read_text(encoding="utf-8", errors="replace"):
            return folder
    return None


def load_project_env(component: Path) -> None:
    """The Dagster project's `.env`, as `dg dev` and `dg check` load it: variables already set keep their value."""
    root = project_root(component.resolve().parent)
    if root is not None and (root / ".env").is_file():
        from dotenv import load_dotenv

        load_dotenv(root / ".env", override=False)


def _skipped(folder: str) -> bool:
    """Folders no defs.yaml of the project's is in: virtual environments, caches, hidden folders."""
    return folder.startswith(".") or folder in ("node_modules", "__pycache__", "site-packages", "venv")


def find_component(start: Path, within: Path | None = None) -> Path | None:
    """The defs.yaml of the S3ChromaSync component in the Dagster project holding `start` (searched `within` its
    defs folder when known, else the whole project but its environments and caches), if there is one."""
    root = project_root(start.resolve())
    if root is None:
        return None
    found: list[Path] = []
    for folder, subfolders, files in os.walk(within or root):
        subfolders[:] = sorted(name for name in subfolders if not _skipped(name))
        found += [
            Path(folder) / name for name in COMPONENT_FILES if name in files and component_file(Path(folder) / name)
        ]
    if len(found) > 1:
        raise ConfigError(
            f"the Dagster project {root} declares {COMPONENT_TYPE} {len(found)} times "
            f"({', '.join(str(path.relative_to(root)) for path in sorted(found))}): one component holds all of a "
            "project's sources: list them all under one component's `sources`"
        )
    return found[0] if found else None


def config_file() -> Path:
    """The file that declares the sources: `$S3SYNC_CONFIG`, else ./s3sync.yaml, else the S3ChromaSync component's
    defs.yaml in the Dagster project around the working directory."""
    path = config_path()
    if os.environ.get(CONFIG_ENV_VAR) or path.exists():
        return path
    return find_component(Path.cwd()) or path


def is_component(path: Path) -> bool:
    return component_file(path) is not None


def state_dir(path: Path) -> Path:
    """Where `.s3sync/` goes for the sources declared at `path`: the Dagster project's root for a component,
    else the config file's folder."""
    if is_component(path):
        return project_root(path.resolve().parent if path.is_file() else path.resolve()) or path.resolve().parent
    return path.resolve().parent
