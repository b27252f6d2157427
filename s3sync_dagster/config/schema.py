"""The component's JSON schema, which `dg check yaml` and `s3sync` check a defs.yaml's attributes against, and
its problems as `dg check yaml` prints them."""

from __future__ import annotations

import copy
import functools
import re
from typing import Any

from s3sync_dagster.config.app import AppConfig
from s3sync_dagster.config.lines import Lines, Loc, line_of
from s3sync_dagster.config.literal_secrets import SECRET_DEFINITIONS, literal_secret_schema
from s3sync_dagster.config.problems import did_you_mean

# A Dagster template (`{{ env.VAR }}`), which a component's attributes may hold in place of any value: Dagster
# renders it before our model sees the value (S3ChromaSync.load).
_TEMPLATE_SCHEMA = {"type": "string", "pattern": r"\{\{.*\}\}"}


def component_schema() -> dict[str, Any]:
    """What `dg check yaml` checks a component's attributes against, and `s3sync` too: AppConfig's JSON schema,
    where a value may also be written as AppConfig's own validators take it (`embedding: default`, a function's
    name) or as a Dagster template wherever free text is not what the field takes (a number, a flag, a choice,
    a name with a pattern). Whatever the schema lets through is then validated by AppConfig, rendered. A copy:
    the caller may change it."""
    return copy.deepcopy(_component_schema())


@functools.cache
def _component_schema() -> dict[str, Any]:
    schema = AppConfig.model_json_schema()
    embedding = schema["properties"]["embedding"]
    schema["properties"]["embedding"] = {"anyOf": [embedding, {"type": "string", "description": "a function's name"}]}
    settings = _templated(schema)
    # Attributes that hold a literal secret anywhere pass as they are: `dg check yaml` prints the file's lines
    # around each problem it finds (the value of a secret next to any of them), and a problem in an object quotes
    # the whole object. The component's load then refuses the secret, naming its field, never its value.
    # Each attribute is also shown at the top, where `dg utils inspect-component` and editors read the attributes,
    # as its schema or anything (`{}`): the `else` branch alone validates.
    shown = {name: {"anyOf": [field, {}]} for name, field in settings["properties"].items()}
    return {
        "$defs": {**settings.pop("$defs", {}), **SECRET_DEFINITIONS},
        "title": settings.pop("title", "AppConfig"),
        "type": "object",
        "properties": shown,
        "if": literal_secret_schema(),
        "then": {},
        "else": settings,
    }


def _templated(node: Any) -> Any:
    if isinstance(node, list):
        return [_templated(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        key: (
            {name: _templated(value) for name, value in item.items()}
            if key in ("properties", "$defs", "patternProperties")
            else _templated(item)
        )
        for key, item in node.items()
    }
    kind = node.get("type")
    constrained_text = kind == "string" and any(rule in node for rule in ("pattern", "enum", "const", "minLength"))
    if kind in ("integer", "number", "boolean") or "enum" in node or "const" in node or constrained_text:
        return {"anyOf": [out, _TEMPLATE_SCHEMA]}
    return out


@functools.cache
def _component_validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(_component_schema())


def schema_problems(attributes: Any, origin: str, lines: Lines) -> list[str]:
    """A component's attributes against component_schema(), each problem as `dg check yaml` prints it:
    `FILE:LINE - attributes.PATH MESSAGE`."""
    problems = []
    for error in _component_validator().iter_errors(attributes):
        for loc, message in _located(error):
            where = ".".join(["attributes", *(str(part) for part in loc)])
            problems.append((loc, f"{origin}:{line_of(lines, loc) or 1} - {where} {message}"))
    return [problem for _, problem in sorted(problems, key=lambda item: [str(part) for part in item[0]])]


def _located(error: Any) -> list[tuple[Loc, str]]:
    """Where a problem stands and what it is; a setting the model does not take at its own line (dg places it
    there too), with the one it may have meant."""
    if error.validator != "additionalProperties" or not isinstance(error.instance, dict):
        return [(tuple(error.path), _message(error))]
    known = error.schema.get("properties", {})
    patterns = error.schema.get("patternProperties", {})
    unexpected = [key for key in error.instance if key not in known and not any(re.search(p, key) for p in patterns)]
    return [
        (
            (*error.path, key),
            f"Additional properties are not allowed ('{key}' was unexpected){did_you_mean(key, known)}",
        )
        for key in unexpected
    ]


def _message(error: Any) -> str:
    """What was wrong with the value itself, where jsonschema says only that no branch of a field's `anyOf` took
    it (the value, or a template): `'lots' is not of type 'integer' (nor a {{ template }})`."""
    template = error.validator == "anyOf" and _TEMPLATE_SCHEMA in error.validator_value
    own = [inner for inner in error.context or [] if inner.schema is not _TEMPLATE_SCHEMA and not inner.path]
    if template and own:
        return f"{own[0].message} (nor a {{{{ template }}}})"
    return str(error.message)
