"""docs/install.md, followed as a user of an existing Dagster project follows it: the wheel built from this
checkout, installed into a fresh virtualenv of a project `create-dagster` made, then the model step, the
scaffold, `dg check yaml`, `dg check defs` and one sync there, against moto over HTTP, and a query.

Offline, the fresh virtualenv cannot download the project's dependencies (torch, docling, ...): a `.pth` file
puts this checkout's environment's site-packages after its own, the wheel is installed `--no-deps --no-index`,
and `s3sync_dagster` is then imported from the fresh environment (asserted), with its package data and its
`s3sync` script, never from this checkout. The project is not pip-installed (pip would fetch hatchling, its
build backend): its `src` is on PYTHONPATH, where an install would put it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from s3sync_dagster_tests.conftest import TEST_SECRET, put

REPO = Path(__file__).resolve().parents[2]
PROJECT = "riverbank"
FILES = {
    "guides/otters.md": "# Otters\n\nThe otter enclosure is cleaned every Tuesday before nine.\n",
    "guides/herons.txt": "Herons are fed smelt at noon; the keeper logs each feeding in ledger HX-42.\n",
}


def run(argv: list[str], cwd: Path, env: dict[str, str], out: bool = False) -> str:
    """What the command printed (`out`: its standard output alone); it must succeed and never show the secret."""
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    said = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(argv)} failed ({done.returncode}):\n{said[-4000:]}"
    assert TEST_SECRET not in said
    return done.stdout if out else said


def test_the_wheel_installs_into_a_fresh_dagster_project_and_syncs_there(
    tmp_path: Path, moto_endpoint: str, s3: Any, bucket: str
) -> None:
    env = {
        key: value for key, value in os.environ.items() if key not in ("S3SYNC_CONFIG", "DAGSTER_HOME", "VIRTUAL_ENV")
    }
    env |= {"DAGSTER_DG_UPDATE_CHECK_ENABLED": "0", "DAGSTER_DISABLE_TELEMETRY": "1"}
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)],
        REPO, env)  # fmt: skip
    [wheel] = dist.glob("s3sync_dagster-*-py3-none-any.whl")

    run([str(Path(sys.executable).parent / "create-dagster"), "project", PROJECT, "--no-uv-sync"], tmp_path, env)
    root = tmp_path / PROJECT
    venv = root / ".venv"
    run([str(Path(sys.base_prefix) / "bin" / "python3.11"), "-m", "venv", str(venv)], root, env)
    python = venv / "bin" / "python"
    own = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, env, out=True
        ).strip()
    )
    (own / "offline-dependencies.pth").write_text(
        next(path for path in sys.path if path.endswith("site-packages")) + "\n"
    )
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], root, env)
    env |= {
        "VIRTUAL_ENV": str(venv),
        "PATH": os.pathsep.join([str(venv / "bin"), env["PATH"]]),
        "PYTHONPATH": str(root / "src"),
        "HANDBOOK_ENDPOINT": moto_endpoint,
    }
    # The package, its data and its script come from the fresh environment.
    where = run([str(python), "-c", "import s3sync_dagster; print(s3sync_dagster.__file__)"], root, env, out=True)
    where = where.strip()
    assert Path(where).is_relative_to(own), where
    assert (own / "s3sync_dagster" / "commands" / "demo_data").is_dir()
    assert (venv / "bin" / "s3sync").is_file()
    run([str(python), "-m", "s3sync_dagster.pipeline.embedding.default_model"], root, env)  # the model step

    dg = [str(python), "-c", "import sys; from dagster_dg_cli.cli import main; sys.argv[0] = 'dg'; main()"]
    listed = run([*dg, "list", "components"], root, env)
    assert "s3sync_dagster.S3ChromaSync" in listed
    run([*dg, "scaffold", "defs", "s3sync_dagster.S3ChromaSync", "handbook", "--bucket-name", bucket,
         "--path-prefix", "guides/", "--endpoint-url", "{{ env.HANDBOOK_ENDPOINT }}"], root, env)  # fmt: skip
    defs_yaml = root / "src" / PROJECT / "defs" / "handbook" / "defs.yaml"
    text = defs_yaml.read_text()
    for key, variable in (("aws_access_key_id", "S3SYNC_TEST_KEY_ID"), ("aws_secret_access_key", "S3SYNC_TEST_SECRET")):
        text = text.replace(f"# {key}: {{env: {key.upper()}}}", f"{key}: {{env: {variable}}}")
    defs_yaml.write_text(text)
    assert ".s3sync/" in (root / ".gitignore").read_text().splitlines()  # the store and home stay out of git
    assert "validated successfully" in run([*dg, "check", "yaml"], root, env)
    assert "All definitions loaded successfully" in run([*dg, "check", "defs"], root, env)

    put(s3, bucket, FILES)
    s3sync = str(venv / "bin" / "s3sync")
    synced = json.loads(run([s3sync, "sync", "handbook", "--all", "--json"], root, env, out=True))
    assert synced["counts"] == {"indexed": len(FILES)} and synced["failed"] == [], synced
    hits = json.loads(
        run([s3sync, "query", "handbook", "when is the otter enclosure cleaned", "--json"], root, env, out=True)
    )
    assert hits["results"][0]["object_key"] == "guides/otters.md", hits
    assert (root / ".s3sync" / "chroma").is_dir()  # under the project's root, where .gitignore covers it
