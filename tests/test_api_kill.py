"""End to end through the API only: a workflow engine (:mod:`tests.api_worker`) SIGKILLed
mid-run and run again by a fresh process. Completed steps' bodies do not run again, nothing
acknowledged is lost, the session the dead process owned is found and taken over, and the run
completes with every step's output and agent."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api_worker import USER, WORKFLOW, agent_of
from tests.storerun import REPO
from wfstate import DurableRun, open_store

STEPS = 8
PAUSE = 0.02


def _worker(store: str, ran: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.api_worker", store, ran, str(STEPS), str(PAUSE)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_after(worker: subprocess.Popen[str], acks: int) -> dict[str, object]:
    """Read the worker's lines until ``acks`` steps are acknowledged, then SIGKILL it.
    Returns the acknowledged results by step id."""
    assert worker.stdout is not None
    acked: dict[str, object] = {}
    try:
        while len(acked) < acks:
            line = worker.stdout.readline()
            assert line, worker.stderr.read() if worker.stderr else "worker ended"
            if line.startswith("ack "):
                _, step_id, result = line.split(" ", 2)
                acked[step_id] = json.loads(result)
        worker.send_signal(signal.SIGKILL)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        worker.communicate()
    assert worker.returncode == -signal.SIGKILL
    return acked


@pytest.mark.parametrize("acks", [1, 3, 5])
def test_a_killed_engine_resumes_without_rerunning_completed_steps(
    tmp_path: Path, acks: int
) -> None:
    store, ran = str(tmp_path / "store"), str(tmp_path / "ran")
    acked = _kill_after(_worker(store, ran), acks)

    # what the killed run left: every acknowledged step completed with its output and agent
    with open_store(store) as api:
        state = api.load(WORKFLOW)
        run = DurableRun(api, WORKFLOW)
        recorded = {f"s{i}" for i in range(STEPS) if run.recorded(f"s{i}") is not None}
        (crashed,) = api.crashed_sessions()
    assert crashed.session.user == USER
    steps = {step.id: step for step in state.workflow.steps}
    for step_id, result in acked.items():
        index = int(step_id[1:])
        assert steps[step_id].status == "completed"
        assert [o.data for o in state.outputs[step_id]] == [{"partial": index}, result]
        assert step_id in recorded
        assert agent_of(index) in state.agents
    ran_before = Path(ran).read_text().split()

    # a fresh process runs the same program again
    worker = _worker(store, ran)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == f"session {crashed.session.id} resumed"
    assert lines[-1] == "done"
    resumed = {line.split(" ", 2)[1]: json.loads(line.split(" ", 2)[2]) for line in lines[1:-1]}
    assert resumed == {f"s{i}": {"step": f"s{i}", "square": i * i} for i in range(STEPS)}
    assert {k: resumed[k] for k in acked} == acked  # acknowledged results unchanged

    runs = collections.Counter(Path(ran).read_text().split())
    for step_id in recorded:  # recorded before the kill: its body never ran again
        assert runs[step_id] == 1, (step_id, runs)
    again = [step_id for step_id, n in runs.items() if n > 1]
    assert len(again) <= 1 and all(n <= 2 for n in runs.values()), runs  # the one in flight
    assert set(again) <= set(ran_before) - recorded
    assert set(runs) == {f"s{i}" for i in range(STEPS)}

    with open_store(store) as api:
        final = api.load(WORKFLOW)
        assert final.workflow.status == "completed" and final.workflow.progress == 100.0
        for index in range(STEPS):
            step_id = f"s{index}"
            assert final.outputs[step_id][-1].data == {"step": step_id, "square": index * index}
            assert final.outputs[step_id][-1].agent_id == agent_of(index)
        assert {a.agent_id for a in final.agents.values()} == {"agent-0", "agent-1"}
        (session,) = api.sessions()
        assert session.status == "ended" and session.token == 2
        assert api.crashed_sessions() == []
