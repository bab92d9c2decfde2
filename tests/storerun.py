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
    FIXED_CLOCK,
    OWN_STEP,
    SHARED,
    Ack,
    Begin,
    CheckpointBegin,
    Checkpointed,
    CompactBegin,
    Compacted,
    Done,
    Event,
    ReaderDone,
    Ready,
    Rejected,
    Resumed,
    RetainBegin,
    Retained,
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
from wfstate.checkpointindex import decode_drop
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.errors import NotFoundError, ValidationError, WfstateError
from wfstate.format import (
    CHECKPOINTS_DIR,
    LOCK_FILE,
    RECORD_BATCH,
    RECORD_CHECKPOINT_DROP,
    WAL_DIR,
    parse_segment_name,
)
from wfstate.model import WorkflowState
from wfstate.mutations import CreateWorkflow, Mutation, apply_batch, decode_mutations
from wfstate.statetable import stamped_with
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


# -- SIGKILL loops with checkpoints and compaction (issue 4) -----------------------------------
#
# Rounds of ``ckwriter`` processes on one store: each round starts every writer afresh (each
# resumes where its process's batches in the store end), lets them commit, checkpoint and (the
# writer of process 0) compact and retain, and SIGKILLs one of them at a seeded moment: after
# its n-th acknowledgement, or n-th checkpoint, compaction or retention begun (the kinds in
# turn, round by round), plus a seeded pause, so kills land inside commits, checkpoints (temp
# file written, renamed, record appended), compactions (checkpoints, DISCARD, START,
# deletions) and retentions (folds, the drop record, deletions). After every round the parent
# reopens the store and checks it against what every writer reported (:func:`check_kill_loop`).

KILL_TRIGGERS: Final = ("ack", "checkpoint", "compact", "retain")
_TRIGGER_EVENT: Final[dict[str, type]] = {
    "ack": Ack,
    "checkpoint": CheckpointBegin,
    "compact": CompactBegin,
    "retain": RetainBegin,
}


_INSIDE: Final[dict[type, str]] = {
    Begin: "inside a commit",
    CheckpointBegin: "inside a checkpoint",
    CompactBegin: "inside a compaction",
    RetainBegin: "inside a retention",
}
"""What a killed writer was doing, by the last thing it reported."""


@dataclass
class KillRound:
    number: int
    writers: dict[int, list[Event]] = field(default_factory=dict)
    victim: int | None = None
    trigger: str = ""
    killed: bool = False
    late: bool = False  # the victim had finished its batches when the kill came
    note: str = ""


@dataclass
class KillLoop:
    procs: int
    commits: int  # batches per writer per round
    claim_every: int
    checkpoint_every: int
    maintain_every: int
    keep_last: int
    setup: Setup
    rounds: list[KillRound] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)
    logged_drops: set[str] = field(default_factory=set)  # ids of CHECKPOINT_DROP records seen
    seconds: float = 0.0
    segment_size: int | None = None  # the writers' segment size (None: the default)


def run_kill_loop(
    tmp_path: Path,
    *,
    seed: int,
    procs: int = 3,
    rounds: int = 4,
    commits: int = 50,
    claim_every: int = 10,
    checkpoint_every: int = 5,
    maintain_every: int = 20,
    keep_last: int = 2,
    timeout: float = TIMEOUT,
    segment_size: int | None = None,
) -> tuple[KillLoop, list[str]]:
    """``rounds`` rounds of ``procs`` checkpointing writers, one SIGKILLed per round (module
    section comment; the kind of moment cycles through :data:`KILL_TRIGGERS`); the store is
    checked after each. ``segment_size``: the writers' log segment size (small ones make
    every few batches rotate, and every compaction discard segments). Returns the run and the
    problems of the first check that found any (empty: none)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    path = str(tmp_path / "store")
    total = rounds * commits
    setup = set_up_store(path, procs=procs, commits=total, claim_every=claim_every)
    loop = KillLoop(procs, commits, claim_every, checkpoint_every, maintain_every, keep_last, setup)
    loop.segment_size = segment_size
    for r in range(rounds):
        loop.rounds.append(_kill_round(loop, tmp_path, r, seed, deadline))
        problems = check_kill_loop(loop, path, final=r == rounds - 1)
        if problems:
            return loop, problems
    loop.seconds = time.monotonic() - t0
    return loop, []


def _kill_round(loop: KillLoop, tmp_path: Path, r: int, seed: int, deadline: float) -> KillRound:
    path = str(tmp_path / "store")
    start, stop = tmp_path / f"start-{r}", tmp_path / f"stop-{r}"
    common = ["--store", path, "--start", str(start), "--stop", str(stop), "--fixed-clock"]
    common += ["--commits", str((r + 1) * loop.commits), "--claim-every", str(loop.claim_every)]
    common += ["--checkpoint-every", str(loop.checkpoint_every), "--keep-last", str(loop.keep_last)]
    if loop.segment_size is not None:
        common += ["--segment-size", str(loop.segment_size)]
    rnd = KillRound(number=r)
    rng = random.Random(f"kill loop {seed} round {r}")
    rnd.trigger = KILL_TRIGGERS[(seed + r) % len(KILL_TRIGGERS)]  # every kind in 4 rounds
    maintaining = rnd.trigger in ("compact", "retain")
    victim = 0 if maintaining else rng.randrange(loop.procs)
    rnd.victim = victim
    expected = {
        "ack": loop.commits,
        "checkpoint": loop.commits // max(loop.checkpoint_every, 1),
        "compact": loop.commits // max(loop.maintain_every, 1),
        "retain": loop.commits // max(loop.maintain_every, 1),
    }[rnd.trigger]
    after = rng.randint(max(expected // 10, 1), max(expected * 2 // 3, 1))
    pause = rng.uniform(0, 0.003 if rnd.trigger == "ack" else 0.015)
    with _pool() as pool:
        writers: dict[int, WorkerProcess] = {}
        for p in range(loop.procs):
            args = ["ckwriter", *common, "--proc", str(p)]
            if p == 0:
                args += ["--maintain-every", str(loop.maintain_every)]
            writers[p] = WorkerProcess(f"round{r}-writer-{p}", args, tmp_path)
            pool.append(writers[p])
        for worker in pool:
            if not worker.wait_until(_ready, deadline):
                worker.wait_exit(min(deadline, time.monotonic() + 5))
                code = worker.popen.returncode
                why = "timed out" if code is None else f"exited with code {code}"
                _fail(f"{worker.name} {why} before it was ready (opening the store)", pool)
        start.touch()
        target = writers[victim]
        kind = _TRIGGER_EVENT[rnd.trigger]

        def due(events: list[Event]) -> bool:
            return _done(events) or sum(isinstance(e, kind) for e in events) >= after

        if not target.wait_until(due, deadline):
            _fail(f"{target.name} stopped or timed out before {after} x {rnd.trigger}", pool)
        rnd.late = _done(target.events)
        time.sleep(pause)
        target.popen.send_signal(signal.SIGKILL)
        rnd.note = (
            f"round {r}: SIGKILL {target.name} after {after} x {rnd.trigger} + {pause:.4f} s"
            + (" (came late: after its last commit)" if rnd.late else "")
        )
        for p, worker in writers.items():
            if p != victim and not worker.wait_until(_done, deadline):
                code = worker.popen.poll()
                why = "timed out" if code is None else f"exited with code {code}"
                _fail(f"{worker.name} {why} before committing all it had to ({rnd.note})", pool)
        stop.touch()
        for p, worker in writers.items():
            code = worker.wait_exit(deadline)
            if code is None:
                _fail(f"{worker.name} did not exit in time ({rnd.note})", pool)
            if p == victim and code == -signal.SIGKILL:
                rnd.killed = True
            elif code != 0:
                _fail(f"{worker.name} exited with code {code} ({rnd.note})", pool)
        for p, worker in writers.items():
            if worker.garbage and not (p == victim and len(worker.garbage) == 1):
                _fail(f"{worker.name} wrote unparsable lines {worker.garbage[:3]!r}", pool)
            rnd.writers[p] = worker.events
    return rnd


def check_kill_loop(loop: KillLoop, path: str, *, final: bool = False) -> list[str]:
    """Every problem of the store after the rounds so far (empty when none):

    * what the writers reported holds together: each batch ``(p, i)`` acknowledged once, at
      a distinct LSN; each writer resumed exactly where its process's batches in the store
      ended (its killed predecessor's last batch counted if and only if it landed);
    * every acknowledged batch is in the store, and the store holds no batch that was not
      acknowledged other than one a killed writer had begun; every batch is whole;
    * the batches are in an order consistent with their acknowledged LSNs, and every
      workflow equals the model: the setup states with those batches applied in that order,
      stamped with their writer's fixed clock (``last_lsn`` the LSN of its last batch where
      acknowledged);
    * every checkpoint in the index verifies (``ok``, ``matches_log`` not False) and holds the
      model's state of its workflow at its LSN;
    * every acknowledged checkpoint is in the index unless an acknowledged retention dropped
      it, or a retention SIGKILLed mid-way in the same or a later round may have; no
      checkpoint an acknowledged retention dropped is back;
    * the log starts at or after the last acknowledged compaction's start, and no segment
      before the log's start is left once the store is open;
    * ``final``: a compaction by the parent then deletes every file no checkpoint names
      (temp files and orphans of killed writers) and changes no state.
    """
    problems: list[str] = []
    figures = loop.figures
    figures.clear()
    acked: dict[tuple[int, int], tuple[int, list[Mutation]]] = {}  # (p, i) -> (lsn, batch)
    by_lsn: dict[int, tuple[int, int]] = {}
    acked_round: dict[tuple[int, int], int] = {}
    maybe: dict[tuple[int, int], list[Mutation]] = {}  # begun by a killed writer, not acked
    maybe_round: dict[tuple[int, int], int] = {}
    resumed: list[tuple[int, int, int]] = []  # (round, p, i)
    checkpoints: list[tuple[int, str]] = []  # (round, id) of every acknowledged checkpoint
    dropped: set[str] = set()
    retain_killed: list[int] = []  # rounds in which a retention was SIGKILLed mid-way
    compacted = 0
    for rnd in loop.rounds:
        figures["kills"] = figures.get("kills", 0) + rnd.killed
        if rnd.killed and not rnd.late:
            key = f"kills after {rnd.trigger}"
            figures[key] = figures.get(key, 0) + 1
        for p, events in sorted(rnd.writers.items()):
            begun: Begin | None = None
            retaining = done = False
            for e in events:
                if isinstance(e, Resumed):
                    resumed.append((rnd.number, p, e.i))
                elif isinstance(e, Begin):
                    begun = e
                elif isinstance(e, Ack) and e.i is not None:
                    if (p, e.i) in acked:
                        problems.append(f"batch {e.i} of process {p} acknowledged twice")
                    if e.lsn in by_lsn or e.lsn <= loop.setup.lsn:
                        problems.append(f"LSN {e.lsn} acknowledged twice or before the setup")
                    acked[(p, e.i)] = (e.lsn, e.batch)
                    acked_round[(p, e.i)] = rnd.number
                    by_lsn[e.lsn] = (p, e.i)
                    begun = None
                elif isinstance(e, Rejected):
                    begun = None
                elif isinstance(e, Checkpointed):
                    checkpoints.append((rnd.number, e.id))
                elif isinstance(e, RetainBegin):
                    retaining = True
                elif isinstance(e, Retained):
                    retaining = False
                    dropped.update(e.dropped)
                    figures["folds"] = figures.get("folds", 0) + len(e.folded)
                elif isinstance(e, Compacted):
                    compacted = max(compacted, e.first_lsn)
                    figures["compactions"] = figures.get("compactions", 0) + 1
                    discarded = figures.get("segments discarded", 0) + e.segments_discarded
                    figures["segments discarded"] = discarded
                elif isinstance(e, Done):
                    done = True
            if p == rnd.victim and rnd.killed:
                inside = _INSIDE.get(type(events[-1]) if events else Ready, "between operations")
                figures[f"kills {inside}"] = figures.get(f"kills {inside}", 0) + 1
                if begun is not None and begun.i is not None:
                    maybe[(p, begun.i)] = begun.batch
                    maybe_round[(p, begun.i)] = rnd.number
                if retaining:
                    retain_killed.append(rnd.number)
            elif not done:
                problems.append(f"round {rnd.number}: writer {p} did not finish")
    figures["acknowledged batches"] = len(acked)
    figures["acknowledged checkpoints"] = len(checkpoints)
    figures["checkpoints dropped"] = len(dropped)

    try:
        with LocalStore.open(path, checkpoints=MANUAL_ONLY) as store:
            index = {info.id: info for info in store.checkpoints()}
            checks = store.verify()
            held = {c.checkpoint.id: store.checkpoint_state(c.checkpoint.id)
                    for c in checks if c.ok}  # fmt: skip
            final_states: dict[str, WorkflowState] = {}
            unloadable = []
            for workflow_id in store.list_workflows():
                try:
                    final_states[workflow_id] = store.load(workflow_id)
                except WfstateError as exc:
                    unloadable.append(f"{workflow_id} does not load: {exc}")
            first_lsn = store.stats().log_first_lsn
        segments = os.listdir(os.path.join(path, WAL_DIR))
        # A retention SIGKILLed mid-way may have committed its drop record: it is still in
        # the log, as no compaction ran after it (the compacting writer is the one killed).
        wal = os.path.join(path, WAL_DIR)
        with Log.open(wal, lock_path=os.path.join(path, LOCK_FILE)) as log:
            for record in log.read():
                if record.type == RECORD_CHECKPOINT_DROP:
                    loop.logged_drops.update(decode_drop(record.payload))
    except Exception as exc:
        return [*problems, f"reopening the store failed: {type(exc).__name__}: {exc}"]
    if unloadable:
        bad = [f"checkpoint {c.checkpoint.id} does not verify: {c.problem}" for c in checks
               if not c.ok]  # fmt: skip
        return [*problems, *unloadable, *bad]

    # the batches each process's workflow holds: acknowledged, or begun by a killed writer
    try:
        counts = check_shared(final_states[SHARED], claim_every=loop.claim_every)
        own = {p: check_own(final_states[own_workflow(p)], p) for p in range(loop.procs)}
    except (Violation, KeyError) as exc:
        return [*problems, f"the store's workflows are not what the writers make: {exc!r}"]
    landed = 0
    for p in range(loop.procs):
        if counts.get(p, 0) != own[p]:
            problems.append(f"half-applied batches: the shared step holds {counts.get(p, 0)} "
                            f"batches of process {p}, its own workflow {own[p]}")  # fmt: skip
        for q, i in acked:
            if q == p and i >= own[p]:
                problems.append(f"acknowledged batch {i} of process {p} is not in the store: "
                                f"LOST (it holds {own[p]})")  # fmt: skip
        for i in range(own[p]):
            if (p, i) not in acked:
                if (p, i) in maybe:
                    landed += 1
                else:
                    problems.append(f"the store holds batch {i} of process {p}, which nobody "
                                    "acknowledged")  # fmt: skip
    figures["unacknowledged batches of killed writers that landed"] = landed
    for r, p, i in resumed:  # the store held batches 0 .. i-1 of p when round r began
        for (q, j), when in acked_round.items():
            if q == p and (j < i) != (when < r):
                problems.append(f"round {r}: writer {p} resumed at batch {i}, but batch {j} "
                                f"was acknowledged in round {when}")  # fmt: skip
        for j in range(i):
            if acked_round.get((p, j), r) >= r and maybe_round.get((p, j), r) >= r:
                problems.append(
                    f"round {r}: writer {p} resumed at batch {i}, but batch {j} "
                    "was never acknowledged nor begun by a killed writer before"
                )

    # the order of the batches, and the model
    order = [_pair_of(o.data) for o in final_states[SHARED].outputs.get(SHARED, ())]
    lsns = [acked[b][0] if b in acked else None for b in order]
    known = [lsn for lsn in lsns if lsn is not None]
    if known != sorted(known):
        problems.append("the batches are in the shared workflow in another order than their LSNs")
    model: dict[str, WorkflowState] = dict(loop.setup.states)
    last: dict[str, int | None] = {w: s.metadata.last_lsn for w, s in model.items()}
    history: list[dict[str, WorkflowState]] = [dict(model)]
    for b, lsn in zip(order, lsns, strict=True):
        batch = acked[b][1] if b in acked else maybe.get(b, [])
        stamped = [msgspec.structs.replace(m, at=FIXED_CLOCK + b[0]) for m in batch]
        try:
            results = apply_batch(model, stamped)
        except (ValidationError, NotFoundError) as exc:
            problems.append(f"batch {b[1]} of process {b[0]} does not apply in the store's "
                            f"order: {exc}")  # fmt: skip
            return problems
        for workflow_id, state in results.items():
            assert state is not None
            model[workflow_id] = state
            last[workflow_id] = lsn
        history.append(dict(model))
    for workflow_id in sorted(set(final_states) | set(model)):
        got, want = final_states.get(workflow_id), model.get(workflow_id)
        if got is None or want is None:
            problems.append(f"{workflow_id}: in the store {got is not None}, in the model "
                            f"{want is not None}")  # fmt: skip
            continue
        if stamped_with(got, 0) != stamped_with(want, 0):
            diffs: list[str] = []
            _diff(msgspec.to_builtins(got), msgspec.to_builtins(want), workflow_id, diffs)
            problems.append(f"{workflow_id} differs from the model: " + "; ".join(diffs[:8]))
        expected_lsn = last[workflow_id]
        if expected_lsn is not None and got.metadata.last_lsn != expected_lsn:
            problems.append(f"{workflow_id}: last_lsn {got.metadata.last_lsn}, but its last "
                            f"batch was acknowledged at {expected_lsn}")  # fmt: skip

    # checkpoints
    before_k = [loop.setup.lsn]
    for lsn in lsns:
        before_k.append(max(before_k[-1], lsn or 0))
    after_k: list[float] = [float("inf")]
    for lsn in reversed(lsns):
        after_k.append(min(after_k[-1], lsn if lsn is not None else float("inf")))
    after_k.reverse()
    figures["checkpoints in the index"] = len(index)
    figures["checkpoints matching the log"] = sum(c.matches_log is True for c in checks)
    for check in checks:
        info = check.checkpoint
        if not check.ok or check.matches_log is False:
            problems.append(f"checkpoint {info.id} does not verify: {check.problem}")
            continue
        state = stamped_with(held[info.id], 0)
        candidates = [k for k in range(len(history)) if before_k[k] <= info.lsn < after_k[k]]
        if not any(
            (h := history[k].get(info.workflow_id)) is not None and stamped_with(h, 0) == state
            for k in candidates
        ):
            problems.append(f"checkpoint {info.id} of {info.workflow_id} at LSN {info.lsn} "
                            "does not hold the model's state at that LSN")  # fmt: skip
    by_killed = 0
    for r, checkpoint_id in checkpoints:
        if checkpoint_id in index or checkpoint_id in dropped:
            continue
        if checkpoint_id in loop.logged_drops and any(k >= r for k in retain_killed):
            by_killed += 1
            continue
        problems.append(f"acknowledged checkpoint {checkpoint_id} (round {r}) is not in the "
                        "index and no retention dropped it")  # fmt: skip
    figures["acknowledged checkpoints dropped by a killed retention"] = by_killed
    back = (dropped | loop.logged_drops) & set(index)
    if back:
        problems.append(f"dropped checkpoints are back: {sorted(back)}")

    # compaction
    if first_lsn < compacted:
        problems.append(f"the log starts at {first_lsn}, before the acknowledged compaction's "
                        f"{compacted}")  # fmt: skip
    left = [n for n in segments if (s := parse_segment_name(n)) and s[1] < first_lsn]
    if left:
        problems.append(f"segments before the log's start {first_lsn} left: {left}")
    if final and not problems:
        problems += _compact_and_check(path, final_states)
    return problems


def _pair_of(data: object) -> tuple[int, int]:
    assert isinstance(data, dict)
    return data["p"], data["i"]


def _compact_and_check(path: str, states: dict[str, WorkflowState]) -> list[str]:
    """Compact as the only process: afterwards every file of ``checkpoints/`` is one the index
    names (what killed writers left is gone), and the states are the same."""
    problems = []
    with LocalStore.open(path, checkpoints=MANUAL_ONLY) as store:
        store.compact()
        named = {info.file for info in store.checkpoints()}
    left = sorted(set(os.listdir(os.path.join(path, CHECKPOINTS_DIR))) - named)
    if left:
        problems.append(f"files no checkpoint names left after a compaction: {left}")
    with LocalStore.open(path, checkpoints=MANUAL_ONLY) as store:
        after = {w: store.load(w) for w in store.list_workflows()}
        bad = [c for c in store.verify() if not c.ok]
    if {w: stamped_with(s, 0) for w, s in after.items()} != {
        w: stamped_with(s, 0) for w, s in states.items()
    }:
        problems.append("a compaction changed the states")
    if bad:
        problems.append(f"checkpoints do not verify after a compaction: {bad}")
    return problems


def kill_loop_summary(name: str, loop: KillLoop) -> str:
    figures = ", ".join(f"{k} {v}" for k, v in loop.figures.items())
    return (
        f"{name}: {len(loop.rounds)} rounds of {loop.procs} writers x {loop.commits} batches "
        f"in {loop.seconds:.1f} s; {figures}; " + "; ".join(r.note for r in loop.rounds)
    )
