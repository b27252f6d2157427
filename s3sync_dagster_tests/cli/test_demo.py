"""README command one: the demo syncs the bundled sample and answers its query."""

from pathlib import Path

import pytest

from s3sync_dagster.commands.cli import main
from s3sync_dagster.commands.demo.run import sample_files


def test_demo_syncs_the_sample_and_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    assert main(["demo", "--workdir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert f"synced {len(sample_files())} keys in 1 Dagster run(s)" in out
    assert f"{len(sample_files())} indexed" in out
    assert "1. samples/docs/sync-semantics.md" in out
    assert "When an object changes, its chunks are replaced" in out  # the passage that answers, shown
    assert "stopped the local S3 endpoint" in out
