"""The Dagster instance's own settings (its home's `dagster.yaml`) as they bear on this package: the extras the
classes it names come from (`storage: postgres` is dagster-postgres's, the [postgres] extra), required where our
code opens the instance or loads the definitions, so that a lean install is told the pip command, not Dagster's
`CheckError: Couldn't import module dagster_postgres`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from s3sync_dagster.pipeline import extras

INSTANCE_FILE = "dagster.yaml"
# Dagster's shorthand for a storage of one of its integrations: `storage: {postgres: {...}}`, the module it loads.
_STORAGE_SHORTHANDS = {"postgres": "dagster_postgres", "mysql": "dagster_mysql"}


def modules_named(settings: dict[str, Any]) -> dict[str, str]:
    """The modules an instance's settings load classes from, by setting: each section's `module` (run_storage,
    event_log_storage, run_launcher, compute_logs, ...) and `storage`'s kind."""
    named = {}
    for section, value in settings.items():
        if not isinstance(value, dict):
            continue
        if isinstance(value.get("module"), str):
            named[section] = value["module"]
        if section == "storage":
            named.update({f"storage.{kind}": module for kind, module in _STORAGE_SHORTHANDS.items() if kind in value})
            custom = value.get("custom")
            if isinstance(custom, dict) and isinstance(custom.get("module"), str):
                named["storage.custom"] = custom["module"]
    return named


def require_instance_extras(home: str | os.PathLike[str] | None = None) -> None:
    """extras.MissingExtra, naming the setting, its file and the pip command, unless every extra the instance in
    `home` needs is installed. Default: $DAGSTER_HOME; unset, Dagster's temporary instance, which needs none. A
    missing or unreadable file is left to Dagster, which says so in its own words."""
    where = home if home is not None else os.environ.get("DAGSTER_HOME")
    if not where:
        return
    path = Path(where) / INSTANCE_FILE
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return
    if not isinstance(settings, dict):
        return
    for setting, module in modules_named(settings).items():
        extra = extras.extra_of(module)
        if extra is not None:
            extras.require(extra, f"the Dagster instance's {setting} ({path})")
