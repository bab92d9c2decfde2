"""The README's main job runs: a SIGKILLed writer loses nothing it acknowledged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_kill_and_recover_loses_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wfstate", "demo", "--dir", str(tmp_path), "--records", "80"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: every acknowledged record survived" in result.stdout
    assert "torn_tail" in result.stdout
    assert list((tmp_path / "wal").glob("*.broken-*")), "the cut bytes are kept as evidence"


def test_cli_rejects_unknown_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wfstate", "frobnicate"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown command" in result.stderr
    assert "Traceback" not in result.stderr
