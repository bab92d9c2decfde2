"""The materialized states of a store and the one way they change: a validated, stamped batch.

Shared by every backend, so that they all validate, stamp and apply identically (the
conformance tests rely on it). :class:`StateTable` is not thread-safe; :class:`TableStore`
wraps it with the lock, the commit sequence and the read side of the Store contract, leaving a
backend only how a batch is logged and when it is durable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import msgspec

from wfstate.errors import ClosedError, NotFoundError, ValidationError
from wfstate.ids import validate_id
from wfstate.model import WorkflowState
from wfstate.mutations import (
    CreateWorkflow,
    DeleteWorkflow,
    Mutation,
    ReplaceState,
    apply_batch,
    replay_batch,
)

Clock = Callable[[], float]
BatchLogger = Callable[[list["Mutation"]], int]


class StateTable:
    """Workflow id → committed state, with the LSN of the batch that last changed it."""

    def __init__(self) -> None:
        self._states: dict[str, WorkflowState] = {}

    def get(self, workflow_id: str) -> WorkflowState | None:
        return self._states.get(workflow_id)

    def ids(self) -> list[str]:
        return sorted(self._states)

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
        return stamped, apply_batch(self._states, stamped)

    def install(self, results: dict[str, WorkflowState | None], lsn: int) -> None:
        """Make the states a prepared batch produced current, stamped with its ``lsn``."""
        for workflow_id, state in results.items():
            if state is None:
                self._states.pop(workflow_id, None)
            else:
                metadata = msgspec.structs.replace(state.metadata, last_lsn=lsn)
                self._states[workflow_id] = msgspec.structs.replace(state, metadata=metadata)

    def replay(self, batch: Sequence[Mutation], lsn: int) -> None:
        """Apply a batch read back from the log (already stamped and validated) at ``lsn``."""
        self.install(replay_batch(self._states, batch), lsn)

    def save_batch(self, state: WorkflowState, now: float) -> list[Mutation]:
        """The batch that stores ``state`` whole: replace it, creating the workflow first if
        it does not exist (with fresh steps, which the replacement then overwrites)."""
        if not isinstance(state, WorkflowState):
            raise ValidationError("state", f"must be a WorkflowState, not {type(state).__name__}")
        workflow_id = state.workflow.id
        batch: list[Mutation] = []
        if workflow_id not in self._states:
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
        if workflow_id not in self._states:
            raise NotFoundError(f"workflow_id: no workflow {workflow_id!r}")
        return [DeleteWorkflow(workflow_id=workflow_id, at=now)]


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
            self._catch_up()
            state = self._table.get(workflow_id)
        if state is None:
            raise NotFoundError(f"workflow_id: no workflow {workflow_id!r}")
        self._wait_durable(state.metadata.last_lsn)
        return state

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
                lsn = log_batch(stamped)
                self._table.install(results, lsn)
        self._wait_durable(lsn)
        return lsn

    def _mark_closed(self) -> bool:
        """Mark the store closed; False if it already was."""
        with self._mutex:
            was_open = not self._closed
            self._closed = True
            return was_open

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"store {self._name} is closed")
