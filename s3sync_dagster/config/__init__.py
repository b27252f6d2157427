"""The user's YAML file (or a component's attributes): the one source model both layers above read, and how to find
and load it. Each idea has its module; this one only re-exports them, so that `from s3sync_dagster.config import X`
reads as it always has (submodules import one another directly, never through here).

The model: app (AppConfig, the rules that join the sources), source (one S3 source, its chunking and timeouts),
asset (a source's `asset:` attributes), chroma, embedding, deployment (documents, executor, webserver, resource
keys), secret_rules (`{env: VAR}` and the patterns of a literal secret), errors (ConfigError).
Reading it: discovery (which file, the project's `.env`, where `.s3sync/` goes), loading (parse_config,
load_config), lines (a value's YAML line), problems (an error in words that name the fix), literal_secrets (secrets
written as literals, refused before anything reads them), schema (the component's JSON schema for `dg check yaml`),
instance (the extras the Dagster instance's own dagster.yaml needs).
"""

from s3sync_dagster.config.app import AppConfig
from s3sync_dagster.config.asset import SOURCE_KINDS, AssetAttributes
from s3sync_dagster.config.chroma import DEFAULT_CHROMA_PATH, ChromaCloudConfig, ChromaConfig
from s3sync_dagster.config.deployment import (
    CeleryConfig,
    DocumentsConfig,
    ExecutorConfig,
    ResourceKeysConfig,
    WebserverConfig,
)
from s3sync_dagster.config.discovery import (
    COMPONENT_FILES,
    COMPONENT_TYPE,
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_FILE,
    component_file,
    config_file,
    config_path,
    find_component,
    is_component,
    load_project_env,
    project_root,
    state_dir,
)
from s3sync_dagster.config.embedding import EmbeddingConfig
from s3sync_dagster.config.errors import ConfigError
from s3sync_dagster.config.instance import require_instance_extras
from s3sync_dagster.config.lines import Lines, Loc, line_of, yaml_lines
from s3sync_dagster.config.literal_secrets import (
    SECRET_FIELDS,
    URL_FIELDS,
    literal_secret_schema,
    literal_secrets,
    refuse_literal_secrets,
)
from s3sync_dagster.config.loading import load_config, parse_config
from s3sync_dagster.config.problems import did_you_mean
from s3sync_dagster.config.schema import component_schema, schema_problems
from s3sync_dagster.config.secret_rules import CREDENTIAL_SHAPE, EnvRef
from s3sync_dagster.config.source import (
    SOURCE_NAME_PATTERN,
    ChunkingConfig,
    LinesChunking,
    SourceConfig,
    TimeoutsConfig,
    TreeSitterChunking,
)

__all__ = [
    "COMPONENT_FILES",
    "COMPONENT_TYPE",
    "CONFIG_ENV_VAR",
    "CREDENTIAL_SHAPE",
    "DEFAULT_CHROMA_PATH",
    "DEFAULT_CONFIG_FILE",
    "SECRET_FIELDS",
    "SOURCE_KINDS",
    "SOURCE_NAME_PATTERN",
    "URL_FIELDS",
    "AppConfig",
    "AssetAttributes",
    "CeleryConfig",
    "ChromaCloudConfig",
    "ChromaConfig",
    "ChunkingConfig",
    "ConfigError",
    "DocumentsConfig",
    "EmbeddingConfig",
    "EnvRef",
    "ExecutorConfig",
    "Lines",
    "LinesChunking",
    "Loc",
    "ResourceKeysConfig",
    "SourceConfig",
    "TimeoutsConfig",
    "TreeSitterChunking",
    "WebserverConfig",
    "component_file",
    "component_schema",
    "config_file",
    "config_path",
    "did_you_mean",
    "find_component",
    "is_component",
    "line_of",
    "literal_secret_schema",
    "literal_secrets",
    "load_config",
    "load_project_env",
    "parse_config",
    "project_root",
    "refuse_literal_secrets",
    "require_instance_extras",
    "schema_problems",
    "state_dir",
    "yaml_lines",
]
