"""The materialized states of a store and the one way they change: a validated, stamped batch.

Shared by every backend, so that they all validate, stamp and apply identically (the
conformance tests rely on it). :class:`StateTable` is not thread-safe; :class:`TableStore`
wraps it with the lock, the commit sequence and the read side of the Store contract, leaving a
backend only how a batch is logged and when it is durable.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Final

import msgspec

from wfstate.errors import ClosedError, NotFoundError, ValidationError
from wfstate.ids import validate_id
from wfstate.model import WorkflowState
from wfstate.mutations import (
    CREATE_OP,
    DELETE_OP,
    REPLACE_OP,
    CreateWorkflow,
    DeleteWorkflow,
    Mutation,
    ReplaceState,
    apply_batch,
    mutation_targets,
    replay_batch,
)

Clock = Callable[[], float]
BatchLogger = Callable[[list["Mutation"]], tuple[int, int]]
"""Logs a validated, stamped batch; returns its LSN and its logged (raw) size."""


Materializer = Callable[[str, int, int, Sequence[tuple[int, int]]], tuple[WorkflowState, int]]
"""Rebuilds a workflow's state: ``(workflow_id, origin, floor, entries)`` → ``(state, bytes
read)``. ``origin``: the LSN that created the workflow's incarnation; ``floor``: the log holds
none of its batches at or below it (0: the log holds them all), so the state must come from a
checkpoint at or above it; ``entries``: for each batch above the floor, ``(lsn, skip)``: that
batch's mutations of the workflow, less the first ``skip`` (non-zero only in the creating
batch)."""

_NO_SKIP: Final = 1 << 62  # sorts after every (lsn, skip) entry of the same lsn

DEFAULT_CACHE_BYTES: Final = 256 * 1024 * 1024
"""Generous on purpose: a cache smaller than the set of workflows being written in rotation
makes every commit rebuild its workflow from the log (until checkpoints bound that work)."""


class StateTable:
    """Workflow id → committed state, materialized on demand and cached within a budget.

    For every live workflow the table keeps only its *entries* (the LSNs of the batches that
    built it since it was created, see :data:`Materializer`) and an estimate of its size (the
    raw sizes of those batches since its last whole replacement). States are materialized by
    ``materialize`` when first read
    and kept in a least-recently-used cache of about ``cache_bytes`` (by that estimate; the
    state last used always stays). So a store with many workflows opens without building any
    state and holds only the states in use. Without ``materialize`` (the memory backend) every
    state stays cached. A materialized state is the same, field for field, as the state the
    commits produced (``tests/test_store.py`` checks a lazy table against an eager one).
    """

    def __init__(
        self, materialize: Materializer | None = None, *, cache_bytes: int = DEFAULT_CACHE_BYTES
    ) -> None:
        self._materialize = materialize
        self._budget = cache_bytes if materialize is not None else None
        self._entries: dict[str, list[tuple[int, int]]] = {}
        self._origin: dict[str, int] = {}
        self._floor: dict[str, int] = {}
        self._weight: dict[str, int] = {}
        self._cache: OrderedDict[str, WorkflowState] = OrderedDict()
        self._cached_bytes = 0

    def get(self, workflow_id: str) -> WorkflowState | None:
        """The committed state of ``workflow_id`` (None: absent), materialized if need be."""
        state = self._cache.get(workflow_id)
        if state is not None:
            self._cache.move_to_end(workflow_id)
            return state
        entries = self._entries.get(workflow_id)
        if entries is None or self._materialize is None:
            return None
        state, read = self._materialize(
            workflow_id, self._origin[workflow_id], self._floor[workflow_id], entries
        )
        if not self._weight.get(workflow_id):
            self._weight[workflow_id] = read
        self._remember(workflow_id, state)
        return state

    def ids(self) -> list[str]:
        return sorted(self._entries)

    def release(self) -> None:
        """Drop every materialized state (the store is closing; nothing reads them again).

        A store's handle is held in reference cycles (bound methods, hooks), so without this
        its cached states would live until the cyclic collector reaches the handle: a full
        collection traversing and freeing them, paid by whatever code runs then, in the
        middle of the application's next work. The memory backend's states go with it: its
        table is all it has, and a closed store is never read again.
        """
        self._cache.clear()
        self._cached_bytes = 0

    @property
    def cached_bytes(self) -> int:
        """The estimated size of the states held materialized (see the class docstring)."""
        return self._cached_bytes

    def live(self) -> dict[str, tuple[int, int]]:
        """Each live workflow's ``(origin, floor)`` (see :data:`Materializer`)."""
        return {w: (self._origin[w], self._floor[w]) for w in self._entries}

    def entries(self, workflow_id: str) -> list[tuple[int, int]]:
        """A copy of the entries of ``workflow_id`` (see :data:`Materializer`)."""
        return list(self._entries.get(workflow_id, ()))

    def last_lsn(self, workflow_id: str) -> int:
        """The LSN of the last batch that changed ``workflow_id`` (its floor if the log holds
        none of them); 0 if absent."""
        entries = self._entries.get(workflow_id)
        if entries is None:
            return 0
        return entries[-1][0] if entries else self._floor[workflow_id]

    def batches_after(self, workflow_id: str, lsn: int) -> int:
        """How many batches changed ``workflow_id`` after ``lsn`` (that the log holds)."""
        entries = self._entries.get(workflow_id, [])
        return len(entries) - bisect.bisect_right(entries, (lsn, _NO_SKIP))

    def origin(self, workflow_id: str) -> int | None:
        """The LSN that created ``workflow_id``'s incarnation; None if absent."""
        return self._origin.get(workflow_id)

    def floor(self, workflow_id: str) -> int | None:
        """``workflow_id``'s floor (see :data:`Materializer`); None if absent."""
        return self._floor.get(workflow_id)

    def rebase(self, workflows: Sequence[tuple[str, int, int]], *, skipped: bool) -> None:
        """Take an anchor's list of live workflows ``(workflow_id, origin, floor)``
        (docs/format.md §9.6): each gets its floor, and entries at or below it are forgotten.

        ``skipped``: the records between this table's view and the anchor were never applied
        (a fresh open, or a process whose view was discarded under it): the table becomes
        exactly the list and no cached state is kept. Otherwise the anchor was met in LSN
        order and must list exactly the live workflows, with their origins (``ValidationError``
        otherwise, and nothing changes).
        """
        wanted = {w: (origin, floor) for w, origin, floor in workflows}
        if not skipped:
            for workflow_id in set(wanted) ^ set(self._entries):
                raise ValidationError(
                    "anchor.workflows", f"{workflow_id!r} is live in one of log and anchor only"
                )
            for workflow_id, (origin, _floor) in wanted.items():
                if self._origin[workflow_id] != origin:
                    raise ValidationError(
                        "anchor.workflows",
                        f"{workflow_id!r} has origin {origin}, not {self._origin[workflow_id]}",
                    )
        else:
            self._cache.clear()
            self._cached_bytes = 0
            for workflow_id in [
                w for w in self._entries if wanted.get(w, (0,))[0] != self._origin[w]
            ]:
                self._forget(workflow_id)
        for workflow_id, (origin, floor) in wanted.items():
            entries = self._entries.setdefault(workflow_id, [])
            self._origin[workflow_id] = origin
            above = max(floor, self._floor.get(workflow_id, 0))
            self._floor[workflow_id] = above
            entries[:] = [(lsn, skip) for lsn, skip in entries if lsn > above]
            self._weight.setdefault(workflow_id, 0)

    @property
    def cached(self) -> list[str]:
        """Ids of the states held materialized, least recently used first."""
        return list(self._cache)

    def prepare(
        self, batch: Sequence[Mutation], now: float
    ) -> tuple[list[Mutation], dict[str, WorkflowState | None]]:
        """Stamp ``batch`` with ``now`` and apply it to copies; nothing here changes.

        Returns the stamped batch (what gets logged) and the resulting states of the workflows
        it names. Raises ``ValidationError``/``NotFoundError`` for an invalid batch.
        """
        if isinstance(batch, str | bytes) or not isinstance(batch, Sequence):
            raise ValidationError("mutations", "must be a sequence of mutations")
        if not batch:
            raise ValidationError("mutations", "a batch needs at least one mutation")
        stamped = [_stamp(m, now, i) for i, m in enumerate(batch)]
        return stamped, apply_batch(_Materialized(self), stamped)

    def install(
        self, batch: Sequence[Mutation], results: dict[str, WorkflowState | None], lsn: int,
        size: int,
    ) -> None:  # fmt: skip
        """Make the states a prepared batch produced current, stamped with its ``lsn``
        (``size``: its logged size, for the cache estimate)."""
        self._note(mutation_targets(batch), lsn, size)
        for workflow_id, state in results.items():
            if state is not None:
                self._remember(workflow_id, stamped_with(state, lsn))

    def replay(
        self, targets: Sequence[tuple[str, str]], lsn: int, size: int,
        decode: Callable[[], Sequence[Mutation]],
    ) -> None:  # fmt: skip
        """Take a committed batch read from the log: ``targets`` are its ``(op, workflow_id)``
        pairs; ``decode`` gives its mutations, called only if a workflow it touched is cached
        (their cached states are brought forward; the others are only indexed)."""
        touched = {workflow_id for _op, workflow_id in targets}
        cached = {w: self._cache[w] for w in touched if w in self._cache}
        self._note(targets, lsn, size)
        if not cached:
            return
        mutations = [m for m in decode() if m.workflow_id in cached]
        for workflow_id, state in replay_batch(cached, mutations).items():
            if state is not None and workflow_id in self._entries:
                self._remember(workflow_id, stamped_with(state, lsn))

    def _note(self, targets: Sequence[tuple[str, str]], lsn: int, size: int) -> None:
        """Record that the batch ``lsn`` touched the workflows in ``targets``.

        Every workflow is checked before any changes, so a batch that does not describe one
        history (reported as corruption by the store) leaves the table as it was.
        """
        ops: dict[str, list[str]] = {}
        for op, workflow_id in targets:
            ops.setdefault(workflow_id, []).append(op)
        # per workflow: the index of its mutations the current incarnation starts at (0: the
        # workflow goes on; None: the batch deletes it for good)
        starts: dict[str, int | None] = {}
        for workflow_id, kinds in ops.items():
            _check_existence(workflow_id, kinds[0], workflow_id in self._entries, lsn)
            if DELETE_OP not in kinds:
                starts[workflow_id] = 0
                continue
            after = len(kinds) - kinds[::-1].index(DELETE_OP)  # just after the last delete
            if after < len(kinds):  # created again in the same batch
                _check_existence(workflow_id, kinds[after], False, lsn)
            starts[workflow_id] = after if after < len(kinds) else None
        for workflow_id, start in starts.items():
            if start == 0:
                if workflow_id not in self._entries:  # created by this batch
                    self._entries[workflow_id] = []
                    self._origin[workflow_id] = lsn
                    self._floor[workflow_id] = 0
                self._entries[workflow_id].append((lsn, 0))
                # a whole-state replacement resets the estimate: older batches no longer count
                replaced = REPLACE_OP in ops[workflow_id]
                self._weigh(
                    workflow_id, (0 if replaced else self._weight.get(workflow_id, 0)) + size
                )
                continue
            self._forget(workflow_id)
            if start is not None:
                self._entries[workflow_id] = [(lsn, start)]
                self._origin[workflow_id] = lsn
                self._floor[workflow_id] = 0
                self._weigh(workflow_id, size)

    def _weigh(self, workflow_id: str, weight: int) -> None:
        if workflow_id in self._cache:
            self._cached_bytes += weight - self._weight.get(workflow_id, 0)
        self._weight[workflow_id] = weight

    def _forget(self, workflow_id: str) -> None:
        self._entries.pop(workflow_id, None)
        self._origin.pop(workflow_id, None)
        self._floor.pop(workflow_id, None)
        if self._cache.pop(workflow_id, None) is not None:
            self._cached_bytes -= self._weight.get(workflow_id, 0)
        self._weight.pop(workflow_id, None)

    def _remember(self, workflow_id: str, state: WorkflowState) -> None:
        if workflow_id not in self._cache:
            self._cached_bytes += self._weight.get(workflow_id, 0)
        self._cache[workflow_id] = state
        self._cache.move_to_end(workflow_id)
        if self._budget is None:
            return
        while self._cached_bytes > self._budget and len(self._cache) > 1:
            evicted, _ = self._cache.popitem(last=False)
            self._cached_bytes -= self._weight.get(evicted, 0)

    def save_batch(self, state: WorkflowState, now: float) -> list[Mutation]:
        """The batch that stores ``state`` whole: replace it, creating the workflow first if
        it does not exist (with fresh steps, which the replacement then overwrites)."""
        if not isinstance(state, WorkflowState):
            raise ValidationError("state", f"must be a WorkflowState, not {type(state).__name__}")
        workflow_id = state.workflow.id
        batch: list[Mutation] = []
        if workflow_id not in self._entries:
            fresh = tuple(
                msgspec.structs.replace(
                    s, status="pending", attempts=0, started_at=None, ended_at=None, error=None
                )
                for s in state.workflow.steps
            )
            batch.append(
                CreateWorkflow(
                    workflow_id=workflow_id,
                    name=state.workflow.name,
                    steps=fresh,
                    context=state.context,
                    at=now,
                )
            )
        batch.append(ReplaceState(workflow_id=workflow_id, state=state, at=now))
        return batch

    def delete_batch(self, workflow_id: str, now: float) -> list[Mutation]:
        if workflow_id not in self._entries:
            raise NotFoundError(f"workflow_id: no workflow {workflow_id!r}")
        return [DeleteWorkflow(workflow_id=workflow_id, at=now)]


class _Materialized(Mapping[str, WorkflowState]):
    """The table as the mapping ``apply_batch`` reads, materializing what it looks up."""

    def __init__(self, table: StateTable) -> None:
        self._table = table

    def __getitem__(self, workflow_id: str) -> WorkflowState:
        state = self._table.get(workflow_id)
        if state is None:
            raise KeyError(workflow_id)
        return state

    def __iter__(self) -> Iterator[str]:
        return iter(self._table.ids())

    def __len__(self) -> int:
        return len(self._table.ids())


def _check_existence(workflow_id: str, first_op: str, exists: bool, lsn: int) -> None:
    """A logged batch can only create an absent workflow and only change an existing one;
    anything else means the log does not describe one history (the caller reports it)."""
    if not exists and first_op != CREATE_OP:
        raise NotFoundError(f"batch {lsn}: workflow_id: no workflow {workflow_id!r} to {first_op}")
    if exists and first_op == CREATE_OP:
        raise ValidationError("workflow_id", f"batch {lsn} creates {workflow_id!r} again")


def stamped_with(state: WorkflowState, lsn: int) -> WorkflowState:
    """``state`` with ``metadata.last_lsn`` set to ``lsn``."""
    metadata = msgspec.structs.replace(state.metadata, last_lsn=lsn)
    return msgspec.structs.replace(state, metadata=metadata)


def _stamp(m: Mutation, now: float, index: int) -> Mutation:
    if not isinstance(m, msgspec.Struct) or not hasattr(m, "at"):
        raise ValidationError(f"mutations[{index}]", f"is not a mutation: {type(m).__name__}")
    return msgspec.structs.replace(m, at=now)


class TableStore:
    """The Store contract over a :class:`StateTable`; backends supply three hooks.

    ``_writing()`` is entered under the store's lock around validating and logging one batch.
    It yields the function that records the validated batch and returns its LSN (raising
    leaves nothing changed). A backend other processes write to takes its writers' lock on
    entry and first applies their batches to the table, so the batch is validated against the
    latest state. ``_catch_up()`` runs under the store's lock before every read and applies
    what other processes committed since. ``_wait_durable(lsn)`` runs outside the lock and
    returns once that LSN is durable under the backend's guarantees; ``load`` calls it too, so
    no reader sees a state a crash could still take away.
    """

    def __init__(self, table: StateTable, *, clock: Clock, name: str) -> None:
        self._table = table
        self._clock = clock
        self._name = name
        self._mutex = threading.Lock()
        self._closed = False

    def _writing(self) -> AbstractContextManager[BatchLogger]:
        raise NotImplementedError

    def _catch_up(self) -> None:
        raise NotImplementedError

    def _wait_durable(self, lsn: int) -> None:
        raise NotImplementedError

    def _committed(self, stamped: Sequence[Mutation], lsn: int) -> None:
        """Runs after a commit is durable, outside the lock (automatic checkpoints)."""
        return

    def commit(self, batch: Sequence[Mutation]) -> int:
        """Apply ``batch`` atomically and durably; return its LSN (wfstate.store.Store)."""
        return self._commit(lambda _now: batch)

    def save(self, state: WorkflowState) -> int:
        """Store ``state`` whole, creating the workflow if needed; return the batch's LSN."""
        return self._commit(lambda now: self._table.save_batch(state, now))

    def delete(self, workflow_id: str) -> int:
        """Delete ``workflow_id`` (``NotFoundError`` if absent); return the batch's LSN."""
        validate_id(workflow_id, "workflow_id")
        return self._commit(lambda now: self._table.delete_batch(workflow_id, now))

    def load(self, workflow_id: str) -> WorkflowState:
        """The committed, durable state of ``workflow_id``; ``NotFoundError`` if none."""
        validate_id(workflow_id, "workflow_id")
        with self._mutex:
            self._check_open()
            state = self._current(workflow_id)
        if state is None:
            raise NotFoundError(f"workflow_id: no workflow {workflow_id!r}")
        self._wait_durable(state.metadata.last_lsn)
        return state

    def _current(self, workflow_id: str) -> WorkflowState | None:
        """The latest committed state of ``workflow_id`` (None: absent); under the lock."""
        self._catch_up()
        return self._table.get(workflow_id)

    def list_workflows(self) -> list[str]:
        """Ids of every workflow, sorted."""
        with self._mutex:
            self._check_open()
            self._catch_up()
            return self._table.ids()

    def _commit(self, build: Callable[[float], Sequence[Mutation]]) -> int:
        with self._mutex:
            self._check_open()
            with self._writing() as log_batch:
                now = self._clock()
                stamped, results = self._table.prepare(build(now), now)
                lsn, size = log_batch(stamped)
                self._table.install(stamped, results, lsn, size)
        self._wait_durable(lsn)
        self._committed(stamped, lsn)
        return lsn

    def _mark_closed(self) -> bool:
        """Mark the store closed, dropping its materialized states (``StateTable.release``);
        False if it already was."""
        with self._mutex:
            was_open = not self._closed
            self._closed = True
            self._table.release()
            return was_open

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"store {self._name} is closed")
