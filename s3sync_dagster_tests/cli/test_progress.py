"""Progress on long work, as a person sees it: `s3sync sync --all` on a pseudo-terminal shows the listing, then the
keys done, failed and unchanged growing while a run works (from its events, key by key), with a rate and the time left; off a terminal, and
under --json, nothing but the result; `invoke --wait` shows its key's run the same way."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pexpect

from s3sync_dagster_tests.conftest import TEST_SECRET, ConfigFactory, put

BIN = Path(sys.executable).parent
KEYS = 200
FILES: dict[str, bytes | str] = {
    f"notes/note-{n:03d}.txt": f"Note {n}: the lock on gate {n} is oiled.\n" for n in range(KEYS)
}
FILES["notes/broken.txt"] = b"\xff\xfe\x00 not text"
# rich's MofNCompleteColumn: "done/total", redrawn in place as the runs report their keys.
COUNT = re.compile(rb"(\d+)/" + str(KEYS + 1).encode())


def test_sync_shows_live_progress_on_a_terminal_and_nothing_off_one(
    s3: Any, bucket: str, make_config: ConfigFactory, dagster_home: Path, tmp_path: Path
) -> None:
    put(s3, bucket, FILES)
    _, config_file = make_config(bucket, name="notes", keys_per_run=1000)  # one run: counts from inside it
    # A new home with Dagster's telemetry on, as a user's first: Dagster prints its notice once, in the first run.
    home = tmp_path / "new-home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: true\n")
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="160", LINES="40", DAGSTER_HOME=str(home))
    env.pop("DAGSTER_DISABLE_TELEMETRY", None)
    command = [str(BIN / "s3sync"), "sync", "notes", "--all", "--config", str(config_file)]
    terminal = pexpect.spawn(command[0], command[1:], env=env, timeout=600, dimensions=(40, 160), use_poll=True)
    terminal.logfile_read = io.BytesIO()
    terminal.expect(rb"discover notes: listing")
    seen: list[int] = []
    while True:
        matched = terminal.expect([COUNT, pexpect.EOF])
        if matched == 1:
            break
        seen.append(int(terminal.match.group(1)))
    terminal.close()
    everything = terminal.logfile_read.getvalue().decode(errors="replace")
    assert terminal.exitstatus == 1, everything[-3000:]  # one key failed: the command says so by its status
    assert seen and seen[-1] == KEYS + 1  # every key counted, the failed one too
    # Drawn while the run worked, batch by batch, not only at its end: on a busy machine the display stood at 0 until
    # the run was over (drawn on descriptor 2, which Dagster points at the step's log file while a step runs).
    assert len({count for count in seen if 0 < count < KEYS + 1}) >= 3, seen
    assert seen == sorted(seen)
    # The last frame: one failed, none unchanged on a first sync, a rate; then the result's own lines.
    assert "failed 1, unchanged 0" in everything and "keys/s" in everything
    assert f"1 failed, {KEYS} indexed" in everything
    assert TEST_SECRET not in everything
    # The notice comes once, above the display, never inside it.
    assert everything.count("Telemetry:") == 1, everything[:3000]
    first_frame = re.search(COUNT.pattern.decode(), everything)
    assert first_frame is not None and everything.index("Telemetry:") < first_frame.start(), everything[:3000]

    # The same keys again, off a terminal: the result only, and every key now unchanged.
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert "keys/s" not in done.stderr + done.stdout and "listing" not in done.stderr
    assert f"{KEYS} unchanged" in done.stdout
    # --json on a terminal: the JSON alone.
    terminal = pexpect.spawn(
        command[0], [*command[1:], "--json"], env=env, timeout=600, dimensions=(40, 160), use_poll=True
    )
    terminal.expect(pexpect.EOF)
    terminal.close()
    payload = json.loads(terminal.before.decode())
    assert payload["counts"] == {"unchanged": KEYS, "failed": 1}

    # invoke --wait (no daemon: it runs the key here) shows its one key's progress from its run's events.
    invoke = [str(BIN / "s3sync"), "invoke", "notes", "notes/note-007.txt", "--custom-id", "gate-7", "--wait"]
    terminal = pexpect.spawn(
        invoke[0], [*invoke[1:], "--config", str(config_file)], env=env, timeout=600, use_poll=True
    )
    terminal.logfile_read = io.BytesIO()
    terminal.expect(rb"invocation \S+ .*1/1")
    terminal.expect(pexpect.EOF)
    terminal.close()
    assert terminal.exitstatus == 0, terminal.logfile_read.getvalue()[-2000:]
