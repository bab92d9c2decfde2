"""The materialized states of a store and the one way they change: a validated, stamped batch.

Shared by every backend, so that they all validate, stamp and apply identically (the
conformance tests rely on it). Not thread-safe: backends call it under their own lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from wfstate.errors import NotFoundError, ValidationError
from wfstate.model import WorkflowState
from wfstate.mutations import (
    CreateWorkflow,
    DeleteWorkflow,
    Mutation,
    ReplaceState,
    apply_batch,
)

Clock = Callable[[], float]


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
        """Apply a batch read back from the log (already stamped) at ``lsn``."""
        self.install(apply_batch(self._states, batch), lsn)

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
