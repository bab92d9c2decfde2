"""An in-memory store: the Store contract with no durability at all (tests, prototypes).

Same validation, stamping and LSNs as the durable backends; everything is lost with the
process. Thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from wfstate.errors import ClosedError, NotFoundError
from wfstate.ids import validate_id
from wfstate.model import WorkflowState
from wfstate.mutations import Mutation
from wfstate.statetable import Clock, StateTable


class MemoryStore:
    """A :class:`wfstate.store.Store` held in memory."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self._lock = threading.Lock()
        self._table = StateTable()
        self._clock = clock
        self._last_lsn = 0
        self._closed = False

    def commit(self, batch: Sequence[Mutation]) -> int:
        return self._commit(lambda _now: batch)

    def load(self, workflow_id: str) -> WorkflowState:
        validate_id(workflow_id, "workflow_id")
        with self._lock:
            self._check_open()
            state = self._table.get(workflow_id)
        if state is None:
            raise NotFoundError(f"workflow_id: no workflow {workflow_id!r}")
        return state

    def save(self, state: WorkflowState) -> int:
        return self._commit(lambda now: self._table.save_batch(state, now))

    def delete(self, workflow_id: str) -> int:
        validate_id(workflow_id, "workflow_id")
        return self._commit(lambda now: self._table.delete_batch(workflow_id, now))

    def _commit(self, build: Callable[[float], Sequence[Mutation]]) -> int:
        with self._lock:
            self._check_open()
            now = self._clock()
            _, results = self._table.prepare(build(now), now)
            self._last_lsn += 1
            self._table.install(results, self._last_lsn)
            return self._last_lsn

    def list_workflows(self) -> list[str]:
        with self._lock:
            self._check_open()
            return self._table.ids()

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("store is closed")
