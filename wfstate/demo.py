"""The main demo: a workflow engine is killed mid-run; ``recover`` plans and repairs; nothing
acknowledged is lost.

1. A child process (the "engine") runs workflow ``pipeline`` in a session on the embedded store
   (durability ``always``): each step goes ``running``, gets its agent's state and an output,
   then ``completed``. After each acknowledged completion it reports the step over a pipe.
2. The parent SIGKILLs it at a random moment, then appends the half-written bytes a power cut
   leaves at the end of the log.
3. ``python -m wfstate recover STORE`` prints the plan (nothing changed), then ``recover
   --apply`` carries it out (nothing deleted: the cut bytes are kept).
4. ``python -m wfstate inspect STORE`` shows the state; every acknowledged step is checked:
   completed, with its output.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

from wfstate.api import open_store
from wfstate.format import WAL_DIR
from wfstate.fs import OS_FS
from wfstate.model import WorkflowStep
from wfstate.wal import list_segments

WORKFLOW = "pipeline"


def _output(index: int) -> dict[str, object]:
    return {"rows": index * 100, "summary": f"step {index} processed its partition"}


def _child(store_path: str, steps: int) -> None:
    api = open_store(store_path, "production")
    session = api.start_session("demo-engine", {"host": "demo"})
    api.create_workflow(
        WORKFLOW,
        "nightly data pipeline",
        [
            WorkflowStep(id=f"s{i:03}", name=f"partition {i}", agent_id="loader")
            for i in range(steps)
        ],
        session=session,
    )
    api.update_workflow(WORKFLOW, "running", session=session)
    for i in range(steps):
        step = f"s{i:03}"
        api.update_step(WORKFLOW, step, "running", session=session)
        api.update_agent(WORKFLOW, "loader", "busy", data={"partition": i}, session=session)
        api.update_step(WORKFLOW, step, "completed", output=_output(i), session=session)
        sys.stdout.write(f"{step}\n")
        sys.stdout.flush()
    time.sleep(3600)  # wait to be killed


def _cli(*args: str) -> int:
    print(f"   $ python -m wfstate {' '.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "wfstate", *args], check=False)
    print(f"   (exit code {done.returncode})", flush=True)
    return done.returncode


def run_demo(directory: str, *, steps: int, seed: int | None) -> int:
    """Run the demo with its store in ``directory``; 0 when every acknowledged step survived."""
    rng = random.Random(seed)
    store = os.path.join(directory, "store")
    kill_after = rng.randint(max(1, steps // 3), max(1, steps - 1))
    print(f"store: {store}")
    print(f"1. an engine runs workflow {WORKFLOW!r} ({steps} steps, durability 'always'); "
          f"it will be killed after ~{kill_after} steps")  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-m", "wfstate.demo", "--child", store, "--steps", str(steps)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acked: list[str] = []
    for line in child.stdout:
        acked.append(line.strip())
        if len(acked) >= kill_after:
            break
    time.sleep(rng.random() / 100)  # let it get somewhere into the next step
    child.send_signal(signal.SIGKILL)
    child.wait()
    print(f"2. SIGKILL: the engine had {len(acked)} acknowledged completed steps "
          f"(last {acked[-1] if acked else '-'})")  # fmt: skip
    last = list_segments(OS_FS, os.path.join(store, WAL_DIR))[-1]
    torn = bytes(rng.getrandbits(8) for _ in range(rng.randint(40, 700)))
    fd = OS_FS.open_append(last.path)
    OS_FS.write(fd, torn)
    OS_FS.close(fd)
    print(f"   and a power cut: {len(torn)} half-written bytes at the end of {last.name}")
    print("3. the operator asks for a recovery plan (read-only):")
    if _cli("recover", store) != 3:
        print("FAILED: the plan should say the store needs repair (exit code 3)")
        return 1
    print("   and carries it out:")
    if _cli("recover", store, "--apply") != 4:
        print("FAILED: the apply should report the store repaired (exit code 4)")
        return 1
    print("4. the state after recovery:")
    _cli("inspect", store)
    api = open_store(store)
    try:
        state = api.load(WORKFLOW)
    finally:
        api.close()
    steps_by_id = {s.id: s for s in state.workflow.steps}
    lost = [s for s in acked if steps_by_id[s].status != "completed"]
    wrong = [
        s for s in acked if [o.data for o in state.outputs.get(s, ())] != [_output(int(s[1:]))]
    ]
    completed = sum(1 for s in state.workflow.steps if s.status == "completed")
    print(f"5. checked: workflow {WORKFLOW!r} is {state.workflow.status!r} with {completed} "
          f"completed steps; {len(acked) - len(lost) - len(wrong)} of {len(acked)} "
          "acknowledged steps intact with their outputs")  # fmt: skip
    if lost or wrong:
        print(f"FAILED: lost {lost[:10]}, wrong outputs {wrong[:10]}")
        return 1
    print("OK: every acknowledged step survived the kill and the torn write.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wfstate demo", description=__doc__)
    parser.add_argument("--dir", help="where to put the store (default: a new temp directory)")
    parser.add_argument("--steps", type=int, default=200, help="steps of the workflow")
    parser.add_argument("--seed", type=int, default=None, help="make the kill point repeatable")
    parser.add_argument("--child", metavar="STORE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.steps)
        return 0
    directory = args.dir or tempfile.mkdtemp(prefix="wfstate-demo-")
    return run_demo(directory, steps=max(args.steps, 2), seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
