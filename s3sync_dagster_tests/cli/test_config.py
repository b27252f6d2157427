"""The YAML contract: names, defaults, secrets only as {env: ...}, errors that name the field and source."""

import re
from pathlib import Path

import pytest
import yaml

from s3sync_dagster.config import ConfigError, config_path, load_config, parse_config

SOURCE = {"name": "docs", "bucket_name": "my-bucket", "region": "eu-west-1", "collection_name": "docs-col"}


def test_minimal_source_gets_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "s3sync.yaml"
    path.write_text(yaml.safe_dump({"sources": [SOURCE]}))
    config = load_config(path)
    source = config.source("docs")
    assert source.chunking.type == "tree_sitter" and source.chunking.max_size_bytes == 4096
    assert source.max_object_bytes == 200 * 1024 * 1024
    assert source.aws_access_key_id is None  # the default credential chain
    # The embedded store lives beside the config file.
    assert config.chroma.path == str((tmp_path / ".s3sync" / "chroma").resolve())
    assert config.embedding.model is None


def test_lines_chunking_and_env_credentials() -> None:
    config = parse_config(
        {
            "sources": [
                {
                    **SOURCE,
                    "chunking": {"type": "lines", "max_lines": 20, "max_size_bytes": 2048},
                    "aws_access_key_id": {"env": "MY_KEY_ID"},
                    "aws_secret_access_key": {"env": "MY_SECRET"},
                }
            ]
        }
    )
    source = config.sources[0]
    assert source.chunking.type == "lines" and source.chunking.max_lines == 20
    assert source.aws_secret_access_key is not None and source.aws_secret_access_key.env == "MY_SECRET"


def test_literal_secret_is_refused_and_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {"sources": [{**SOURCE, "aws_access_key_id": {"env": "K"}, "aws_secret_access_key": "hunter2-literal"}]}
        )
    message = str(caught.value)
    assert "sources[0] (source 'docs').aws_secret_access_key" in message
    assert "literal secret is refused" in message
    assert "hunter2-literal" not in message


def test_key_shaped_literal_anywhere_is_refused() -> None:
    key_shaped = "AKIA" + "ABCDEFGHIJKLMNOP"  # built here so no key-shaped literal sits in the repo
    with pytest.raises(ConfigError) as caught:
        parse_config({"sources": [{**SOURCE, "path_prefix": key_shaped}]})
    assert "sources[0] (source 'docs').path_prefix" in str(caught.value)
    assert key_shaped not in str(caught.value)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        # Nested: chromadb's openai function records default_headers whole in the collection.
        ({"default_headers": {"Authorization": "Bearer pasted-value-123"}}, "config.default_headers.Authorization"),
        # The secret itself pasted where a variable's name goes.
        ({"api_key_env_var": "pasted-value-123"}, "config.api_key_env_var"),
        ({"api_key": "pasted-value-123"}, "config.api_key"),
    ],
)
def test_a_secret_in_an_embedding_functions_config_is_refused_at_any_depth_and_not_echoed(
    config: dict, field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {"embedding": {"function": "openai", "config": {"model_name": "text-embedding-3-small", **config}}}
        )
    assert field in str(caught.value) and "pasted-value-123" not in str(caught.value)
    # Written as the Sync API's users write it, the variable's name is what the collection records.
    embedding = parse_config({"embedding": {"function": "openai", "config": {"api_key": {"env": "OPENAI_KEY"}}}})
    assert embedding.embedding.config == {"api_key_env_var": "OPENAI_KEY"}


def test_an_openai_shaped_key_anywhere_is_refused() -> None:
    key_shaped = "sk-" + "proj" + "A1b2C3d4E5f6G7h8I9j0"  # built here so no key-shaped literal sits in the repo
    with pytest.raises(ConfigError) as caught:
        parse_config({"sources": [{**SOURCE, "path_prefix": key_shaped}]})
    assert key_shaped not in str(caught.value)


@pytest.mark.parametrize(
    "change",
    [
        {"endpoint_url": "https://minio-user:pasted-value-123@minio.internal:9000"},
        {"auto_sync": "direct", "sqs_queue_url": "https://user:pasted-value-123@sqs.local/1/q"},
        {"aws_access_key_id": {"env": "K"}, "aws_secret_access_key": {"env": "pasted-value-123"}},
    ],
)
def test_a_secret_pasted_in_the_wrong_place_is_refused_and_never_echoed(change: dict) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"sources": [{**SOURCE, **change}]})
    assert "pasted-value-123" not in str(caught.value) and "sources[0] (source 'docs')" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        parse_config({"chroma": {"host": "admin:pasted-value-123@chroma.internal"}})
    assert "chroma.host" in str(caught.value) and "pasted-value-123" not in str(caught.value)


def test_chroma_cloud_key_and_secret_headers_must_be_env_refs() -> None:
    with pytest.raises(ConfigError, match="api_key"):
        parse_config({"chroma": {"cloud": {"tenant": "t", "database": "d", "api_key": "plain"}}})
    with pytest.raises(ConfigError, match=r"headers\.Authorization"):
        parse_config({"chroma": {"host": "localhost", "headers": {"Authorization": "Bearer x"}}})
    config = parse_config(
        {"chroma": {"host": "localhost", "headers": {"Authorization": {"env": "TOKEN"}, "X-Team": "a"}}}
    )
    assert not config.chroma.is_embedded


def test_a_servers_lexical_index_is_a_postgres_url_in_a_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://lexicon:s3cr3t-pw@db.internal:5432/lexicon"
    with pytest.raises(ConfigError, match="lexicon_postgres") as refused:
        parse_config({"chroma": {"host": "chroma", "lexicon_postgres": url}})
    assert "s3cr3t-pw" not in str(refused.value)
    with pytest.raises(ConfigError, match="lexicon_postgres is for a Chroma server"):
        parse_config({"chroma": {"path": "chroma", "lexicon_postgres": {"env": "S3SYNC_LEXICON"}}})
    config = parse_config({"chroma": {"host": "chroma", "lexicon_postgres": {"env": "S3SYNC_LEXICON"}}})
    with pytest.raises(ConfigError, match="S3SYNC_LEXICON is not set"):
        config.chroma.store()
    monkeypatch.setenv("S3SYNC_LEXICON", url)
    store = config.chroma.store()
    assert store.lexicon_dsn == url and "s3cr3t-pw" not in repr(store)


def test_the_webserver_url_and_token_keep_secrets_out() -> None:
    assert parse_config({}).webserver.url is None  # found where the run is (defs/webserver.py)
    with pytest.raises(ConfigError) as caught:
        parse_config({"webserver": {"url": "http://admin:pasted-value-123@dagster.internal"}})
    assert "webserver.url" in str(caught.value) and "pasted-value-123" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"webserver\.api_token") as refused:
        parse_config({"webserver": {"api_token": "user:pasted-token-456"}})
    assert "pasted-token-456" not in str(refused.value)
    config = parse_config({"webserver": {"url": "http://dagster:80", "api_token": {"env": "DAGSTER_TOKEN"}}})
    assert config.webserver.api_token is not None and config.webserver.api_token.env == "DAGSTER_TOKEN"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"name": "Bad-Name"}, "sources[0] (source 'Bad-Name').name"),
        ({"region": None}, "sources[0] (source 'docs').region"),
        ({"collection_name": "-x"}, "collection_name"),
        ({"chunking": {"type": "words"}}, "chunking"),
        ({"chunking": {"type": "lines", "max_lines": 0}}, "chunking.max_lines"),
        ({"aws_access_key_id": {"env": "K"}}, "together"),
        ({"bucket": "typo"}, "sources[0] (source 'docs').bucket"),
    ],
)
def test_errors_name_the_source_and_field(change: dict, expected: str) -> None:
    entry = {**SOURCE, **change}
    entry = {k: v for k, v in entry.items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        parse_config({"sources": [entry]}, "s3sync.yaml")
    assert expected in str(caught.value)
    assert str(caught.value).startswith("s3sync.yaml:")


def test_duplicate_source_names_and_one_chroma_target() -> None:
    with pytest.raises(ConfigError, match="used twice"):
        parse_config({"sources": [SOURCE, SOURCE]})
    with pytest.raises(ConfigError, match="only one of path, host or cloud"):
        parse_config({"chroma": {"path": "x", "host": "y"}})


def test_config_file_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("S3SYNC_CONFIG", raising=False)
    assert config_path() == Path("s3sync.yaml")
    monkeypatch.setenv("S3SYNC_CONFIG", "/etc/s3sync.yaml")
    assert config_path() == Path("/etc/s3sync.yaml")
    assert config_path("given.yaml") == Path("given.yaml")
    with pytest.raises(ConfigError, match=r"given\.yaml not found"):
        load_config("given.yaml")


def test_unknown_source_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"no source named 'nope' \(configured: docs\)"):
        parse_config({"sources": [SOURCE]}).source("nope")


def test_two_sources_cannot_share_a_collection() -> None:
    other = {**SOURCE, "name": "wiki", "bucket_name": "other-bucket"}
    with pytest.raises(ConfigError, match="sources 'docs' and 'wiki' both write collection 'docs-col'"):
        parse_config({"sources": [SOURCE, other]})


def test_resource_keys_are_ours_by_default_and_renamed_one_by_one() -> None:
    import dagster as dg

    from s3sync_dagster.definitions import build_definitions

    keys = parse_config({"sources": [SOURCE]}).resource_keys
    assert (keys.s3, keys.chroma, keys.io_manager) == ("s3sync_s3", "s3sync_chroma", "s3sync_io_manager")
    config = parse_config({"resource_keys": {"s3": "handbook_s3"}, "sources": [{**SOURCE, "group_name": "library"}]})
    defs = build_definitions(config)
    assert "handbook_s3" in defs.resources and "s3sync_s3" not in defs.resources
    asset = defs.resolve_assets_def(dg.AssetKey(["docs", "documents"]))
    assert "handbook_s3" in asset.required_resource_keys and asset.group_names_by_key[asset.key] == "library"
    with pytest.raises(ConfigError, match=r"resource_keys\.s3 and resource_keys\.chroma are both 'store'"):
        parse_config({"resource_keys": {"s3": "store", "chroma": "store"}})
    with pytest.raises(ConfigError, match=r"resource_keys\.s3"):
        parse_config({"resource_keys": {"s3": "my-s3"}})  # Dagster's keys are identifiers


def test_steps_run_in_process_unless_a_celery_broker_is_given() -> None:
    import dagster as dg

    from s3sync_dagster.defs.executor import executor_for

    default = parse_config({"sources": [SOURCE]})
    assert default.executor.celery is None and executor_for(default) is dg.in_process_executor
    celery = parse_config(
        {
            "executor": {"celery": {"broker": {"env": "S3SYNC_BROKER_URL"}}},
            "chroma": {"host": "chroma.internal"},
            "sources": [SOURCE],
        }
    )
    assert celery.executor.celery is not None and celery.executor.celery.visibility_timeout_s == 3600
    assert celery.executor.celery.concurrent_runs == 4
    assert executor_for(celery).name == "s3sync_celery"


def test_a_broker_url_with_a_password_is_refused_and_not_echoed() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"executor": {"celery": {"broker": "redis://:hunter2-broker@redis.example:6379/0"}}})
    assert "executor.celery.broker" in str(refused.value) and "{env: VAR_NAME}" in str(refused.value)
    assert "hunter2-broker" not in str(refused.value)


def test_celery_workers_need_a_chroma_server() -> None:
    with pytest.raises(ConfigError, match="cannot share an embedded Chroma store"):
        parse_config({"executor": {"celery": {"broker": "redis://redis.internal:6379/0"}}, "sources": [SOURCE]})


HINT = re.compile(r"^(\s*)# ([a-z_0-9]+): (.*?)(?:\s+# (with|instead of) (\w+)\b.*)?$")


def scaffolded(tmp_path: Path) -> str:
    import dagster as dg

    from s3sync_dagster.definitions import S3ChromaSyncScaffolder, ScaffoldParams

    target = tmp_path / "handbook"
    request = dg.ScaffoldRequest("s3sync_dagster.S3ChromaSync", target, "yaml", tmp_path, ScaffoldParams())
    S3ChromaSyncScaffolder().scaffold(request)
    return (target / "defs.yaml").read_text()


def uncommented(text: str, position: int) -> str:
    """The scaffold with the hint on line `position` uncommented, as its comment says: with the setting it needs
    (uncommented too), or instead of the one it replaces (that line dropped)."""
    lines = text.splitlines()
    match = HINT.match(lines[position])
    assert match, lines[position]
    indent, key, value, relation, other = match.groups()
    lines[position] = f"{indent}{key}: {value}"
    for index, line in enumerate(lines):
        if relation == "with" and line.strip().startswith(f"# {other}:"):
            lines[index] = line.replace(f"# {other}:", f"{other}:", 1)
        if relation == "instead of" and line.strip().startswith(f"{other}:") and line.startswith(indent):
            lines[index] = ""
    return "\n".join(lines) + "\n"


def test_every_hint_the_scaffold_writes_is_valid_uncommented_for_dg_and_for_s3sync(tmp_path: Path) -> None:
    from s3sync_dagster.config import component_schema, schema_problems, yaml_lines
    from s3sync_dagster.definitions import S3ChromaSync

    # `dg check yaml` checks the attributes against the schema of the component's model: this one.
    assert S3ChromaSync.get_model_cls().model_json_schema() == component_schema()
    text = scaffolded(tmp_path)
    hints = [n for n, line in enumerate(text.splitlines()) if HINT.match(line)]
    assert len(hints) == 20, text
    for position in hints:
        variant = uncommented(text, position)
        attributes = yaml.safe_load(variant)["attributes"]
        assert schema_problems(attributes, "defs.yaml", yaml_lines(variant, under=("attributes",))) == [], variant
        parse_config(attributes, "defs.yaml")  # what s3sync and the component's load accept


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        # A template in a number, a flag and a choice passes the schema (Dagster renders it before AppConfig).
        ({"sources": [{**SOURCE, "keys_per_run": "{{ env.KEYS }}", "auto_sync": "{{ env.MODE }}"}]}, []),
        ({"embedding": "default", "documents": {"ocr": "{{ env.OCR }}"}}, []),
        (
            {"sources": [{**SOURCE, "keys_per_run": "lots"}]},
            ["defs.yaml:8 - attributes.sources.0.keys_per_run 'lots' is not of type 'integer' (nor a {{ template }})"],
        ),
        ({"sources": [{"name": "docs"}]}, ["defs.yaml:4 - attributes.sources.0 'bucket_name' is a required property"]),
    ],
)
def test_the_component_schema_takes_templates_and_names_line_and_field(attributes: dict, expected: list) -> None:
    from s3sync_dagster.config import schema_problems, yaml_lines

    text = yaml.safe_dump({"type": "s3sync_dagster.S3ChromaSync", "attributes": attributes}, sort_keys=False)
    # Lines as written: type (1), attributes (2), then the mapping's keys in order.
    problems = schema_problems(attributes, "defs.yaml", yaml_lines(text, under=("attributes",)))
    assert problems[:1] == expected[:1], text
