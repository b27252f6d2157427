"""The package's layers import only downwards, and no module imports itself round a circle.

Within a layer, each sub-package's docstring says, in its "May import:" line, which of its siblings (sub-packages
or modules beside it) it may import; an import of any other fails here. No folder holds 20 modules or more.

commands (the `s3sync` command) -> definitions (the code location) -> defs (the Dagster layer) ->
config (the user's model) -> pipeline (the engine, which imports no Dagster). The graph is grimp's
(import-linter's engine): every import statement, those inside functions and under TYPE_CHECKING too,
since a circle through a function-level import still breaks when the function runs first.
"""

from __future__ import annotations

import ast
import copy
import sys
from collections import defaultdict
from pathlib import Path

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
# The folders whose sub-packages say what they may import, and the graph each is read from.
RULED = (f"{PACKAGE}.pipeline", f"{PACKAGE}.commands", f"{PACKAGE}.defs", "benchmarks")
REPO = Path(__file__).resolve().parents[2]
MAX_MODULES = 20
DAGSTER_PACKAGES = ("dagster", "dagster_aws", "dagster_celery", "dagster_postgres", "dagster_graphql")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(PACKAGE, include_external_packages=True, cache_dir=None)


@pytest.fixture(scope="module")
def whole() -> grimp.ImportGraph:
    """The package and the benchmarks in one graph (the benchmarks import the package, never the reverse)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return grimp.build_graph(PACKAGE, "benchmarks", cache_dir=None)


def may_import(folder: str) -> dict[str, set[str]]:
    """Each sub-package of `folder` and the siblings its docstring's "May import:" line names."""
    rules = {}
    for init in sorted((REPO / folder.replace(".", "/")).glob("*/__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text())) or ""
        line = next((line for line in docstring.splitlines() if line.startswith("May import:")), None)
        assert line is not None, f"{init.relative_to(REPO)}: its docstring has no 'May import:' line"
        said = line.removeprefix("May import:").strip().rstrip(".")
        rules[init.parent.name] = set() if said.startswith("nothing") else {name.strip() for name in said.split(",")}
    return rules


def sibling_imports(graph: grimp.ImportGraph, folder: str) -> dict[str, dict[str, str]]:
    """For each sub-package of `folder`, the siblings its modules import, each with one importing module."""

    def sibling(module: str) -> str | None:
        return module[len(folder) + 1 :].split(".")[0] if module.startswith(folder + ".") else None

    used: dict[str, dict[str, str]] = defaultdict(dict)
    for module in graph.find_descendants(folder):
        home = sibling(module)
        if home is None or (module == f"{folder}.{home}" and not graph.find_children(module)):
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            other = sibling(imported)
            if other is not None and other != home:
                used[home].setdefault(other, f"{module} -> {imported}")
    return used


def breaches(graph: grimp.ImportGraph) -> list[str]:
    """Every import of a sibling that the importing sub-package's docstring does not allow."""
    found = []
    for folder in RULED:
        rules = may_import(folder)
        for home, used in sibling_imports(graph, folder).items():
            if home not in rules:
                continue  # a module beside the sub-packages: the layers and the circle test rule it
            found += [
                f"{line} (not in {home}'s 'May import')" for other, line in used.items() if other not in rules[home]
            ]
    return sorted(found)


def crowded_folders() -> list[str]:
    """Every folder of ours holding 20 Python modules or more."""
    found = []
    for top in (PACKAGE, "benchmarks", "s3sync_dagster_tests"):
        for folder in [REPO / top, *(path for path in (REPO / top).rglob("*") if path.is_dir())]:
            count = len(list(folder.glob("*.py")))
            if count >= MAX_MODULES and "__pycache__" not in folder.parts:
                found.append(f"{folder.relative_to(REPO)}: {count} modules")
    return found


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
        (f"{PACKAGE}.defs.source", f"{PACKAGE}.commands.runs.runner"),  # the factory importing a command
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


def test_sub_packages_import_only_what_their_docstring_allows(whole: grimp.ImportGraph) -> None:
    assert breaches(whole) == []


def test_a_sibling_import_not_allowed_is_caught(whole: grimp.ImportGraph) -> None:
    """The check above can fail: chunking may import nothing of the engine, and search may not reach the sync."""
    broken = copy.deepcopy(whole)
    broken.add_import(importer=f"{ENGINE}.chunking.chunk", imported=f"{ENGINE}.s3.objects")
    broken.add_import(importer=f"{ENGINE}.search.hits", imported=f"{ENGINE}.sync.fetch")
    assert breaches(broken) == [
        f"{ENGINE}.chunking.chunk -> {ENGINE}.s3.objects (not in chunking's 'May import')",
        f"{ENGINE}.search.hits -> {ENGINE}.sync.fetch (not in search's 'May import')",
    ]


def test_no_folder_holds_twenty_modules() -> None:
    assert crowded_folders() == []


def test_each_allowed_sibling_exists() -> None:
    """A "May import" line names siblings that are there (a renamed one is not left allowed by a stale name)."""
    for folder in RULED:
        siblings = {
            path.stem
            for path in (REPO / folder.replace(".", "/")).iterdir()
            if path.suffix == ".py" or (path / "__init__.py").exists()
        }
        assert {
            f"{folder}.{home}: {name}" for home, names in may_import(folder).items() for name in names - siblings
        } == set()


# An import of an engine module by a benchmark that patches it (the settle stage replaced to measure without it).
PATCHED = {("benchmarks.sync.writers", f"{ENGINE}.sync.settle")}


def sub_packages() -> list[str]:
    return [
        f"{folder}.{init.parent.name}"
        for folder in RULED
        for init in sorted((REPO / folder.replace(".", "/")).glob("*/__init__.py"))
    ]


def past_faces(graph: grimp.ImportGraph) -> list[str]:
    """Each import, from outside a sub-package of the package, of one of its inner modules instead of its face.

    The benchmarks' areas are not faces (their modules are measurements, imported as modules by the run); every caller
    of the package, the benchmarks included, imports a sub-package's public names from the sub-package itself."""
    faces = [name for name in sub_packages() if name.startswith(PACKAGE)]
    found = []
    for face in faces:
        for inner in graph.find_descendants(face):
            for importer in graph.find_modules_that_directly_import(inner):
                if importer != face and not importer.startswith(face + ".") and (importer, inner) not in PATCHED:
                    found.append(f"{importer} -> {inner}")
    return sorted(found)


def private_imports() -> list[str]:
    """Each underscore name one of our modules takes from another: imported, or read off an imported module."""
    found = []
    for top in (PACKAGE, "benchmarks"):
        for path in sorted((REPO / top).rglob("*.py")):
            tree = ast.parse(path.read_text())
            ours: set[str] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (PACKAGE, "benchmarks"):
                    for alias in node.names:
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            found.append(f"{path.relative_to(REPO)}:{node.lineno} imports {alias.name}")
                        ours.add(alias.asname or alias.name)
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id in ours
                    and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                ):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} reads {node.value.id}.{node.attr}")
    return found


def re_exports() -> list[str]:
    """Names a module that is not a face passes on from another (`import x as x`, or in its `__all__` unmade)."""
    found = []
    for top in (PACKAGE, "benchmarks"):
        for path in sorted((REPO / top).rglob("*.py")):
            if path.name == "__init__.py":
                continue
            tree = ast.parse(path.read_text())
            imported = {
                alias.asname or alias.name
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom | ast.Import)
                for alias in node.names
            }
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and any(alias.asname == alias.name for alias in node.names):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} re-exports with 'x as x'")
                if (
                    isinstance(node, ast.Assign)
                    and any(isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets)
                    and isinstance(node.value, ast.List | ast.Tuple)
                ):
                    passed = [e.value for e in node.value.elts if isinstance(e, ast.Constant) and e.value in imported]
                    found += [f"{path.relative_to(REPO)}: __all__ passes on {name}" for name in passed]
    return found


def test_callers_import_a_sub_package_through_its_face(whole: grimp.ImportGraph) -> None:
    assert past_faces(whole) == []


def test_an_import_past_a_face_is_caught(whole: grimp.ImportGraph) -> None:
    broken = copy.deepcopy(whole)
    broken.add_import(importer=f"{PACKAGE}.defs.runs.assets", imported=f"{ENGINE}.sync.fetch")
    assert past_faces(broken) == [f"{PACKAGE}.defs.runs.assets -> {ENGINE}.sync.fetch"]


def test_no_underscore_name_crosses_modules() -> None:
    assert private_imports() == []


def test_no_module_but_a_face_re_exports() -> None:
    assert re_exports() == []


def own_face_imports() -> list[str]:
    """Each inner module that imports through its own sub-package's face (`from P import x` inside P): the face
    imports the module back, a circle grimp's graph does not show (it resolves `x` to the submodule)."""
    faces = {name for name in sub_packages() if name.startswith(PACKAGE)}
    found = []
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        home = ".".join(path.relative_to(REPO).parent.parts)
        if path.name == "__init__.py" or home not in faces:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == home:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} imports through {home}")
    return found


def test_no_module_imports_through_its_own_face() -> None:
    assert own_face_imports() == []
