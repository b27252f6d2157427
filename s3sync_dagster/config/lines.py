"""Where each value of the settings stands in its YAML file: its line, by path, as `dg check yaml` gives it."""

from __future__ import annotations

import yaml

from s3sync_dagster.config.discovery import COMPONENT_TYPE

Loc = tuple[int | str, ...]  # where a value stands in the settings: keys and list indices
Lines = dict[Loc, int]  # a YAML file's line (1-based) of each value, by its path


def yaml_lines(text: str, under: tuple[int | str, ...] = ()) -> Lines:
    """Where each value of a YAML document stands: its line, by path (`under`: the part of the path the mapping
    of the settings sits at, `("attributes",)` in a component's defs.yaml, dropped from the paths)."""
    try:
        documents = list(yaml.compose_all(text))
    except yaml.YAMLError:
        return {}
    # The component's document, in a defs.yaml that may declare several; the one document of an s3sync.yaml.
    root = next((doc for doc in documents if under and _declares_component(doc)), documents[0] if documents else None)
    lines: Lines = {}

    def walk(node: yaml.Node, path: tuple[int | str, ...], line: int) -> None:
        lines[path] = line
        if isinstance(node, yaml.MappingNode):
            # A setting's line is its key's, as `dg check yaml` gives it (a block value starts below).
            for key, value in node.value:
                walk(value, (*path, key.value), key.start_mark.line + 1)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index), item.start_mark.line + 1)

    if root is not None:
        walk(root, (), root.start_mark.line + 1)
    return {path[len(under) :]: line for path, line in lines.items() if path[: len(under)] == under}


def _declares_component(node: yaml.Node) -> bool:
    return isinstance(node, yaml.MappingNode) and any(
        key.value == "type" and getattr(value, "value", None) == COMPONENT_TYPE for key, value in node.value
    )


def line_of(lines: Lines, loc: tuple[int | str, ...]) -> int | None:
    """The line of the deepest part of `loc` that the file holds (a missing field: its mapping's line)."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None
