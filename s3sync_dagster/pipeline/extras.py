"""The package's optional features and the extra that installs each: a feature configured without its extra
fails at once, naming the setting and the pip command that adds it (pyproject.toml, [project.optional-dependencies])."""

from __future__ import annotations

import importlib.util

DISTRIBUTION = "s3sync-dagster"
# Extra -> the modules its features import (each one's absence is what the error names).
MODULES: dict[str, tuple[str, ...]] = {
    "celery": ("dagster_celery", "celery", "redis"),
    "postgres": ("dagster_postgres", "psycopg2"),
    "demo": ("moto", "flask", "dagster_webserver"),  # moto's server runs on flask
    "torch": ("torch", "sentence_transformers"),
}


class MissingExtra(ValueError):
    """A configured feature's packages are not installed. A ValueError, so a config validator reports it."""


def install_command(extra: str) -> str:
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def absent(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (nothing is imported to tell)."""
    return [module for module in MODULES[extra] if importlib.util.find_spec(module) is None]


def installed(extra: str) -> bool:
    return not absent(extra)


def extra_of(module: str) -> str | None:
    """The extra that installs `module` (a dotted name: its top package decides), if one does."""
    package = module.split(".")[0]
    return next((extra for extra, modules in MODULES.items() if package in modules), None)


def require(extra: str, setting: str, error: type[Exception] = MissingExtra) -> None:
    """Raise `error` unless every module of `extra` is importable; `setting` is what asked for it."""
    missing = absent(extra)
    if missing:
        raise error(
            f"{setting} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed here "
            f"(the [{extra}] extra): {install_command(extra)}"
        )
