"""The README's main job runs: a SIGKILLed engine loses nothing it acknowledged, and
``recover`` plans (exit 3) then repairs (exit 4), keeping the cut bytes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_kill_and_recover_loses_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wfstate", "demo", "--dir", str(tmp_path), "--steps", "40"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: every acknowledged step survived" in result.stdout
    assert "recovery plan (nothing was changed)" in result.stdout
    assert "(exit code 3)" in result.stdout and "(exit code 4)" in result.stdout
    assert "torn tail" in result.stdout and "crashed sessions (take over" in result.stdout
    assert list((tmp_path / "store" / "wal").glob("*.broken-*")), "the cut bytes are kept"


def test_cli_rejects_unknown_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wfstate", "frobnicate"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr
    assert "Traceback" not in result.stderr
