"""The ``Store`` contract: what every backend (local directory, memory, PostgreSQL) provides.

A store holds workflow states and changes them only through committed batches of mutations
(:mod:`wfstate.mutations`). The contract, which the conformance tests check for every backend:

* ``commit(batch)`` validates the whole batch against the current states first; an invalid
  batch raises (``ValidationError`` / ``NotFoundError`` naming the field) and changes nothing.
  A valid batch gets one LSN and is durable, under the backend's durability level, when
  ``commit`` returns. After a crash a batch is either wholly there or wholly absent.
* The store stamps each mutation's ``at`` with its own clock at commit; what the caller put
  there is replaced. ``metadata.last_lsn`` of every state a batch touched is that batch's LSN.
* ``load`` never returns a state that a crash could still take away: it waits until the batch
  that produced it is durable.
* Commits from several threads are serialized in LSN order; each validates against the result
  of the ones before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from wfstate.model import WorkflowState
from wfstate.mutations import Mutation


class Store(Protocol):
    """The operations every backend provides. See the module docstring for the contract."""

    def commit(self, batch: Sequence[Mutation]) -> int:
        """Apply ``batch`` atomically and durably; return its LSN."""
        ...

    def load(self, workflow_id: str) -> WorkflowState:
        """The committed state of ``workflow_id``; ``NotFoundError`` if there is none."""
        ...

    def save(self, state: WorkflowState) -> int:
        """Store ``state`` whole (creating the workflow if needed); return the batch's LSN."""
        ...

    def delete(self, workflow_id: str) -> int:
        """Delete ``workflow_id``; ``NotFoundError`` if absent. Returns the batch's LSN."""
        ...

    def list_workflows(self) -> list[str]:
        """Ids of every workflow in the store, sorted."""
        ...

    def close(self) -> None:
        """Release the store; idempotent."""
        ...
