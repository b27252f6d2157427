"""The package's layers import only downwards, and no module imports itself round a circle.

commands (the `s3sync` command) -> definitions (the code location) -> defs (the Dagster layer) ->
config (the user's model) -> pipeline (the engine, which imports no Dagster). The graph is grimp's
(import-linter's engine): every import statement, those inside functions and under TYPE_CHECKING too,
since a circle through a function-level import still breaks when the function runs first.
"""

from __future__ import annotations

import copy

import grimp
import networkx as nx
import pytest

PACKAGE = "s3sync_dagster"
# Highest first: a module may import those below its own layer, never those above.
LAYERS = (
    f"{PACKAGE}.commands",
    f"{PACKAGE}.definitions",
    f"{PACKAGE}.defs",
    f"{PACKAGE}.config",
    f"{PACKAGE}.pipeline",
)
ENGINE = f"{PACKAGE}.pipeline"
DAGSTER_PACKAGES = ("dagster", "dagster_aws", "dagster_celery", "dagster_postgres", "dagster_graphql")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(PACKAGE, include_external_packages=True, cache_dir=None)


def upward_imports(graph: grimp.ImportGraph) -> list[str]:
    """Each import from a lower layer into a higher one, as 'importer -> imported (line N)'."""
    found = []
    for dependency in graph.find_illegal_dependencies_for_layers(layers=LAYERS):
        for route in dependency.routes:
            importer, imported = route.heads, route.tails
            for head in sorted(importer):
                for tail in sorted(imported):
                    chain = graph.find_shortest_chain(importer=head, imported=tail) or (head, tail)
                    found.append(" -> ".join(chain))
    return sorted(set(found))


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The package's modules that import one another round a circle, each circle's modules sorted."""
    modules = nx.DiGraph()
    for module in graph.modules:
        if module.startswith(PACKAGE):
            modules.add_node(module)
            modules.add_edges_from(
                (module, imported)
                for imported in graph.find_modules_directly_imported_by(module)
                if imported.startswith(PACKAGE)
            )
    return sorted(sorted(group) for group in nx.strongly_connected_components(modules) if len(group) > 1)


def engine_dagster_imports(graph: grimp.ImportGraph) -> list[str]:
    return sorted(
        f"{module} -> {imported}"
        for module in graph.find_descendants(ENGINE) | {ENGINE}
        for imported in graph.find_modules_directly_imported_by(module)
        if imported.split(".")[0] in DAGSTER_PACKAGES
    )


def test_every_module_sits_in_a_layer(graph: grimp.ImportGraph) -> None:
    """The package root holds the layer folders, the config model and the Definitions entry point only."""
    assert graph.find_children(PACKAGE) == set(LAYERS)


def test_layers_import_only_downwards(graph: grimp.ImportGraph) -> None:
    assert upward_imports(graph) == []


def test_no_module_imports_itself_round_a_circle(graph: grimp.ImportGraph) -> None:
    assert import_cycles(graph) == []


def test_the_engine_imports_no_dagster(graph: grimp.ImportGraph) -> None:
    assert engine_dagster_imports(graph) == []


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        (f"{ENGINE}.embedding.functions", f"{PACKAGE}.defs.resources"),  # the engine reaching into the Dagster layer
        (f"{PACKAGE}.defs.source", f"{PACKAGE}.commands.runner"),  # the factory importing a command
        (f"{PACKAGE}.config", f"{PACKAGE}.definitions"),
    ],
)
def test_an_upward_import_is_caught_as_a_layer_breach_and_a_circle(
    graph: grimp.ImportGraph, importer: str, imported: str
) -> None:
    """The checks above can fail: each of these imports closes a circle and breaks a layer."""
    broken = copy.deepcopy(graph)
    broken.add_import(importer=importer, imported=imported)
    assert any(line.startswith(importer) and imported in line for line in upward_imports(broken)), upward_imports(
        broken
    )
    assert any(importer in cycle and imported in cycle for cycle in import_cycles(broken)), import_cycles(broken)


def test_a_dagster_import_in_the_engine_is_caught(graph: grimp.ImportGraph) -> None:
    broken = copy.deepcopy(graph)
    broken.add_import(importer=f"{ENGINE}.records.keys", imported="dagster")
    assert engine_dagster_imports(broken) == [f"{ENGINE}.records.keys -> dagster"]
