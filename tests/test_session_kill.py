"""Sessions across real processes (docs/format.md §11.2): an owner SIGKILLed inside its session
is detected as crashed by another process (its lock was released by the kernel), the session is
taken over with the next token, and a write with the dead owner's token is refused."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.storerun import REPO
from wfstate.backends.local import LocalStore, Session
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.errors import LockTimeoutError, StaleOwnerError
from wfstate.mutations import SetStepStatus

_OWNER = textwrap.dedent(
    """
    import sys, time
    from wfstate.backends.local import LocalStore
    from wfstate.checkpointpolicy import MANUAL_ONLY
    from wfstate.model import WorkflowStep
    from wfstate.mutations import CreateWorkflow, SetStepStatus
    store = LocalStore.open(sys.argv[1], checkpoints=MANUAL_ONLY)
    session = store.start_session("worker", {"pid": 1})
    steps = (WorkflowStep(id="s0", name="s0"), WorkflowStep(id="s1", name="s1"))
    store.commit([CreateWorkflow(workflow_id="w", name="w", steps=steps, at=0)], session=session)
    store.commit([SetStepStatus(workflow_id="w", step_id="s0", status="running", at=0)],
                 session=session)
    print(session.id, flush=True)
    time.sleep(600)
    """
)


def test_a_killed_owner_is_detected_taken_over_and_fenced(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, path],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert owner.stdout is not None
        session_id = owner.stdout.readline().decode().strip()
        assert session_id, owner.stderr.read().decode() if owner.stderr else ""
        with LocalStore.open(path, checkpoints=MANUAL_ONLY, lock_timeout=0.2) as store:
            assert store.detect_crashed_sessions() == []  # alive: it holds the lock
            with pytest.raises(LockTimeoutError):
                store.resume_session(session_id)
            owner.send_signal(signal.SIGKILL)
            owner.wait(timeout=10)
            deadline = time.monotonic() + 10
            while not (crashed := store.detect_crashed_sessions()):
                assert time.monotonic() < deadline, "the dead owner's lock was never free"
                time.sleep(0.05)
            (found,) = crashed
            assert found.session.id == session_id and found.session.user == "worker"
            (plan,) = found.workflows
            assert (plan.workflow_id, plan.in_doubt, plan.action) == (
                "w",
                ("s0",),
                "rerun_in_doubt",
            )
            taken = store.resume_session(session_id)
            assert taken.token == 2
            # the dead owner's view: token 1; its write is refused and writes nothing
            lock = store._fs.open_lock(store._session_lock_path(session_id))
            late = Session(store, session_id, "worker", 1, lock)
            last = store.stats().last_lsn
            running = [SetStepStatus(workflow_id="w", step_id="s1", status="running", at=0)]
            with pytest.raises(StaleOwnerError):
                store.commit(running, session=late)
            assert store.stats().last_lsn == last
            late.close()
            store.commit(running, session=taken)
            taken.end()
            assert store.sessions()[0].status == "ended"
    finally:
        if owner.poll() is None:
            owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        for stream in (owner.stdout, owner.stderr):
            if stream is not None:
                stream.close()
