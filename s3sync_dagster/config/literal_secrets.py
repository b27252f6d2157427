"""Secrets written as literals in the settings: where they stand and the `{env: VAR}` to write instead, found in
the settings as written (literal_secrets()) and as JSON schema (literal_secret_schema()), from one table."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from s3sync_dagster.config.errors import ConfigError
from s3sync_dagster.config.lines import Lines, Loc, line_of
from s3sync_dagster.config.problems import location_text
from s3sync_dagster.config.secret_rules import (
    CREDENTIAL_SHAPE,
    ENV_VAR_KEY,
    ENV_VAR_NAME,
    ENV_VAR_NAME_PATTERN,
    ENV_VAR_NAME_SCHEMA,
    SECRET_CONFIG_KEY,
    SECRET_NAME,
    URL_CREDENTIALS,
)

# Where the settings' secrets stand (`*`: each item of a list), each with the variable it is most often kept in:
# the value must be `{env: VAR}`.
SECRET_FIELDS: dict[tuple[str, ...], str] = {
    ("sources", "*", "aws_access_key_id"): "AWS_ACCESS_KEY_ID",
    ("sources", "*", "aws_secret_access_key"): "AWS_SECRET_ACCESS_KEY",
    ("sources", "*", "aws_session_token"): "AWS_SESSION_TOKEN",
    ("sources", "*", "external_id"): "S3SYNC_EXTERNAL_ID",
    ("sources", "*", "sse_customer_key"): "S3SYNC_SSE_CUSTOMER_KEY",
    ("chroma", "cloud", "api_key"): "CHROMA_API_KEY",
    ("chroma", "lexicon_postgres"): "S3SYNC_LEXICON_URL",
    ("webserver", "api_token"): "DAGSTER_CLOUD_API_TOKEN",
}
# URLs and hosts: a `user:password@` in them is a secret; where the credentials go instead.
_S3_CREDENTIALS = "give S3 credentials as aws_access_key_id and aws_secret_access_key {env: VAR_NAME}"
_WHOLE_URL = "give the whole URL as {env: VAR_NAME}"
URL_FIELDS: dict[tuple[str, ...], str] = {
    ("sources", "*", "endpoint_url"): _S3_CREDENTIALS,
    ("sources", "*", "sqs_queue_url"): _S3_CREDENTIALS,
    ("chroma", "host"): "give Chroma's credentials as headers, each {env: VAR_NAME}",
    ("webserver", "url"): "give the token as api_token: {env: VAR_NAME}",
    ("executor", "celery", "broker"): _WHOLE_URL,
    ("executor", "celery", "backend"): _WHOLE_URL,
}
_HEADERS = ("chroma", "headers")  # a text under a header that names a secret is one
_FUNCTION_CONFIG = ("embedding", "config")  # the same at any depth, and `*_env_var` holds a variable's name


_DEFINITIONS = "#/$defs/"
_ENV_REF_SCHEMA = {
    "type": "object",
    "required": ["env"],
    "additionalProperties": False,
    "properties": {"env": {"type": "string", "pattern": ENV_VAR_NAME_PATTERN}},
}
SECRET_DEFINITIONS: dict[str, Any] = {
    # A function config's key that names a secret holds a text, or a `*_env_var` no variable's name, at any depth.
    "S3SyncSecretInConfig": {
        "type": "object",
        "anyOf": [
            {"not": {"patternProperties": {ENV_VAR_KEY: {"anyOf": [{"type": "object"}, ENV_VAR_NAME_SCHEMA]}}}},
            {"not": {"patternProperties": {SECRET_CONFIG_KEY: {"not": {"type": "string"}}}}},
            {"not": {"additionalProperties": {"not": {"$ref": f"{_DEFINITIONS}S3SyncSecretInConfig"}}}},
        ],
    },
    # A credential-shaped text, or `{env: ...}` holding no variable's name, wherever it stands.
    "S3SyncSecretAnywhere": {
        "anyOf": [
            {"type": "string", "pattern": CREDENTIAL_SHAPE},
            {
                "type": "object",
                "required": ["env"],
                "maxProperties": 1,
                "properties": {"env": {"type": "string", "not": {"pattern": ENV_VAR_NAME_PATTERN}}},
            },
            {"type": "array", "contains": {"$ref": f"{_DEFINITIONS}S3SyncSecretAnywhere"}},
            {
                "type": "object",
                "not": {"additionalProperties": {"not": {"$ref": f"{_DEFINITIONS}S3SyncSecretAnywhere"}}},
            },
        ]
    },
}


def _secret_at(path: tuple[str, ...], leaf: dict[str, Any]) -> dict[str, Any]:
    """Valid where the value at `path` (any item of a list, for `*`) is valid under `leaf`."""
    if not path:
        return leaf
    inner = _secret_at(path[1:], leaf)
    if path[0] == "*":
        return {"type": "array", "contains": inner}
    return {"type": "object", "required": [path[0]], "properties": {path[0]: inner}}


def literal_secret_schema() -> dict[str, Any]:
    """literal_secrets() as JSON schema (its definitions in SECRET_DEFINITIONS): valid where settings hold one."""
    branches = [_secret_at(path, {"not": {"anyOf": [{"type": "null"}, _ENV_REF_SCHEMA]}}) for path in SECRET_FIELDS]
    branches += [_secret_at(path, {"type": "string", "pattern": URL_CREDENTIALS}) for path in URL_FIELDS]
    named = {"patternProperties": {SECRET_NAME: {"not": {"type": "string"}}}}
    branches.append(_secret_at(_HEADERS, {"type": "object", "not": named}))
    branches.append(_secret_at(_FUNCTION_CONFIG, {"$ref": f"{_DEFINITIONS}S3SyncSecretInConfig"}))
    branches.append({"$ref": f"{_DEFINITIONS}S3SyncSecretAnywhere"})
    return {"anyOf": branches}


def _secret_rule(field: str | int, variable: str, value: Any) -> str:
    example = f"`{field}: {{env: {variable}}}`, the name of the environment variable that holds it"
    if isinstance(value, str) and "{{" in value:
        return f"a template would render the secret into the settings (not shown): write {example}"
    if isinstance(value, dict):
        return f"{{env: ...}} takes a variable's name, not the secret itself (not shown): write {example}"
    return f"a literal secret is refused (not shown): write {example}"


_SHAPE_RULE = (
    "looks like a literal credential (an AWS access key, a Chroma Cloud or OpenAI API key; not shown): keep it in "
    "an environment variable and write {env: VARIABLE_NAME} where the secret goes"
)


def _is_env_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"env"} and isinstance(value["env"], str)


def _values_at(node: Any, path: tuple[str, ...], loc: Loc = ()) -> Iterator[tuple[Loc, Any]]:
    if not path:
        yield loc, node
    elif path[0] == "*" and isinstance(node, list):
        for index, item in enumerate(node):
            yield from _values_at(item, path[1:], (*loc, index))
    elif isinstance(node, dict) and path[0] in node:
        yield from _values_at(node[path[0]], path[1:], (*loc, path[0]))


def _named_secrets(node: Any, loc: Loc, deep: bool) -> Iterator[tuple[Loc, str]]:
    """Texts under keys that name a secret (a header's, a function config's at any depth when `deep`)."""
    for key, value in node.items() if isinstance(node, dict) else ():
        here = (*loc, key)
        if deep and isinstance(value, dict):
            yield from _named_secrets(value, here, deep)
        elif deep and re.search(ENV_VAR_KEY, str(key)):
            if not (isinstance(value, str) and ENV_VAR_NAME.match(value)):
                name = str(key).removesuffix("_env_var")
                yield here, f"takes a variable's name, not the secret itself (not shown): write `{name}: {{env: NAME}}`"
        elif isinstance(value, str) and re.search(SECRET_CONFIG_KEY if deep else SECRET_NAME, str(key)):
            yield here, f"a literal secret is refused (not shown): write `{key}: {{env: VARIABLE_NAME}}`"


def _anywhere(node: Any, loc: Loc = ()) -> Iterator[tuple[Loc, str]]:
    """Credential-shaped texts, and `{env: ...}` holding no variable's name, wherever they stand."""
    if isinstance(node, str) and re.search(CREDENTIAL_SHAPE, node):
        yield loc, _SHAPE_RULE
    elif _is_env_ref(node) and not ENV_VAR_NAME.match(node["env"]):
        yield loc, _secret_rule(str(loc[-1]) if loc else "field", "VARIABLE_NAME", node)
    elif isinstance(node, (dict, list)):
        for key, item in node.items() if isinstance(node, dict) else enumerate(node):
            yield from _anywhere(item, (*loc, key))


def literal_secrets(raw: Any) -> list[tuple[Loc, str]]:
    """Each secret written as a literal in the settings (a component's as written, before Dagster renders its
    templates): where it stands and the rule, never the value. literal_secret_schema() is the same, in JSON schema."""
    found: dict[Loc, str] = {}
    for path, variable in SECRET_FIELDS.items():
        for loc, value in _values_at(raw, path):
            if value is not None and not (_is_env_ref(value) and ENV_VAR_NAME.match(value["env"])):
                found.setdefault(loc, _secret_rule(path[-1], variable, value))
    for path, instead in URL_FIELDS.items():
        for loc, value in _values_at(raw, path):
            if isinstance(value, str) and re.search(URL_CREDENTIALS, value):
                found.setdefault(loc, f"carries credentials (user:password@...), refused and not shown: {instead}")
    for path in (_HEADERS, _FUNCTION_CONFIG):
        for loc, value in _values_at(raw, path):
            for where, rule in _named_secrets(value, loc, deep=path == _FUNCTION_CONFIG):
                found.setdefault(where, rule)
    for loc, rule in _anywhere(raw):
        found.setdefault(loc, rule)
    return sorted(found.items(), key=lambda item: [str(part) for part in item[0]])


def refuse_literal_secrets(raw: Any, origin: str, lines: Lines | None = None) -> None:
    """A ConfigError naming the file, line and field of each literal secret and the `{env: VAR}` to write instead;
    before anything else reads the settings, so that no later message (nor `dg`'s view of the file) can show one."""
    found = literal_secrets(raw)
    if found:
        problems = [f"{origin}: {len(found)} literal secret(s) refused; their values are not shown:"]
        for loc, rule in found:
            line = line_of(lines or {}, loc)
            problems.append(f"  {f'line {line}: ' if line else ''}{location_text(raw, loc)}: {rule}")
        raise ConfigError("\n".join(problems))
