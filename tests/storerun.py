"""Running :mod:`tests.store_worker` roles against one LocalStore, and checking the outcome.

A run is several writers (and optionally a reader) on one store, as processes
(:func:`run_processes`) or as threads sharing one opened store (:func:`run_threads`). Both
produce a :class:`Run`: what each writer reported. :func:`check_run` then compares that with
what the store holds after reopening, independently of how the commits were made:

* every acknowledged batch is in the log at the LSN it was acknowledged with, exactly as it
  was committed (only ``at`` stamped by the store); the log holds nothing else, except
  possibly the one batch a killed writer had begun and not seen acknowledged; acknowledged
  LSNs are distinct;
* every workflow equals the model: the setup states with the logged batches applied by
  :func:`wfstate.mutations.apply_batch` in LSN order, ``at`` as stamped and ``last_lsn`` of
  each state the LSN of the last batch that touched it (exact equality, every field);
* the shapes each reader must see hold (:func:`tests.store_worker.check_shared` and
  ``check_own``), both outputs of every batch are there or neither, each task is claimed by
  exactly one writer, and every lost claim race was lost to another process.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NoReturn

import msgspec
import pytest

from tests.store_worker import (
    CLAIM_FIELD,
    OWN_STEP,
    SHARED,
    Ack,
    Begin,
    Done,
    Event,
    ReaderDone,
    Ready,
    Rejected,
    Seen,
    Violation,
    check_own,
    check_shared,
    decode_event,
    own_workflow,
    run_reader,
    run_writer,
    setup_batch,
    task_count,
    task_step,
)
from wfstate.backends.local import LocalStore
from wfstate.errors import NotFoundError, ValidationError
from wfstate.format import RECORD_BATCH, WAL_DIR
from wfstate.model import WorkflowState
from wfstate.mutations import CreateWorkflow, Mutation, apply_batch, decode_mutations
from wfstate.wal import Durability, Log

REPO: Final = Path(__file__).resolve().parent.parent
TIMEOUT: Final = 120.0
"""Seconds a whole run may take; no wait in it is longer."""
CLOCK_SLACK: Final = 2.0
"""Seconds a stamped ``at`` may lie outside the run's wall-clock window (clock adjustments)."""


@dataclass(frozen=True)
class Setup:
    """The store before the writers start: its states and the LSN they were committed at."""

    states: dict[str, WorkflowState]
    lsn: int
    started: float  # time.time() before anything was committed


@dataclass
class Run:
    procs: int
    commits: int
    claim_every: int
    setup: Setup
    writers: dict[int, list[Event]]
    killed: set[int] = field(default_factory=set)
    reader: list[Event] | None = None
    finished: float = 0.0
    seconds: float = 0.0
    note: str = ""


def set_up_store(path: str, *, procs: int, commits: int, claim_every: int) -> Setup:
    """Create the shared workflow and one workflow per writer, then close the store."""
    started = time.time()
    with LocalStore.open(path) as store:
        lsn = store.commit(setup_batch(procs, task_count(commits, claim_every)))
        states = {w: store.load(w) for w in store.list_workflows()}
    return Setup(states=states, lsn=lsn, started=started)


# -- worker processes -------------------------------------------------------------------------


class WorkerProcess:
    """One ``python -m tests.store_worker`` child; its stdout events collected as they come."""

    def __init__(self, name: str, args: Sequence[str], tmp: Path) -> None:
        self.name = name
        self.stderr_path = tmp / f"{name}.stderr"
        self._cond = threading.Condition()
        self._events: list[Event] = []
        self.garbage: list[bytes] = []
        self._eof = False
        self.cleaned_up = False  # killed by kill() after a failure, not by the scenario
        with self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "tests.store_worker", *args],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self.popen.stdout
        assert stdout is not None
        for line in stdout:
            event: Event | None = None
            if line.endswith(b"\n"):
                try:
                    event = decode_event(line)
                except msgspec.DecodeError:
                    event = None
            with self._cond:
                if event is None:
                    self.garbage.append(line)
                else:
                    self._events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def events(self) -> list[Event]:
        with self._cond:
            return list(self._events)

    def wait_until(self, predicate: Callable[[list[Event]], bool], deadline: float) -> bool:
        """Wait until ``predicate(events)``; False if stdout ended or the deadline passed."""
        with self._cond:
            while not predicate(self._events):
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 1.0))
            return True

    def wait_exit(self, deadline: float) -> int | None:
        """The exit code (negative: killed by that signal); None if still running."""
        try:
            code = self.popen.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(timeout=max(deadline - time.monotonic(), 1.0))
        return code

    def kill(self) -> None:
        """SIGKILL this child (only it, by its pid) if it still runs, and reap it."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.cleaned_up = True
        with contextlib.suppress(subprocess.TimeoutExpired):  # a zombie we cannot reap
            self.popen.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()

    def describe(self) -> str:
        try:
            err = self.stderr_path.read_bytes().decode(errors="replace")
        except OSError as exc:
            err = f"(no stderr: {exc})"
        if len(err) > 4000:
            err = "...\n" + err[-4000:]
        acks = sum(isinstance(e, Ack) for e in self.events)
        head = (
            f"--- {self.name} (pid {self.popen.pid}, exit code {self.popen.returncode}"
            f"{' (stopped by the test)' if self.cleaned_up else ''}, {acks} acks) stderr ---"
        )
        junk = f"\n  unparsed stdout: {self.garbage[:3]!r}" if self.garbage else ""
        return f"{head}\n{err.rstrip() or '(empty)'}{junk}"


def _fail(message: str, workers: Sequence[WorkerProcess]) -> NoReturn:
    for worker in workers:  # stop them first, so that their stderr and exit codes are whole
        worker.kill()
    pytest.fail("\n".join([message, *(w.describe() for w in workers)]), pytrace=False)


@contextlib.contextmanager
def _pool() -> Iterator[list[WorkerProcess]]:
    workers: list[WorkerProcess] = []
    try:
        yield workers
    finally:
        for worker in workers:
            worker.kill()


def _ready(events: list[Event]) -> bool:
    return any(isinstance(e, Ready) for e in events)


def _done(events: list[Event]) -> bool:
    return any(isinstance(e, Done) for e in events)


def _acks(events: Sequence[Event]) -> int:
    return sum(isinstance(e, Ack) for e in events)


def run_processes(
    tmp_path: Path,
    *,
    procs: int,
    commits: int,
    claim_every: int,
    reader: bool = False,
    create: bool = False,
    kill_seed: int | None = None,
    durability: Durability = "always",
    timeout: float = TIMEOUT,
) -> Run:
    """Run ``procs`` writer processes (and a reader) on one store, started by one barrier.

    Without ``create`` the parent creates the workflows first and closes the store. With
    ``kill_seed``, one writer chosen by that seed is SIGKILLed after a seeded number of
    acknowledgements plus a seeded pause. Fails the test, with every worker's stderr, if a
    worker dies unexpectedly or anything takes longer than ``timeout`` in all.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout
    path = str(tmp_path / "store")
    if create:
        setup = Setup(states={}, lsn=0, started=time.time())
    else:
        setup = set_up_store(path, procs=procs, commits=commits, claim_every=claim_every)
    start, stop = tmp_path / "start", tmp_path / "stop"
    common = ["--store", path, "--start", str(start), "--stop", str(stop)]
    common += ["--commits", str(commits), "--claim-every", str(claim_every)]
    common += ["--durability", durability]
    run = Run(procs=procs, commits=commits, claim_every=claim_every, setup=setup, writers={})
    with _pool() as pool:
        writers: dict[int, WorkerProcess] = {}
        for p in range(procs):
            args = ["writer", *common, "--proc", str(p), *(["--create"] if create else [])]
            writers[p] = WorkerProcess(f"writer-{p}", args, tmp_path)
            pool.append(writers[p])
        watcher: WorkerProcess | None = None
        if reader:
            args = ["reader", *common, "--procs", str(procs)]
            watcher = WorkerProcess("reader", args, tmp_path)
            pool.append(watcher)
        for worker in pool:
            if not worker.wait_until(_ready, deadline):
                worker.wait_exit(min(deadline, time.monotonic() + 5))
                code = worker.popen.returncode
                why = "timed out" if code is None else f"exited with code {code}"
                _fail(f"{worker.name} {why} before it was ready (opening the store)", pool)
        start.touch()  # the barrier: every worker has the store open and now starts at once

        victim: int | None = None
        if kill_seed is not None:
            rng = random.Random(kill_seed)
            victim = rng.randrange(procs)
            after = rng.randint(max(commits // 10, 1), max(commits // 2, 1))
            pause = rng.uniform(0, 0.003)
            target = writers[victim]
            if not target.wait_until(lambda ev: _acks(ev) >= after, deadline):
                _fail(f"{target.name} stopped or timed out before {after} acks", pool)
            time.sleep(pause)
            target.popen.send_signal(signal.SIGKILL)
            run.note = f"seed {kill_seed}: SIGKILL {target.name} after {after} acks + {pause:.4f} s"

        for p, worker in writers.items():
            if p != victim and not worker.wait_until(_done, deadline):
                code = worker.popen.poll()
                why = "timed out" if code is None else f"exited with code {code}"
                _fail(f"{worker.name} {why} before committing all it had to", pool)
        finished_writing = time.monotonic()
        stop.touch()  # the writers linger with the store open until now, so the kill is sure
        # to hit a live process (if not mid-run, the note says so)
        for p, worker in writers.items():
            code = worker.wait_exit(deadline)
            if code is None:
                _fail(f"{worker.name} did not exit within {timeout} s", pool)
            if p == victim and code == -signal.SIGKILL:
                run.killed.add(p)
                if _done(worker.events):
                    run.note += " (came late: after its last commit)"
            elif code != 0:
                _fail(f"{worker.name} exited with code {code}", pool)
        if watcher is not None:
            code = watcher.wait_exit(deadline)
            if code != 0:
                why = "timed out" if code is None else f"exited with code {code}"
                _fail(f"the reader {why}", pool)
            run.reader = watcher.events
        for p, worker in writers.items():
            # A killed writer's last line can only be cut short if a line took two writes.
            if worker.garbage and not (p in run.killed and len(worker.garbage) == 1):
                _fail(f"{worker.name} wrote unparsable lines {worker.garbage[:3]!r}", pool)
            run.writers[p] = worker.events
    run.finished = time.time()
    run.seconds = finished_writing - t0
    return run


# -- the same roles on threads sharing one opened store ---------------------------------------


def run_threads(
    tmp_path: Path, *, procs: int, commits: int, claim_every: int, timeout: float = TIMEOUT
) -> Run:
    """Writers and a reader as threads sharing one opened LocalStore (works with one
    process per store), reporting to lists instead of stdout."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    path = str(tmp_path / "store")
    setup = set_up_store(path, procs=procs, commits=commits, claim_every=claim_every)
    run = Run(procs=procs, commits=commits, claim_every=claim_every, setup=setup, writers={})
    run.reader = []
    errors: list[BaseException] = []
    start, stop = threading.Event(), threading.Event()

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            if not start.wait(timeout):
                errors.append(TimeoutError("no start"))
                return
            try:
                work()
            except BaseException as exc:
                errors.append(exc)

        return body

    with LocalStore.open(path) as store:
        threads: list[threading.Thread] = []
        for p in range(procs):
            events: list[Event] = []
            run.writers[p] = events

            def write(p: int = p, events: list[Event] = events) -> None:
                run_writer(
                    store,
                    proc=p,
                    commits=commits,
                    claim_every=claim_every,
                    create=False,
                    emit=events.append,
                )

            threads.append(threading.Thread(target=guarded(write), name=f"writer-{p}"))

        def read(events: list[Event] = run.reader) -> None:
            run_reader(
                store,
                procs=procs,
                claim_every=claim_every,
                should_stop=stop.is_set,
                emit=events.append,
                max_seconds=timeout,
            )

        watcher = threading.Thread(target=guarded(read), name="reader")
        for t in [*threads, watcher]:
            t.start()
        start.set()
        for t in threads:
            t.join(timeout=max(deadline - time.monotonic(), 0.01))
        finished_writing = time.monotonic()
        stop.set()
        watcher.join(timeout=max(deadline - time.monotonic(), 0.01))
        alive = [t.name for t in [*threads, watcher] if t.is_alive()]
    if errors:
        raise errors[0]
    if alive:
        pytest.fail(f"threads still running after {timeout} s: {alive}", pytrace=False)
    run.finished = time.time()
    run.seconds = finished_writing - t0
    return run


# -- checking ---------------------------------------------------------------------------------


def read_store(path: str) -> tuple[dict[str, WorkflowState], list[tuple[int, list[Mutation]]]]:
    """Reopen the store: every workflow's state; then the batch records of its log."""
    with LocalStore.open(path) as store:
        final = {w: store.load(w) for w in store.list_workflows()}
    with Log.open(os.path.join(path, WAL_DIR)) as log:
        records = [
            (r.lsn, decode_mutations(r.payload)) for r in log.read() if r.type == RECORD_BATCH
        ]
    return final, records


def _unstamped(batch: Sequence[Mutation]) -> list[Mutation]:
    return [msgspec.structs.replace(m, at=0.0) for m in batch]


def _short(value: object, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _diff(got: object, want: object, path: str, out: list[str]) -> None:
    if isinstance(got, dict) and isinstance(want, dict):
        for key in sorted(set(got) | set(want), key=str):
            if key not in got:
                out.append(f"{path}.{key}: missing, expected {_short(want[key])}")
            elif key not in want:
                out.append(f"{path}.{key}: {_short(got[key])}, expected nothing")
            else:
                _diff(got[key], want[key], f"{path}.{key}", out)
    elif isinstance(got, list) and isinstance(want, list):
        if len(got) != len(want):
            out.append(f"{path}: {len(got)} items, expected {len(want)}")
        for i, (a, b) in enumerate(zip(got, want, strict=False)):
            _diff(a, b, f"{path}[{i}]", out)
    elif got != want:
        out.append(f"{path}: {_short(got)}, expected {_short(want)}")


def check_run(
    run: Run,
    final: dict[str, WorkflowState],
    records: Sequence[tuple[int, list[Mutation]]],
) -> list[str]:
    """Every problem of the outcome (empty when none); see the module docstring."""
    problems: list[str] = []
    setup = run.setup

    # 1. what each writer says it did
    acked: dict[int, tuple[int, list[Mutation]]] = {}  # lsn -> (process, batch)
    in_flight: dict[int, Begin] = {}  # process -> the batch begun and never acknowledged
    write_acks: dict[int, int] = {}
    rejections: list[Rejected] = []
    for p, events in sorted(run.writers.items()):
        begun: Begin | None = None
        done = False
        write_acks[p] = 0
        for e in events:
            if isinstance(e, Begin):
                if begun is not None:
                    problems.append(f"writer {p} began {e.i} before finishing {begun.i}")
                begun = e
            elif isinstance(e, Ack):
                if e.lsn in acked:
                    problems.append(
                        f"LSN {e.lsn} acknowledged twice: to process {acked[e.lsn][0]} and to "
                        f"process {p}"
                    )
                if e.lsn <= setup.lsn:
                    problems.append(f"process {p} got LSN {e.lsn}, not after the setup's")
                acked[e.lsn] = (p, e.batch)
                if e.i is not None:
                    if e.i != write_acks[p]:
                        problems.append(f"writer {p} acknowledged batch {e.i} out of turn")
                    write_acks[p] += 1
                begun = None
            elif isinstance(e, Rejected):
                rejections.append(e)
                begun = None
            elif isinstance(e, Done):
                done = True
        if p in run.killed:
            if begun is not None:
                in_flight[p] = begun
        elif not done or write_acks[p] != run.commits:
            problems.append(f"writer {p} finished with {write_acks[p]} of {run.commits} acks")

    # 2. the log: every acknowledged batch at its LSN, as committed; nothing else
    logged = [(lsn, batch) for lsn, batch in records if lsn > setup.lsn]
    at_low, at_high = setup.started - CLOCK_SLACK, run.finished + CLOCK_SLACK
    maybe = {p: _unstamped(b.batch) for p, b in in_flight.items()}
    landed: dict[int, int] = {}  # process -> LSN of its unacknowledged batch found in the log
    for lsn, batch in logged:
        if lsn in acked:
            p, committed = acked[lsn]
            if _unstamped(batch) != _unstamped(committed):
                problems.append(
                    f"LSN {lsn} acknowledged to process {p} for {_short(committed)} holds "
                    f"{_short(batch)}"
                )
        else:
            match = [p for p, b in maybe.items() if b == _unstamped(batch) and p not in landed]
            if match:
                landed[match[0]] = lsn
            else:
                problems.append(f"LSN {lsn} holds a batch nobody acknowledged: {_short(batch)}")
        for m in batch:
            if not at_low <= m.at <= at_high:
                problems.append(f"LSN {lsn} was stamped at={m.at}, outside the run's time")
    present = {lsn for lsn, _ in logged}
    for lsn, (p, committed) in sorted(acked.items()):
        if lsn not in present:
            problems.append(f"acknowledged LSN {lsn} of process {p} is not in the log: LOST "
                            f"{_short(committed)}")  # fmt: skip

    # 3. the model: the setup states with the logged batches applied in LSN order
    model: dict[str, WorkflowState] = dict(setup.states)
    touched: dict[str, int] = {w: s.metadata.last_lsn for w, s in setup.states.items()}
    for lsn, batch in logged:
        try:
            results = apply_batch(model, batch)
        except (ValidationError, NotFoundError) as exc:
            problems.append(f"the batch at LSN {lsn} does not apply after the ones before it: "
                            f"{exc}")  # fmt: skip
            break
        for workflow_id, state in results.items():
            touched[workflow_id] = lsn
            if state is None:
                model.pop(workflow_id, None)
            else:
                meta = msgspec.structs.replace(state.metadata, last_lsn=lsn)
                model[workflow_id] = msgspec.structs.replace(state, metadata=meta)
    if sorted(final) != sorted(model):
        problems.append(f"the store holds workflows {sorted(final)}, the model {sorted(model)}")
    for workflow_id in sorted(set(final) & set(model)):
        got, want = final[workflow_id], model[workflow_id]
        if got.metadata.last_lsn != touched[workflow_id]:
            problems.append(
                f"{workflow_id}: metadata.last_lsn is {got.metadata.last_lsn}, but the last "
                f"batch that touched it is LSN {touched[workflow_id]}"
            )
        if got != want:
            diffs: list[str] = []
            _diff(msgspec.to_builtins(got), msgspec.to_builtins(want), workflow_id, diffs)
            problems.append(f"{workflow_id} differs from the model: " + "; ".join(diffs[:8]))

    # 4. shapes: contiguous versions, atomic batches, one claim per task
    if SHARED not in final:
        problems.append("the shared workflow is missing")
        return problems
    try:
        held = check_shared(final[SHARED], claim_every=run.claim_every)
    except Violation as exc:
        problems.append(str(exc))
        held = {}
    for p in range(run.procs):
        if own_workflow(p) not in final:
            problems.append(f"{own_workflow(p)} is missing")
            continue
        try:
            own = check_own(final[own_workflow(p)], p)
        except Violation as exc:
            problems.append(str(exc))
            continue
        if own != held.get(p, 0):
            problems.append(
                f"half-applied batches: the shared step holds {held.get(p, 0)} batches of "
                f"process {p}, its own workflow {own}"
            )
        extra = 1 if p in landed and in_flight[p].i is not None else 0
        if own != write_acks[p] + extra:
            problems.append(
                f"process {p} has {own} batches in the store, {write_acks[p]} acknowledged"
                + (" plus its unacknowledged last one" if extra else "")
            )
    shared = final[SHARED]
    claimer: dict[int, int] = {}
    for t in range(task_count(run.commits, run.claim_every)):
        outputs = shared.outputs.get(task_step(t), ())
        if outputs and isinstance(outputs[0].data, dict):
            claimer[t] = outputs[0].data["claimed_by"]
        elif len(run.killed) < run.procs:  # a writer that finished raced for every task
            problems.append(f"nobody claimed {task_step(t)}")
    for r in rejections:
        if r.field == CLAIM_FIELD and r.i is not None:
            t = r.i // run.claim_every
            if claimer.get(t) == r.p or t not in claimer:
                problems.append(
                    f"process {r.p} lost the race for {task_step(t)} ({r.error}), but the "
                    f"store says it was claimed by {claimer.get(t)}"
                )
    creations = [
        p
        for p, batch in acked.values()
        if isinstance(batch[0], CreateWorkflow) and batch[0].workflow_id == SHARED
    ]
    if len(creations) > 1:
        problems.append(f"the shared workflow was created by processes {creations}")
    return problems


def check_reader(run: Run, final: dict[str, WorkflowState], *, min_seen: int) -> list[str]:
    """The reader made progress while the writers ran, and at the end saw every commit."""
    assert run.reader is not None
    done = [e for e in run.reader if isinstance(e, ReaderDone)]
    if not done:
        return ["the reader did not report its end"]
    start_version = run.setup.states[SHARED].metadata.version
    final_version = final[SHARED].metadata.version
    between = {
        e.version
        for e in run.reader
        if isinstance(e, Seen) and start_version < e.version < final_version
    }
    problems = []
    if len(between) < min_seen:
        problems.append(
            f"the reader saw {len(between)} versions of the shared workflow while the writers "
            f"ran (between {start_version} and {final_version}), fewer than {min_seen}: "
            f"blocked, or not seeing the others' commits ({done[0].loads} loads)"
        )
    if done[0].final_version != final_version:
        problems.append(
            f"the reader's last load (after every writer finished) saw version "
            f"{done[0].final_version}, the store holds {final_version}"
        )
    return problems


def summary(name: str, run: Run, final: dict[str, WorkflowState]) -> str:
    """One line of figures: how much the writers interleaved, what the reader saw."""
    order = [o.data["p"] for o in final[SHARED].outputs.get(SHARED, ()) if isinstance(o.data, dict)]
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    rejected = sum(isinstance(e, Rejected) for ev in run.writers.values() for e in ev)
    line = (
        f"{name}: {len(order)} batches by {run.procs} writers in {run.seconds:.1f} s, "
        f"{switches} switches between writers, {rejected} lost races"
    )
    if run.reader is not None:
        done = [e for e in run.reader if isinstance(e, ReaderDone)]
        if done:
            line += f"; reader: {done[0].loads} loads, {done[0].versions} versions seen"
    if run.note:
        line += f"; {run.note}"
    for p in sorted(run.killed):
        acked = sum(isinstance(e, Ack) and e.i is not None for e in run.writers[p])
        stored = len(final[own_workflow(p)].outputs.get(OWN_STEP, ()))
        line += f"; writer-{p}: {acked} acked, {stored - acked} more in the store"
    return line
