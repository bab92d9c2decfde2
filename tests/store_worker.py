"""A scripted client of one :class:`~wfstate.backends.local.LocalStore`, for multi-process tests.

Run as ``python -m tests.store_worker ROLE --store PATH ...`` from the repository root. The
process opens the store, reports ``ready``, waits for the start file (a barrier, so several
workers really overlap), plays its role and closes the store.

Roles
    ``writer``: ``--commits N`` batches, batch ``i`` being two ``PutStepOutput`` with data
    ``{"p": P, "i": i}``: one on step ``shared`` of the shared workflow, one on step ``own`` of
    the process's own workflow ``proc-P``. Every ``--claim-every``-th batch also claims task
    step ``task-T`` of the shared workflow (``SetStepStatus`` pending -> running, output
    ``{"claimed_by": P, "i": i}``); every writer races for every task, so whether the claim is
    valid depends on what the other processes committed. A lost race is the ValidationError
    at ``mutations[2].status``; the batch changed nothing, and the writer commits it again
    without the claim. With ``--create`` the writer first creates the shared workflow (losing
    that race is the ValidationError "already exists", tolerated) and then its own workflow.
    With ``--stop`` it then lingers, the store open and idle, until the stop file exists.
    ``reader``: loads the shared workflow and every own workflow until the stop file exists
    (then once more), checking each state it reads (see :func:`check_shared`,
    :func:`check_own`) and that nothing it reads goes backwards. A violation exits 2 with the
    reason on stderr; any other error exits 1 with a traceback.
    ``ckwriter``: a writer that resumes where its process's batches in the store end (a
    SIGKILLed predecessor may have left one more than it reported), commits the writer's
    batches up to ``--commits``, checkpoints (``--checkpoint-every``) and, with
    ``--maintain-every``, compacts and retains (:func:`run_checkpoint_writer`). It stamps
    batches with a fixed clock (``--fixed-clock``) so the checks can rebuild every state.

Reporting
    One JSON document per line on stdout (the ``Event`` union), flushed as one ``write`` each,
    so the parent knows exactly what was acknowledged even if this process is SIGKILLed: a
    ``begin`` line before each commit (the batch as given), an ``ack`` line (its LSN and the
    batch) after ``commit`` returned, ``rejected`` for a lost race. A killed writer's last
    ``begin`` without ``ack`` is the one batch that may or may not be in the store. A
    ``ckwriter`` also reports each checkpoint, compaction and retention when begun and when
    it returned (with what it dropped).

The role functions take the store and an ``emit`` callback, so tests also run them on threads
sharing one opened store, and check the outcome with the same code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeAlias

import msgspec

from wfstate.backends.local import LocalStore
from wfstate.checkpointpolicy import DEFAULT_POLICY, CheckpointPolicy
from wfstate.errors import ValidationError
from wfstate.model import WorkflowState, WorkflowStep, validate_state
from wfstate.mutations import CreateWorkflow, Mutation, PutStepOutput, SetStepStatus
from wfstate.retention import RetentionPolicy
from wfstate.store import Store
from wfstate.wal import DEFAULT_SEGMENT_SIZE, Durability

SHARED: Final = "shared"
"""Id of the workflow every writer writes to, and of its step collecting one output per batch."""
OWN_STEP: Final = "own"
CLAIM_FIELD: Final = "mutations[2].status"
"""Where a lost claim race is reported (the claim is the third mutation of its batch)."""
BARRIER_TIMEOUT: Final = 60.0
READER_MAX_SECONDS: Final = 300.0


def own_workflow(proc: int) -> str:
    return f"proc-{proc}"


def task_step(task: int) -> str:
    return f"task-{task}"


def task_count(commits: int, claim_every: int) -> int:
    """How many task steps the shared workflow has: one per claiming batch index."""
    return 0 if claim_every <= 0 else -(-commits // claim_every)


def create_shared(tasks: int) -> CreateWorkflow:
    steps = (
        WorkflowStep(id=SHARED, name="one output per batch"),
        *(WorkflowStep(id=task_step(t), name=f"task {t}") for t in range(tasks)),
    )
    return CreateWorkflow(workflow_id=SHARED, name="shared", steps=steps, at=0)


def create_own(proc: int) -> CreateWorkflow:
    steps = (WorkflowStep(id=OWN_STEP, name=f"outputs of process {proc}"),)
    return CreateWorkflow(workflow_id=own_workflow(proc), name=f"process {proc}", steps=steps, at=0)


def setup_batch(procs: int, tasks: int) -> list[Mutation]:
    """The batch creating every workflow the writers use (when they do not create them)."""
    return [create_shared(tasks), *(create_own(p) for p in range(procs))]


def writer_batch(proc: int, i: int, claim: int | None) -> list[Mutation]:
    """Batch ``i`` of process ``proc``, claiming task ``claim`` if not None."""
    data = {"p": proc, "i": i}
    batch: list[Mutation] = [
        PutStepOutput(workflow_id=SHARED, step_id=SHARED, data=data, at=0),
        PutStepOutput(workflow_id=own_workflow(proc), step_id=OWN_STEP, data=data, at=0),
    ]
    if claim is not None:
        batch.append(
            SetStepStatus(
                workflow_id=SHARED,
                step_id=task_step(claim),
                status="running",
                output={"claimed_by": proc, "i": i},
                at=0,
            )
        )
    return batch


# -- events -----------------------------------------------------------------------------------


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="event"):
    pass


class Ready(_Event, frozen=True, kw_only=True, tag="ready"):
    """The store is open; waiting for the start barrier."""

    role: str
    pid: int


class Begin(_Event, frozen=True, kw_only=True, tag="begin"):
    """About to commit ``batch`` (``i`` is None for the creation batches of ``--create``)."""

    p: int
    i: int | None
    batch: list[Mutation]


class Ack(_Event, frozen=True, kw_only=True, tag="ack"):
    """``commit(batch)`` returned ``lsn``: the batch is acknowledged."""

    p: int
    i: int | None
    lsn: int
    batch: list[Mutation]


class Rejected(_Event, frozen=True, kw_only=True, tag="rejected"):
    """The batch just begun lost a race (ValidationError at ``field``) and changed nothing."""

    p: int
    i: int | None
    field: str
    error: str


class Done(_Event, frozen=True, kw_only=True, tag="done"):
    p: int
    commits: int


class Seen(_Event, frozen=True, kw_only=True, tag="seen"):
    """The reader's ``loads``-th round saw the shared workflow at a new ``version``."""

    loads: int
    version: int
    outputs: int


class ReaderDone(_Event, frozen=True, kw_only=True, tag="reader_done"):
    """The reader's last round started after the stop signal; what it saw then."""

    loads: int
    versions: int
    final_version: int
    final_outputs: int


class Resumed(_Event, frozen=True, kw_only=True, tag="resumed"):
    """A ``ckwriter`` found ``i`` batches of its process in the store and goes on from there."""

    p: int
    i: int


class CheckpointBegin(_Event, frozen=True, kw_only=True, tag="checkpoint_begin"):
    p: int
    workflow_id: str


class Checkpointed(_Event, frozen=True, kw_only=True, tag="checkpointed"):
    """``checkpoint()`` returned: checkpoint ``id`` of ``workflow_id`` at ``lsn`` is durable."""

    p: int
    id: str
    workflow_id: str
    lsn: int


class CompactBegin(_Event, frozen=True, kw_only=True, tag="compact_begin"):
    p: int


class Compacted(_Event, frozen=True, kw_only=True, tag="compacted"):
    """``compact()`` returned: the log starts at ``first_lsn``."""

    p: int
    first_lsn: int
    segments_discarded: int


class RetainBegin(_Event, frozen=True, kw_only=True, tag="retain_begin"):
    p: int


class Retained(_Event, frozen=True, kw_only=True, tag="retained"):
    """``retain()`` returned: ``dropped`` left the index for good, ``folded`` were rewritten."""

    p: int
    dropped: list[str]
    folded: list[str]


Event: TypeAlias = (
    Ready
    | Begin
    | Ack
    | Rejected
    | Done
    | Seen
    | ReaderDone
    | Resumed
    | CheckpointBegin
    | Checkpointed
    | CompactBegin
    | Compacted
    | RetainBegin
    | Retained
)
Emit = Callable[[Event], None]

_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final[msgspec.json.Decoder[Event]] = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return _ENCODER.encode(event) + b"\n"


def decode_event(line: bytes | str) -> Event:
    return _DECODER.decode(line)


# -- checks of what a state may look like (used by the reader and by the tests) ----------------


class Violation(AssertionError):
    """A state that no serial execution of the writers' batches can produce."""


def _pair(data: Any, where: str) -> tuple[int, int]:
    if not isinstance(data, dict) or set(data) != {"p", "i"}:
        raise Violation(f"{where}: unexpected output data {data!r}")
    p, i = data["p"], data["i"]
    if not isinstance(p, int) or not isinstance(i, int):
        raise Violation(f"{where}: unexpected output data {data!r}")
    return p, i


def check_shared(state: WorkflowState, *, claim_every: int) -> dict[int, int]:
    """Check a state of the shared workflow; return process -> how many of its batches it holds.

    It must validate; its ``shared`` outputs have versions 1..n and hold each ``(p, i)`` once,
    each process's ``i`` being 0, 1, 2, ... in order (a writer commits them one after another);
    a task step is pending and untouched, or running once with the one output of the claiming
    batch, which the ``shared`` outputs hold; the version counts exactly the mutations applied.
    """
    try:
        validate_state(state, SHARED)
    except ValidationError as exc:
        raise Violation(f"the shared workflow does not validate: {exc}") from exc
    outputs = state.outputs.get(SHARED, ())
    counts: dict[int, int] = {}
    held: set[tuple[int, int]] = set()
    for n, out in enumerate(outputs):
        where = f"shared output #{n}"
        if out.version != n + 1:
            raise Violation(f"{where} has version {out.version}, not {n + 1}: versions must be "
                            f"1..{len(outputs)} without gaps or repeats")  # fmt: skip
        p, i = _pair(out.data, where)
        if i != counts.get(p, 0):
            raise Violation(
                f"{where} (version {out.version}) is batch {i} of process {p}, but the "
                f"previous outputs hold {counts.get(p, 0)} batches of it (duplicate, lost or "
                f"out of order)"
            )
        counts[p] = i + 1
        held.add((p, i))
    claims = 0
    for step in state.workflow.steps:
        if step.id == SHARED:
            continue
        task = int(step.id.removeprefix("task-"))
        got = state.outputs.get(step.id, ())
        if step.status == "pending" and step.attempts == 0 and not got:
            continue
        if step.status != "running" or step.attempts != 1 or len(got) != 1:
            raise Violation(
                f"task {step.id} is {step.status} after {step.attempts} attempts with "
                f"{len(got)} outputs: it was claimed more than once or half-claimed"
            )
        claim = got[0].data
        if not isinstance(claim, dict) or set(claim) != {"claimed_by", "i"}:
            raise Violation(f"task {step.id} has unexpected claim output {claim!r}")
        if claim["i"] != task * claim_every or (claim["claimed_by"], claim["i"]) not in held:
            raise Violation(
                f"task {step.id} claimed by {claim!r}, but the shared outputs do not hold that "
                f"batch (its claim is there without the rest of it)"
            )
        claims += 1
    expected = 1 + len(outputs) + claims
    if state.metadata.version != expected:
        raise Violation(
            f"the shared workflow has version {state.metadata.version}, but 1 + {len(outputs)} "
            f"outputs + {claims} claims = {expected} mutations were applied to it"
        )
    return counts


def check_own(state: WorkflowState, proc: int) -> int:
    """Check a state of process ``proc``'s own workflow; return how many batches it holds."""
    try:
        validate_state(state, own_workflow(proc))
    except ValidationError as exc:
        raise Violation(f"{own_workflow(proc)} does not validate: {exc}") from exc
    outputs = state.outputs.get(OWN_STEP, ())
    for n, out in enumerate(outputs):
        if out.version != n + 1 or _pair(out.data, f"{own_workflow(proc)} output #{n}") != (
            proc,
            n,
        ):
            raise Violation(
                f"{own_workflow(proc)} output #{n} is version {out.version} with data "
                f"{out.data!r}, not version {n + 1} of batch {n}"
            )
    if state.metadata.version != 1 + len(outputs):
        raise Violation(
            f"{own_workflow(proc)} has version {state.metadata.version} with {len(outputs)} outputs"
        )
    return len(outputs)


# -- roles ------------------------------------------------------------------------------------


def run_writer(
    store: Store, *, proc: int, commits: int, claim_every: int, create: bool, emit: Emit
) -> None:
    """Commit ``commits`` batches (and with ``create`` the creation batches first)."""

    def commit(i: int | None, batch: list[Mutation], lost_race_field: str | None) -> bool:
        emit(Begin(p=proc, i=i, batch=batch))
        try:
            lsn = store.commit(batch)
        except ValidationError as exc:
            if exc.field != lost_race_field:
                raise
            emit(Rejected(p=proc, i=i, field=exc.field, error=str(exc)))
            return False
        emit(Ack(p=proc, i=i, lsn=lsn, batch=batch))
        return True

    if create:
        commit(None, [create_shared(task_count(commits, claim_every))], "mutations[0].workflow_id")
        commit(None, [create_own(proc)], None)
    for i in range(commits):
        claim = i // claim_every if claim_every > 0 and i % claim_every == 0 else None
        if claim is not None and commit(i, writer_batch(proc, i, claim), CLAIM_FIELD):
            continue
        commit(i, writer_batch(proc, i, None), None)
    emit(Done(p=proc, commits=commits))


def run_reader(
    store: Store,
    *,
    procs: int,
    claim_every: int,
    should_stop: Callable[[], bool],
    emit: Emit,
    max_seconds: float = READER_MAX_SECONDS,
) -> None:
    """Load every workflow in rounds until ``should_stop()`` (checked before a round, so the
    last round starts after it); raise :class:`Violation` on a state that cannot be, or on
    anything going backwards. Within a round the shared workflow is loaded first, so each own
    workflow, loaded later, holds at least the batches of its process that it showed."""
    ids = [SHARED, *(own_workflow(p) for p in range(procs))]
    last: dict[str, tuple[int, int, int]] = {}
    loads = versions = 0
    last_shared_version = -1
    deadline = time.monotonic() + max_seconds
    while True:
        stop = should_stop()
        if time.monotonic() > deadline:
            raise Violation(f"no stop signal after {max_seconds} s")
        shared = store.load(SHARED)
        counts = check_shared(shared, claim_every=claim_every)
        round_states = [shared]
        for p in range(procs):
            own = store.load(own_workflow(p))
            round_states.append(own)
            held = check_own(own, p)
            if held < counts.get(p, 0):
                raise Violation(
                    f"{own_workflow(p)} holds {held} batches, loaded after the shared workflow "
                    f"showed {counts.get(p, 0)} of them: a batch is half applied, or reads "
                    f"went back in time"
                )
        for workflow_id, state in zip(ids, round_states, strict=True):
            now = (
                state.metadata.version,
                sum(len(v) for v in state.outputs.values()),
                state.metadata.last_lsn,
            )
            before = last.get(workflow_id)
            if before is not None and any(a < b for a, b in zip(now, before, strict=True)):
                raise Violation(
                    f"{workflow_id} went backwards: (version, outputs, last_lsn) was {before}, "
                    f"now {now}"
                )
            last[workflow_id] = now
        loads += 1
        if shared.metadata.version != last_shared_version:
            versions += 1
            last_shared_version = shared.metadata.version
            emit(
                Seen(
                    loads=loads,
                    version=shared.metadata.version,
                    outputs=len(shared.outputs.get(SHARED, ())),
                )
            )
        if stop:
            emit(
                ReaderDone(
                    loads=loads,
                    versions=versions,
                    final_version=shared.metadata.version,
                    final_outputs=len(shared.outputs.get(SHARED, ())),
                )
            )
            return


# -- the checkpointing writer (issue 4: SIGKILL loops with checkpoints and compaction) --------

FIXED_CLOCK: Final = 1_700_000_000.0
"""``--fixed-clock``: process ``P`` stamps every batch ``FIXED_CLOCK + P``, so the checks can
rebuild every state from the acknowledged batches alone, after compaction discarded them."""
KILL_LOOP_POLICY: Final = CheckpointPolicy(
    every_batches=None, every_log_bytes=None, on_error=False, incremental=True, max_chain=4
)
"""Only the checkpoints a ``ckwriter`` asks for (so each one is reported), incremental."""


def fixed_clock(proc: int) -> Callable[[], float]:
    return lambda: FIXED_CLOCK + proc


def run_checkpoint_writer(
    store: LocalStore,
    *,
    proc: int,
    commits: int,
    claim_every: int,
    checkpoint_every: int,
    maintain_every: int,
    keep_last: int,
    emit: Emit,
) -> None:
    """Go on with this process's batches from what its own workflow holds up to ``commits``
    (batch ``i`` as :func:`run_writer` commits it). After every ``checkpoint_every``-th batch
    checkpoint the own workflow (every second time the shared one too); with
    ``maintain_every``, after every that many batches compact the store, then retain
    ``keep_last`` checkpoints per workflow. Every call is reported when begun and when it
    returned."""
    first = len(store.load(own_workflow(proc)).outputs.get(OWN_STEP, ()))
    emit(Resumed(p=proc, i=first))

    def commit(i: int, batch: list[Mutation], lost_race_field: str | None) -> bool:
        emit(Begin(p=proc, i=i, batch=batch))
        try:
            lsn = store.commit(batch)
        except ValidationError as exc:
            if exc.field != lost_race_field:
                raise
            emit(Rejected(p=proc, i=i, field=exc.field, error=str(exc)))
            return False
        emit(Ack(p=proc, i=i, lsn=lsn, batch=batch))
        return True

    def checkpoint(workflow_id: str) -> None:
        emit(CheckpointBegin(p=proc, workflow_id=workflow_id))
        info = store.checkpoint(workflow_id, tags=(f"p{proc}",))
        emit(Checkpointed(p=proc, id=info.id, workflow_id=workflow_id, lsn=info.lsn))

    for i in range(first, commits):
        claim = i // claim_every if claim_every > 0 and i % claim_every == 0 else None
        if claim is None or not commit(i, writer_batch(proc, i, claim), CLAIM_FIELD):
            commit(i, writer_batch(proc, i, None), None)
        done = i + 1
        if checkpoint_every and done % checkpoint_every == 0:
            checkpoint(own_workflow(proc))
            if done % (2 * checkpoint_every) == 0:
                checkpoint(SHARED)
        if maintain_every and done % maintain_every == 0:
            emit(CompactBegin(p=proc))
            report = store.compact()
            emit(Compacted(p=proc, first_lsn=report.log_first_lsn,
                           segments_discarded=len(report.segments_discarded)))  # fmt: skip
            emit(RetainBegin(p=proc))
            plan = store.retain(RetentionPolicy(keep_last=keep_last))
            emit(Retained(p=proc, dropped=[c.id for c in plan.drop],
                          folded=[c.id for c in plan.fold]))  # fmt: skip
    emit(Done(p=proc, commits=commits))


# -- command line -----------------------------------------------------------------------------


def _emit_stdout(event: Event) -> None:
    out = sys.stdout.buffer
    out.write(encode_event(event))
    out.flush()


def _wait_for_file(path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.001)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.store_worker", description=__doc__)
    parser.add_argument("role", choices=["writer", "reader", "ckwriter"])
    parser.add_argument("--store", required=True)
    parser.add_argument("--start", required=True, help="wait for this file before working")
    parser.add_argument("--stop", help="reader: stop once this file exists; writer: exit only then")
    parser.add_argument("--proc", type=int, default=0, help="writer: this process's number")
    parser.add_argument("--procs", type=int, default=1, help="reader: how many writers")
    parser.add_argument("--commits", type=int, default=100)
    parser.add_argument("--claim-every", type=int, default=0)
    parser.add_argument("--create", action="store_true")
    parser.add_argument("--durability", default="always")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="ckwriter")
    parser.add_argument("--maintain-every", type=int, default=0, help="ckwriter: compact+retain")
    parser.add_argument("--keep-last", type=int, default=2, help="ckwriter: retention")
    parser.add_argument("--fixed-clock", action="store_true", help="stamp FIXED_CLOCK + proc")
    parser.add_argument("--segment-size", type=int, default=DEFAULT_SEGMENT_SIZE)
    args = parser.parse_args(argv)
    durability: Durability = args.durability
    store = LocalStore.open(
        args.store,
        durability=durability,
        segment_size=args.segment_size,
        clock=fixed_clock(args.proc) if args.fixed_clock else time.time,
        checkpoints=KILL_LOOP_POLICY if args.role == "ckwriter" else DEFAULT_POLICY,
    )
    try:
        _emit_stdout(Ready(role=args.role, pid=os.getpid()))
        _wait_for_file(args.start, BARRIER_TIMEOUT)
        if args.role == "ckwriter":
            run_checkpoint_writer(
                store,
                proc=args.proc,
                commits=args.commits,
                claim_every=args.claim_every,
                checkpoint_every=args.checkpoint_every,
                maintain_every=args.maintain_every,
                keep_last=args.keep_last,
                emit=_emit_stdout,
            )
            if args.stop:
                _wait_for_file(args.stop, READER_MAX_SECONDS)
        elif args.role == "writer":
            run_writer(
                store,
                proc=args.proc,
                commits=args.commits,
                claim_every=args.claim_every,
                create=args.create,
                emit=_emit_stdout,
            )
            if args.stop:  # linger, the store open and idle, until the parent says stop
                _wait_for_file(args.stop, READER_MAX_SECONDS)
        else:
            if not args.stop:
                parser.error("reader needs --stop")
            stop_file: str = args.stop
            try:
                run_reader(
                    store,
                    procs=args.procs,
                    claim_every=args.claim_every,
                    should_stop=lambda: os.path.exists(stop_file),
                    emit=_emit_stdout,
                )
            except Violation as exc:
                print(f"reader: VIOLATION: {exc}", file=sys.stderr, flush=True)
                return 2
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
