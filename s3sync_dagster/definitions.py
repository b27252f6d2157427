"""Builds the Dagster Definitions from the user's config, each source's own (defs/source.py) merged, through
either front door: the code location of `s3sync.yaml`, or the `S3ChromaSync` component in a Dagster project."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field

from s3sync_dagster.config import (
    COMPONENT_FILES,
    COMPONENT_TYPE,
    DEFAULT_CHROMA_PATH,
    AppConfig,
    ConfigError,
    component_file,
    component_schema,
    config_file,
    find_component,
    load_config,
    parse_config,
    refuse_literal_secrets,
    schema_problems,
    yaml_lines,
)
from s3sync_dagster.defs.executor import executor_for
from s3sync_dagster.defs.index_view import IndexSummary, summarize
from s3sync_dagster.defs.names import documents_job_name
from s3sync_dagster.defs.resources import resources_for
from s3sync_dagster.defs.sensors import build_invocation_sensor, build_run_monitor
from s3sync_dagster.defs.source import source_definitions


def build_definitions(config: AppConfig) -> dg.Definitions:
    shared = dg.Definitions(
        # Turns `s3sync invoke` requests into runs; fails runs whose worker died.
        sensors=[build_invocation_sensor(config.sources), build_run_monitor()] if config.sources else [],
        resources=resources_for(config),
        executor=executor_for(config),
    )
    return dg.Definitions.merge(
        shared, *(source_definitions(source, config.resource_keys, config.sources) for source in config.sources)
    )


@dg.definitions
def defs() -> dg.Definitions:
    # Loaded by `dagster dev` / the webserver through workspace.yaml; the config file is found as
    # the CLI finds it (`$S3SYNC_CONFIG`, else ./s3sync.yaml).
    return build_definitions(load_app_config())


class ScaffoldParams(BaseModel):
    """`dg scaffold defs s3sync_dagster.S3ChromaSync NAME --bucket-name ...`: the first source's place. Dagster
    makes each field an option; the component's help lists them with these descriptions (scaffold_options_help)."""

    bucket_name: str = Field(default="my-bucket", description="the S3 bucket")
    region: str = Field(default="us-east-1", description="the bucket's AWS region")
    path_prefix: str = Field(default="", description="only the objects under this prefix, e.g. guides/")
    collection_name: str | None = Field(default=None, description="the Chroma collection; default: NAME-chunks")
    endpoint_url: str | None = Field(
        default=None, description="an S3-compatible endpoint (MinIO, R2, a local one); default: AWS"
    )


def scaffold_options_help() -> str:
    """The scaffold's options in words, for `dg scaffold defs s3sync_dagster.S3ChromaSync --help`: Dagster adds
    an option per ScaffoldParams field, but its help, drawn by typer, leaves out options it did not make itself
    (typer 0.12 and later), so the component's own description lists them."""
    lines = ["Scaffold options (dg scaffold defs s3sync_dagster.S3ChromaSync NAME --bucket-name acme-docs ...):"]
    for name, field in ScaffoldParams.model_fields.items():
        default = f" (default: {field.default!r})" if field.default not in (None, "") else ""
        lines.append(f"  --{name.replace('_', '-')} TEXT: {field.description}{default}")
    lines.append("  --json-params JSON: all of them as one JSON object, instead of the options")
    return "\n".join(lines)


# What `dg scaffold defs` writes: one source, every other setting shown commented at its default.
_SCAFFOLD = """\
type: {type}

# S3 sources kept in sync with Chroma collections. These attributes are those of s3sync.yaml, one model
# (`dg check yaml` and `dg check defs` validate them). One component holds all of this project's sources.
# Each commented setting is valid uncommented, at its default or as an example ("with"/"instead of": what
# else it needs, or what it replaces). Values but secrets may be Dagster templates: "{{{{ env.VAR_NAME }}}}".
attributes:
  # Where the chunks go: an embedded store (a path under the project), a Chroma server, or Chroma Cloud.
  chroma:
    path: .s3sync/chroma
    # host: chroma.internal                                   # instead of path: a Chroma server
    # port: 8000
    # cloud: {{tenant: my-tenant, database: my-db, api_key: {{env: CHROMA_API_KEY}}}}   # instead of path
  # embedding: default          # Chroma's own all-MiniLM-L6-v2, bundled: nothing downloaded
  # documents: {{timeout_seconds: 300, workers: 2, ocr: true}}
  # Where the Dagster webserver answers, for each source's <name>_backfill job. Unset, `dg dev` and `dagster dev`
  # on this machine are found on any port; a deployment's webserver on another host is named here.
  # webserver: {{url: "http://dagster-webserver:80"}}
  # The resources' keys in this project (s3sync_s3, s3sync_chroma, ...): rename one that meets one of yours.
  # resource_keys: {{s3: s3sync_s3, chroma: s3sync_chroma, io_manager: s3sync_io_manager}}
  sources:
    - name: {name}
      bucket_name: {bucket_name}
      region: {region}
      collection_name: {collection_name}
      path_prefix: {path_prefix}
{endpoint}\
      # Credentials: the default AWS chain (environment, profile, instance role), or variables by name:
      # aws_access_key_id: {{env: AWS_ACCESS_KEY_ID}}               # with aws_secret_access_key
      # aws_secret_access_key: {{env: AWS_SECRET_ACCESS_KEY}}       # with aws_access_key_id
      # include: ["**/*.md", "**/*.pdf"]
      # exclude: ["drafts/**"]
      # chunking: {{type: tree_sitter, max_size_bytes: 4096}}
      # Auto-sync: S3 event notifications through SQS (every upload, or only .meta.json files) ...
      # auto_sync: direct                                     # with sqs_queue_url
      # sqs_queue_url: https://sqs.us-east-1.amazonaws.com/123456789012/my-queue
      # sqs_linger_seconds: 60          # the run then reads the queue itself this long: new uploads in < 1 s
      # ... or polling the prefix for new, changed and deleted objects:
      # poll_interval_seconds: 300
      # keys_per_run: 100
      # group_name: {name}            # the asset group in the UI
      # asset_key_prefix: [{name}]    # the asset's key: <prefix>/documents
      # The asset's other attributes, as Dagster names them (docs/component.md):
      # asset:
      #   description: "The staff handbook, chunked for search"
      #   tags: {{domain: handbook}}
      #   owners: ["team:docs"]
      #   kinds: [markdown]
      #   automation_condition: "{{{{ dg.AutomationCondition.on_missing() }}}}"
      # forget_deleted_keys: false    # keep a deleted object's partition: set when assets of yours use its partitions
"""


class S3ChromaSyncScaffolder(dg.Scaffolder[ScaffoldParams]):
    """Writes a commented defs.yaml with one source, named after the folder (`dg scaffold defs ... docs`)."""

    @classmethod
    def get_scaffold_params(cls) -> type[ScaffoldParams]:
        return ScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[ScaffoldParams]) -> None:
        if request.scaffold_format != "yaml":
            raise ConfigError(f"{COMPONENT_TYPE} is declared in YAML: scaffold it without --format python")
        name = re.sub(r"[^a-z0-9_]+", "_", request.target_path.name.lower()).strip("_")
        name = name if re.match(r"^[a-z]", name) else f"source_{name}"
        params = request.params
        quoted = json.dumps  # a JSON string is a YAML string, whatever it holds ({{ env.VAR }} templates too)
        text = _SCAFFOLD.format(
            type=request.type_name,
            name=name,
            bucket_name=quoted(params.bucket_name),
            region=quoted(params.region),
            collection_name=quoted(params.collection_name or f"{name.replace('_', '-')}-chunks"),
            path_prefix=quoted(params.path_prefix),
            endpoint=f"      endpoint_url: {quoted(params.endpoint_url)}\n" if params.endpoint_url else "",
        )
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / "defs.yaml").write_text(text, encoding="utf-8")
        _ignore_state(request.project_root)


def _ignore_state(project_root: Path | None) -> None:
    """The project's .gitignore gets `.s3sync/` (the embedded store and the command's Dagster home), once."""
    ignore = project_root / ".gitignore" if project_root is not None else None
    if ignore is None or not ignore.is_file():
        return
    text = ignore.read_text(encoding="utf-8")
    if not any(line.strip() in (".s3sync/", ".s3sync", "/.s3sync/") for line in text.splitlines()):
        ending = "" if text.endswith("\n") or not text else "\n"
        ignore.write_text(
            f"{text}{ending}\n# s3sync-dagster: the embedded Chroma store and its Dagster home\n.s3sync/\n"
        )


class ComponentAttributes(BaseModel):
    """A component's attributes as Dagster hands them over: checked by `dg check yaml` against component_schema()
    (AppConfig's, a template allowed in any field), kept as written, then rendered and validated by AppConfig in
    S3ChromaSync.load. AppConfig itself cannot be Dagster's model: a `{{ env.N }}` in a number field would fail
    it before Dagster renders it."""

    model_config = ConfigDict(extra="allow")

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return component_schema()


@dg.scaffold_with(S3ChromaSyncScaffolder)
class S3ChromaSync(dg.Component):
    """S3 sources kept in sync with Chroma collections, in the Dagster project you already have.

    Each source's object keys are the dynamic partitions of its asset `<source>/documents`, with two asset
    checks, a repair job, a backfill job and, where configured, sensors (S3 events through SQS, or polling).
    The attributes are those of `s3sync.yaml`, validated by the same model: `sources` (a list: one entry per
    bucket and prefix) and the settings they share, `chroma`, `embedding`, `documents`, `webserver` and
    `executor`. One component holds all of a project's sources. Secrets are environment variables, written
    `{env: VAR_NAME}`; other text fields take Dagster's templates (`{{ env.VAR_NAME }}`). A relative
    `chroma.path` (default `.s3sync/chroma`) is under the project's root. Per source, `asset:` sets the asset's
    description, tags, owners, kinds and automation condition; `post_processing:` works as on any component.
    """

    def __init__(self, config: AppConfig) -> None:
        self.config = config

    @classmethod
    def get_model_cls(cls) -> type[BaseModel]:
        # The one model of both front doors: `dg check yaml` validates defs.yaml against AppConfig's JSON schema.
        return ComponentAttributes

    @classmethod
    def load(cls, attributes: BaseModel | None, context: dg.ComponentLoadContext) -> S3ChromaSync:
        # As written, checked as `dg check yaml` checks it (for `dg check defs --no-check-yaml`, `dg dev` and
        # `s3sync`); Dagster's templates then rendered, and the values validated by AppConfig, file and line named.
        raw = attributes.model_dump(mode="json", exclude_unset=True) if attributes is not None else {}
        path = Path(context.component_path.file_path)
        origin = (
            next((path / name for name in COMPONENT_FILES if (path / name).is_file()), path) if path.is_dir() else path
        )
        lines = yaml_lines(origin.read_text(encoding="utf-8"), under=("attributes",)) if origin.is_file() else {}
        # A literal secret first, before anything that could show it (dg's schema check passes it: config/schema.py).
        refuse_literal_secrets(raw, str(origin), lines)
        problems = schema_problems(raw, str(origin), lines)
        if problems:
            raise ConfigError("\n".join([f"{origin}: {len(problems)} problem(s):", *problems]))
        rendered = context.resolution_context.at_path("attributes").resolve_value(raw)
        # A second one is refused: the sources' shared resources (chroma, s3, ...) are one per code location.
        find_component(context.project_root, within=context.defs_module_path)
        config = _chroma_under(dict(rendered), context.project_root)
        return cls(parse_config(config, origin=str(origin), lines=lines, written=raw))

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return build_definitions(self.config)


# `dg scaffold defs ... --help` shows the component's description: its options are said there.
S3ChromaSync.__doc__ = f"{S3ChromaSync.__doc__}\n{textwrap.indent(scaffold_options_help(), '    ')}\n"


def _chroma_under(raw: dict[str, Any], project_root: Path) -> dict[str, Any]:
    """An embedded store's relative path is under the project's root, wherever the code server starts."""
    chroma = dict(raw.get("chroma") or {})
    if chroma.get("host") is None and chroma.get("cloud") is None:
        path = Path(chroma.get("path") or DEFAULT_CHROMA_PATH)
        chroma["path"] = str(path if path.is_absolute() else project_root / path)
    return {**raw, "chroma": chroma}


def load_app_config(path: str | os.PathLike[str] | None = None) -> AppConfig:
    """The sources and their shared settings, from `s3sync.yaml` or from the project's S3ChromaSync component
    (loaded as Dagster loads it, its templates rendered: the project must be importable, as for `dg`)."""
    where = Path(path) if path is not None else config_file()
    component = component_file(where)
    if component is None:
        return load_config(where)
    try:
        tree = dg.ComponentTree.for_project(component.parent)
        return tree.load_component(component.parent.resolve(), S3ChromaSync).config
    except ConfigError:
        raise
    except Exception as error:
        # Our own error, from inside Dagster's loading: as it is, file, line and field, without Dagster's tree.
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        # The project cannot be imported, the file is broken: say which.
        raise ConfigError(f"{component}: the {COMPONENT_TYPE} component could not be loaded: {error}") from None


def read_index(source_name: str, config: AppConfig | str | os.PathLike[str] | None = None) -> IndexSummary:
    """A source's documents and their chunk counts as Chroma holds them now, for an asset of yours downstream of
    the source's: a deleted object is gone from it as soon as its sync removed its chunks (Dagster's partitions
    keep its key where `forget_deleted_keys: false`). docs/component.md.

        @dg.asset(deps=[dg.AssetKey(["handbook", "documents"])])
        def handbook_stats() -> dg.MaterializeResult:
            indexed = s3sync_dagster.read_index("handbook")
            return dg.MaterializeResult(metadata={"documents": len(indexed), "chunks": indexed.chunk_count})

    config: the loaded config, or the s3sync.yaml, the component's defs.yaml or a folder of the Dagster project
    holding it; absent, found as `s3sync` finds it ($S3SYNC_CONFIG, ./s3sync.yaml, the project around the working
    directory, which is the project's root in the runs `dg dev` and its code servers launch)."""
    if not isinstance(config, AppConfig):
        where = Path(config) if config is not None else None
        if where is not None and where.is_dir():
            where = find_component(where) or where / "s3sync.yaml"
        config = load_app_config(where)
    return summarize(config, source_name)


def documents_job(source_name: str) -> dg.JobDefinition:
    """The job of one source's documents asset, from the config (load_app_config: $S3SYNC_CONFIG, ...).

    What the runs of `s3sync sync` executed through Celery are rebuilt from (`dg.build_reconstructable_job`):
    each worker calls this in its own process, on the same config file. The implicit asset job cannot be:
    Dagster refuses to put a job of that reserved name into the repository a reconstructed job needs.
    Runs the daemon launches (sensors, UI backfills) need none of this: their pointer is the code
    location's (`defs` above, through workspace.yaml), whose repository holds the implicit asset job and the
    sensors' jobs, and a worker rebuilds the job from it (test_celery_daemon.py).
    """
    return build_definitions(load_app_config()).resolve_job_def(documents_job_name(source_name))
