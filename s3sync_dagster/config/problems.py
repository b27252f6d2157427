"""A validation problem in words that name the fix: the source by its name, the variable an empty template read,
the setting a typo meant."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator
from typing import Any, get_args

from pydantic import BaseModel

from s3sync_dagster.config.app import AppConfig
from s3sync_dagster.config.lines import Loc

_CHUNKERS = ("tree_sitter", "lines")  # the chunking union's tags


def location_text(raw: Any, loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location, naming a source by its name: `sources[1] (source 'docs').region`."""
    parts: list[str] = []
    node = raw
    for step in loc:
        if parts and parts[-1] == "chunking" and step in _CHUNKERS:
            continue  # the discriminator tag pydantic adds to the location
        if isinstance(step, int):
            name = (
                node[step].get("name")
                if isinstance(node, list) and step < len(node) and isinstance(node[step], dict)
                else None
            )
            parts[-1] += f"[{step}]" + (f" (source '{name}')" if name else "")
        else:
            parts.append(step)
        node = node[step] if isinstance(node, (dict, list)) and _has(node, step) else None  # type: ignore[index]
    return ".".join(parts) or "(top level)"


def _has(node: dict[Any, Any] | list[Any], step: int | str) -> bool:
    if isinstance(node, dict):
        return step in node
    return isinstance(step, int) and step < len(node)


def untagged_location(loc: Loc) -> Loc:
    """A pydantic location without the discriminator tag it adds after `chunking`: a path in the file."""
    return tuple(
        step for index, step in enumerate(loc) if not (index and loc[index - 1] == "chunking" and step in _CHUNKERS)
    )


def problem_said(kind: str, loc: Loc, message: str, empty: dict[Loc, str]) -> str:
    """A problem in words that name the fix: an unset variable a template read, the setting a typo meant."""
    template = next((text for at, text in empty.items() if loc[: len(at)] == at), None)
    if template is not None:
        return _renders_nothing(template, message)
    if kind == "extra_forbidden" and loc:
        return f"{message}{did_you_mean(loc[-1], _fields_at(loc[:-1]))}"
    return message


def rendered_empty(written: Any, rendered: Any, loc: Loc = ()) -> Iterator[tuple[Loc, str]]:
    """Where a template of the settings as written rendered nothing (`{{ env.X }}` with X unset renders None)."""
    if isinstance(written, str) and "{{" in written and rendered is None:
        yield loc, written
    elif isinstance(written, dict) and isinstance(rendered, dict):
        for key, value in written.items():
            yield from rendered_empty(value, rendered.get(key), (*loc, key))
    elif isinstance(written, list) and isinstance(rendered, list):
        for index, (value, rendering) in enumerate(zip(written, rendered, strict=False)):
            yield from rendered_empty(value, rendering, (*loc, index))


_TEMPLATE_VARIABLE = re.compile(r"\benv(?:\.|\(\s*['\"])([A-Za-z_][A-Za-z0-9_]*)")


def _renders_nothing(template: str, message: str) -> str:
    unset = [name for name in dict.fromkeys(_TEMPLATE_VARIABLE.findall(template)) if name not in os.environ]
    if not unset:
        return f"{template} renders nothing ({message})"
    names = ", ".join(unset)
    return (
        f"{template} renders nothing: environment variable {names} {'is' if len(unset) == 1 else 'are'} not set: "
        "set it where dg and s3sync run (the shell, the project's .env, the deployment's environment), or give "
        f"the template a default: {{{{ env('{unset[0]}', 'VALUE') }}}}"
    )


def did_you_mean(name: str | int, names: list[str] | Any) -> str:
    """`: did you mean `bucket_name`?` for a setting the model does not take, when one is close to it."""
    close = difflib.get_close_matches(str(name), [str(known) for known in names], n=1)
    return f": did you mean `{close[0]}`?" if close else ""


def _fields_at(loc: Loc) -> list[str]:
    """The settings the model takes at `loc` (the fields of each model a union there may be)."""
    models: list[type[BaseModel]] = [AppConfig]
    for step in loc:
        if isinstance(step, str) and any(step in model.model_fields for model in models):
            fields = [model.model_fields[step] for model in models if step in model.model_fields]
            models = [inner for field in fields for inner in _models_in(field.annotation)]
    return sorted({name for model in models for name in model.model_fields})


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in get_args(annotation) for model in _models_in(argument)]
