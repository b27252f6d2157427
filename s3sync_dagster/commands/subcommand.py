"""What every `s3sync` subcommand shares: the --config and --json options, the config and the Dagster instance
they name, an answer printed in words or (--json) as JSON, and the exit codes."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, TypeAlias

from s3sync_dagster.config import CONFIG_ENV_VAR, AppConfig, config_file, is_component, load_project_env

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2

# What each subcommand's piece adds itself to (commands/cli.py's build_parser).
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def common_options() -> argparse.ArgumentParser:
    """--config and --json, the parent of every subcommand's parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        help="config file: an s3sync.yaml, or the defs.yaml of an S3ChromaSync component (default: $S3SYNC_CONFIG, "
        "else ./s3sync.yaml, else the component of the Dagster project around the working directory)",
    )
    common.add_argument("--json", action="store_true", help="print JSON")
    return common


def emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    """The answer: its payload as JSON with --json, else its text."""
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text)


def load_config(args: argparse.Namespace) -> AppConfig:
    """The sources, from --config (an s3sync.yaml or a component's defs.yaml), $S3SYNC_CONFIG, ./s3sync.yaml, or
    the S3ChromaSync component of the Dagster project around the working directory."""
    path = Path(args.config) if args.config else config_file()
    component = is_component(path)
    if component:
        load_project_env(path)
    if args.config or component:
        # Runs on Celery workers rebuild their job from the config by this variable, in this process too
        # (definitions.documents_job): it must name the file found here.
        os.environ[CONFIG_ENV_VAR] = str(path.resolve())
    from s3sync_dagster.commands.query import load_sources

    return load_sources(path)


def dagster_instance(args: argparse.Namespace) -> Any:
    """The Dagster instance of the home --config implies (commands/runs/dagster_home.py), opened when a command needs it."""
    from s3sync_dagster.commands.runs import open_instance

    return open_instance(args.config)
