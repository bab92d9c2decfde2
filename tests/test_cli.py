"""``python -m wfstate``: every command, its exit codes, ``--json``, one-line errors, and that
the read-only commands change nothing and never create a store."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bytesutil import flip_bit
from tests.test_recover import corrupt_checkpoint, corrupt_mid_log, files, small_store
from wfstate import open_store
from wfstate.cli import EXIT_CODES, main
from wfstate.format import LOCK_FILE, WAL_DIR
from wfstate.fs import OS_FS
from wfstate.progress import quiet, terminal_bar
from wfstate.wal import list_segments


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def torn(path: Path) -> None:
    """Leave half-written bytes at the end of the log, as a power cut does."""
    last = list_segments(OS_FS, str(path / WAL_DIR))[-1]
    with open(last.path, "ab") as f:
        f.write(b"\x5a" * 333)


def test_exit_codes_are_distinct_and_documented() -> None:
    assert sorted(EXIT_CODES) == [0, 1, 2, 3, 4, 5]
    doc = (Path(__file__).parent.parent / "docs" / "recovery.md").read_text()
    for code in EXIT_CODES:
        assert f"| {code} |" in doc


def test_recover_plans_applies_and_then_finds_the_store_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small_store(tmp_path)
    torn(tmp_path)
    before = files(tmp_path)
    code, out, err = run(capsys, "recover", str(tmp_path))
    assert (code, err) == (3, "")
    assert "NEEDS REPAIR" in out and "333 bytes" in out and "torn tail" in out
    assert files(tmp_path) == before
    code, out, _ = run(capsys, "recover", str(tmp_path), "--apply")
    assert code == 4 and "REPAIRED" in out
    assert any(name.endswith(".broken-" + name.split("-")[-1]) for name in files(tmp_path))
    code, out, _ = run(capsys, "recover", str(tmp_path), "--apply")
    assert code == 0 and "CLEAN" in out


def test_recover_json_is_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small_store(tmp_path)
    torn(tmp_path)
    code, out, _ = run(capsys, "recover", str(tmp_path), "--json")
    plan = json.loads(out)
    assert code == 3 and plan["status"] == "needs_repair" and plan["applied"] is False
    assert plan["estimated_loss"]["torn_bytes"] == 333
    assert [d["kind"] for d in plan["log_damage"]] == ["torn_tail"]
    assert {w["workflow_id"] for w in plan["workflows"]} == {"alpha", "beta"}
    assert [a["kind"] for a in plan["actions"]] == ["write", "truncate"]


def test_recover_refuses_mid_log_corruption_with_exit_5_and_a_salvage_mode_repairs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small_store(tmp_path)
    corrupt_mid_log(tmp_path)
    before = files(tmp_path)
    code, out, _ = run(capsys, "recover", str(tmp_path), "--apply")
    assert code == 5 and "--mode point_in_time: would lose" in out
    assert files(tmp_path) == before
    code, out, _ = run(capsys, "recover", str(tmp_path), "--apply", "--mode", "point_in_time")
    assert code == 4


def test_recover_lists_crashed_sessions_and_in_doubt_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    owner = (  # an engine that dies (os._exit) inside a session, a step running
        "import os, sys\n"
        "from wfstate import WorkflowStep, open_store\n"
        "api = open_store(sys.argv[1])\n"
        "api.create_workflow('job', 'job', [WorkflowStep(id='a', name='a')])\n"
        "session = api.start_session('engine')\n"
        "api.update_step('job', 'a', 'running', session=session)\n"
        "print(session.id, flush=True)\n"
        "os._exit(9)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", owner, str(tmp_path)], capture_output=True, text=True, check=False
    )
    session_id = done.stdout.strip()
    code, out, _ = run(capsys, "recover", str(tmp_path))
    assert code == 0
    assert f"{session_id} of user 'engine'" in out and "in doubt: a" in out


def test_verify_reports_a_bad_checkpoint_then_clean_after_repair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small_store(tmp_path)
    code, out, _ = run(capsys, "verify", str(tmp_path))
    assert code == 0 and "CLEAN" in out and "checkpoints: 2 checked, 0 with problems" in out
    bad = corrupt_checkpoint(tmp_path, "alpha")
    before = files(tmp_path)
    code, out, _ = run(capsys, "verify", str(tmp_path), "--json")
    report = json.loads(out)
    assert code == 3 and report["status"] == "needs_repair"
    assert len(report["checkpoint_problems"]) == 1 and bad in out
    assert files(tmp_path) == before
    assert run(capsys, "recover", str(tmp_path), "--apply")[0] == 4
    assert run(capsys, "verify", str(tmp_path))[0] == 0


def test_verify_finds_every_damaged_record_not_only_the_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small_store(tmp_path)
    segment = list_segments(OS_FS, str(tmp_path / WAL_DIR))[-1]
    size = Path(segment.path).stat().st_size
    flip_bit(segment.path, 8 * (size // 4))
    flip_bit(segment.path, 8 * (size // 2))
    code, out, _ = run(capsys, "verify", str(tmp_path), "--json")
    report = json.loads(out)
    assert code == 5 and report["open_refused"]
    assert len([d for d in report["log_damage"] if d["kind"] == "corruption"]) == 2


def test_inspect_shows_workflows_sessions_checkpoints_and_segments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small_store(tmp_path)
    code, out, _ = run(capsys, "inspect", str(tmp_path))
    assert code == 0
    assert "alpha 'workflow alpha': idle; steps: 1 completed, 2 pending" in out
    assert "checkpoints (2, newest first)" in out and "segments:" in out
    found = json.loads(run(capsys, "inspect", str(tmp_path), "--json")[1])
    assert [w["workflow_id"] for w in found["workflows"]] == ["alpha", "beta"]
    assert found["stats"]["checkpoints"] == 2


def test_checkpoint_compact_export_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "a"
    small_store(store)
    code, out, _ = run(capsys, "checkpoint", str(store), "alpha", "--tag", "nightly")
    assert code == 0 and out.startswith("checkpoint ck-")
    assert run(capsys, "checkpoint", str(store))[0] == 2  # neither ids nor --all
    assert run(capsys, "checkpoint", str(store), "nope")[0] == 2
    assert run(capsys, "checkpoint", str(store), "--all", "--json")[0] == 0
    before = files(store)
    code, out, _ = run(capsys, "compact", str(store), "--dry-run", "--keep-last", "1")
    assert code == 0 and "would drop" in out
    assert files(store) == before
    code, out, _ = run(capsys, "compact", str(store), "--keep-last", "1")
    assert code == 0 and "did drop: ck-" in out
    assert run(capsys, "compact", str(store), "--keep-last", "0")[0] == 2
    api = open_store(str(store))
    session = api.start_session("ops")
    api.update_step("alpha", "s1", "running", session=session)
    api.end_session(session)
    api.close()
    bundle = tmp_path / "session.bundle"
    assert run(capsys, "export", str(store), session.id, "-o", str(bundle))[0] == 0
    assert run(capsys, "export", str(store), "se-0000000000000000", "-o", str(bundle))[0] == 2
    other = tmp_path / "b"
    api = open_store(str(other))
    api.close()
    code, out, _ = run(capsys, "import", str(other), str(bundle))
    assert code == 0 and f"session {session.id} of 'ops' imported" in out
    assert run(capsys, "import", str(other), str(tmp_path / "missing"))[0] == 2


@pytest.mark.parametrize("command", ["recover", "verify", "inspect", "compact", "checkpoint"])
def test_a_path_that_is_not_a_store_is_one_line_exit_2_and_nothing_is_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    for path in (tmp_path / "missing", tmp_path, tmp_path / "file"):
        (tmp_path / "file").write_text("not a store")
        code, out, err = run(
            capsys, command, str(path), "--all" if command == "checkpoint" else "--json"
        )
        assert code == 2 and out == ""
        assert err.startswith("wfstate: error: ") and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_a_store_in_use_is_exit_1_after_the_lock_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small_store(tmp_path)
    torn(tmp_path)
    held = OS_FS.open_lock(str(tmp_path / LOCK_FILE))
    assert OS_FS.try_lock(held)
    try:
        for apply in (["--apply"], []):  # a plan takes the writers' lock too
            code, _out, err = run(capsys, "recover", str(tmp_path), *apply, "--lock-timeout", "0.2")
            assert code == 1 and "in use by another process" in err and err.count("\n") == 1
    finally:
        OS_FS.unlock(held)
        OS_FS.close_lock(held)


def test_bad_usage_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    with pytest.raises(SystemExit) as info:
        main(["recover", "/x", "--mode", "bogus"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_as_a_process_an_expected_failure_prints_no_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "wfstate", "recover", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == f"wfstate: error: {tmp_path / 'nowhere'}: no such file or directory\n"
    assert "Traceback" not in done.stdout + done.stderr


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_shows_only_on_a_terminal() -> None:
    items = [1, 2, 3]
    assert terminal_bar(io.StringIO())(items, label="x", total=3) is items
    assert quiet(items, label="x") is items
    screen = _Terminal()
    assert list(terminal_bar(screen)(items, label="checking", total=3)) == items
    assert "checking:" in screen.getvalue() and "/3" in screen.getvalue()


def test_verify_reads_every_state_file_and_session_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small_store(tmp_path)
    api = open_store(str(tmp_path))
    session = api.start_session("ops")
    api.update_step("alpha", "s1", "running", session=session)
    api.end_session(session)
    api.store.write_state_files(["beta"])
    api.close()
    code, out, _ = run(capsys, "verify", str(tmp_path))
    assert code == 0 and "state files: 2 checked" in out and "session files: 1 checked" in out
    damaged = [
        tmp_path / "workflows" / "beta.state",
        tmp_path / "sessions" / f"{session.id}.session",
    ]
    for path in damaged:
        flip_bit(path, 8 * (path.stat().st_size // 2))
    code, out, _ = run(capsys, "verify", str(tmp_path), "--json")
    report = json.loads(out)
    assert code == 3
    assert sorted(p["path"] for p in report["file_problems"]) == sorted(
        str(p.relative_to(tmp_path)) for p in damaged
    )


def test_inspect_counts_the_pending_repairs_the_plan_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small_store(tmp_path)
    torn(tmp_path)
    plan = json.loads(run(capsys, "recover", str(tmp_path), "--json")[1])
    found = json.loads(run(capsys, "inspect", str(tmp_path), "--json")[1])
    assert found["pending_repairs"] == len(plan["actions"]) == 2
