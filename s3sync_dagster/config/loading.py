"""The settings read and validated, from a mapping or a file: each problem named with its file, line and field."""

from __future__ import annotations

import os
from typing import Any

import yaml
from pydantic import ValidationError

from s3sync_dagster.config.app import AppConfig
from s3sync_dagster.config.discovery import CONFIG_ENV_VAR, DEFAULT_CONFIG_FILE, config_path
from s3sync_dagster.config.errors import ConfigError
from s3sync_dagster.config.lines import Lines, line_of, yaml_lines
from s3sync_dagster.config.literal_secrets import refuse_literal_secrets
from s3sync_dagster.config.problems import location_text, problem_said, rendered_empty, untagged_location


def parse_config(raw: Any, origin: str = "<config>", lines: Lines | None = None, written: Any = None) -> AppConfig:
    """The settings, validated; an error names the file, each problem's line (where `lines` tell it) and field.
    `written`: a component's attributes as written, of which `raw` is the rendering (its templates' values)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping with chroma, embedding and sources")
    refuse_literal_secrets(raw, origin, lines)
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as error:
        empty = dict(rendered_empty(written, raw))
        problems = [f"{origin}: {error.error_count()} problem(s):"]
        for problem in error.errors():
            loc = untagged_location(tuple(problem["loc"]))
            line = line_of(lines or {}, loc)
            said = problem_said(problem["type"], loc, problem["msg"], empty)
            problems.append(f"  {f'line {line}: ' if line else ''}{location_text(raw, loc)}: {said}")
        raise ConfigError("\n".join(problems)) from None


def load_config(explicit: str | os.PathLike[str] | None = None) -> AppConfig:
    path = config_path(explicit)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start})"
        ) from None
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found (give --config PATH, set ${CONFIG_ENV_VAR}, "
            f"or create ./{DEFAULT_CONFIG_FILE})"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    config = parse_config(raw, str(path), yaml_lines(text))
    if config.chroma.is_embedded:
        # An embedded store lives beside the config file, wherever the command runs from.
        store = (path.parent / config.chroma.embedded_path).resolve()
        config = config.model_copy(update={"chroma": config.chroma.model_copy(update={"path": str(store)})})
    return config
