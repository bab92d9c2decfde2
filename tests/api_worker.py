"""A workflow engine that uses wfstate through its API only, for ``tests/test_api_kill.py``.

``python -m tests.api_worker STORE RAN_FILE STEPS PAUSE`` runs workflow ``job`` (``STEPS``
steps ``s0``.., each with an agent) to completion in a session of user ``engine``, creating
both on the first run; a later run takes over the session its killed predecessor left (found
by the ``Recovery`` event of ``open_store``) and carries on. Each step is a durable step whose
body appends its step id to ``RAN_FILE`` (so the test sees every time a body really ran),
sets its agent's state, adds an output version and sleeps ``PAUSE`` seconds; then the step is
marked completed with the body's result as its output. Lines on stdout, each flushed once
what it reports is acknowledged:

* ``session <id> resumed|started``;
* ``ack <step id> <result as JSON>``: the step is completed, with its output;
* ``done``: the workflow is completed and the session ended.
"""

from __future__ import annotations

import json
import sys
import time

from wfstate import (
    DurableRun,
    Event,
    Hooks,
    Recovery,
    Session,
    WorkflowStep,
    open_store,
)
from wfstate.api import WorkflowStore

WORKFLOW = "job"
USER = "engine"


def agent_of(index: int) -> str:
    return f"agent-{index % 2}"


def body(
    api: WorkflowStore, session: Session, step_id: str, index: int, ran_file: str, pause: float
) -> dict[str, object]:
    with open(ran_file, "a", encoding="utf-8") as ran:
        ran.write(step_id + "\n")
    api.update_agent(WORKFLOW, agent_of(index), "working", data={"step": step_id}, session=session)
    api.add_output(WORKFLOW, step_id, {"partial": index}, agent_id=agent_of(index), session=session)
    time.sleep(pause)
    return {"step": step_id, "square": index * index}


def main(path: str, ran_file: str, steps: int, pause: float) -> None:
    hooks = Hooks()
    recovered: list[Recovery] = []

    def on_recovery(event: Event) -> None:
        assert isinstance(event, Recovery)
        recovered.append(event)

    hooks.subscribe(on_recovery, Recovery)
    with open_store(path, hooks=hooks) as api:
        dead = [
            c.session.id for e in recovered for c in e.crashed_sessions if c.session.user == USER
        ]
        if dead:
            session = api.resume_session(dead[0])
            print(f"session {session.id} resumed", flush=True)
        else:
            session = api.start_session(USER)
            print(f"session {session.id} started", flush=True)
        if WORKFLOW not in api.list_workflows():
            plan = [
                WorkflowStep(id=f"s{i}", name=f"step {i}", agent_id=agent_of(i))
                for i in range(steps)
            ]
            api.create_workflow(WORKFLOW, "Job", plan, session=session)
        if api.load(WORKFLOW).workflow.status == "idle":
            api.update_workflow(WORKFLOW, "running", session=session)
        run = DurableRun(api, WORKFLOW, session=session)
        for index in range(steps):
            step_id = f"s{index}"
            status = api.load(WORKFLOW).workflow.steps[index].status
            if status == "pending":
                api.update_step(WORKFLOW, step_id, "running", session=session)
            result = run.step(step_id, body, api, session, step_id, index, ran_file, pause)
            if status != "completed":
                api.update_step(WORKFLOW, step_id, "completed", output=result, session=session)
            print(f"ack {step_id} {json.dumps(result)}", flush=True)
        api.update_workflow(WORKFLOW, "completed", session=session)
        api.end_session(session)
        print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
