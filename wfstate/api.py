"""The orchestration surface engines and applications call: :class:`WorkflowStore`.

Every method is one call on the engine (:class:`~wfstate.backends.local.LocalStore`, exposed
as :attr:`WorkflowStore.store` for anything this surface leaves out) and keeps its contract:

* A method that writes returns once what it wrote is durable under the store's durability
  level (the batch's LSN, or what the engine returns: a checkpoint's index entry, a session
  handle, a transaction id). There are no success flags: a failure raises.
* Errors are the engine's, unchanged: ``ValidationError`` (bad input, naming the field, raised
  before anything is written; the fields of a single mutation are named ``mutations[0].<field>``
  by the engine), ``NotFoundError``, ``StaleOwnerError`` (a write in a session taken over by
  another owner), ``StorePoisonedError``, ``ClosedError``, ``LockTimeoutError`` (retryable).
* ``session=``: a :class:`~wfstate.backends.local.Session` this store's handle owns (from
  :meth:`WorkflowStore.start_session` / :meth:`WorkflowStore.resume_session`); the write is
  fenced by its token (``StaleOwnerError`` once another owner took it over, nothing written).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from wfstate.backends.local import LocalStore, Session
from wfstate.checkpointindex import CheckpointInfo
from wfstate.checkpointreports import RecoverySuggestion, StoreStats
from wfstate.config import StoreConfig, resolve_config
from wfstate.errors import ValidationError
from wfstate.model import (
    JSONValue,
    StepStatus,
    WorkflowContext,
    WorkflowState,
    WorkflowStatus,
    WorkflowStep,
)
from wfstate.mutations import (
    CreateWorkflow,
    Mutation,
    PutStepOutput,
    SetAgentState,
    SetStepStatus,
    SetWorkflowStatus,
)
from wfstate.sessions import CrashedSession, SessionInfo


def open_store(path: str, preset: str = "production", **overrides: object) -> WorkflowStore:
    """Open (creating if needed) the store in directory ``path`` with the configuration
    ``resolve_config(preset, **overrides)`` (:mod:`wfstate.config`): the presets are
    ``"development"`` (``durability="none"``: an OS crash loses what the OS had not flushed; a
    checkpoint after every completed step), ``"production"`` (``"always"``: nothing
    acknowledged is ever lost; ``LocalStore.open``'s defaults) and ``"high_throughput"``
    (``"interval"``: an OS crash loses up to the last ~100 ms); ``overrides`` are
    :class:`~wfstate.config.StoreConfig` fields. An unknown preset or option, or a bad value,
    raises ``ValidationError`` naming it before anything is created on disk. Recovery runs
    before this returns.
    """
    config = resolve_config(preset, **overrides)
    return WorkflowStore(LocalStore.open(path, **config.open_kwargs()), config=config)


class WorkflowStore:
    """Workflows, steps, agents, outputs, checkpoints and sessions over one opened
    :class:`~wfstate.backends.local.LocalStore` (see the module docstring for the contract of
    every method). Thread-safe as the store is. Use :func:`open_store`, or wrap a store opened
    yourself; closing this closes the store. A context manager. ``config``: what
    :func:`open_store` opened the store with (None for a store the caller opened)."""

    def __init__(self, store: LocalStore, *, config: StoreConfig | None = None) -> None:
        if not isinstance(store, LocalStore):
            raise ValidationError("store", f"must be a LocalStore, not {type(store).__name__}")
        self.store = store
        self.config = config

    # -- workflows ----------------------------------------------------------------------------
    def commit(self, mutations: Sequence[Mutation], *, session: Session | None = None) -> int:
        """Apply ``mutations`` as one atomic batch; durable when this returns; its LSN."""
        return self.store.commit(mutations, session=session)

    def create_workflow(
        self,
        workflow_id: str,
        name: str,
        steps: Sequence[WorkflowStep],
        *,
        context: WorkflowContext | None = None,
        session: Session | None = None,
    ) -> int:
        """Create ``workflow_id`` (status ``idle``) with fresh ``steps``; its LSN.
        ``ValidationError`` if it exists or a step is invalid (duplicate id, unknown or cyclic
        dependency, not fresh)."""
        if isinstance(steps, str | bytes) or not isinstance(steps, Sequence):
            raise ValidationError("steps", "must be a sequence of WorkflowStep")
        create = CreateWorkflow(
            workflow_id=workflow_id, name=name, steps=tuple(steps), context=context, at=0
        )
        return self.commit([create], session=session)

    def update_workflow(
        self,
        workflow_id: str,
        status: WorkflowStatus,
        *,
        error: str | None = None,
        session: Session | None = None,
    ) -> int:
        """Move the workflow to ``status`` (``ValidationError`` for an illegal transition,
        see :mod:`wfstate.mutations`), recording ``error``; its LSN."""
        change = SetWorkflowStatus(workflow_id=workflow_id, status=status, error=error, at=0)
        return self.commit([change], session=session)

    def update_step(
        self,
        workflow_id: str,
        step_id: str,
        status: StepStatus,
        *,
        output: JSONValue = None,
        error: str | None = None,
        session: Session | None = None,
    ) -> int:
        """Move step ``step_id`` to ``status`` (``ValidationError`` for an illegal transition
        or an unknown step), recording ``error``; a non-None ``output`` is appended as the
        step's next output version in the same batch. Its LSN."""
        change = SetStepStatus(
            workflow_id=workflow_id,
            step_id=step_id,
            status=status,
            error=error,
            output=output,
            at=0,
        )
        return self.commit([change], session=session)

    def update_agent(
        self,
        workflow_id: str,
        agent_id: str,
        status: str,
        *,
        data: Mapping[str, Any] | None = None,
        session: Session | None = None,
    ) -> int:
        """Set agent ``agent_id``'s state in the workflow (created or overwritten): free-text
        ``status`` and JSON-like ``data``; its LSN."""
        if data is not None and not isinstance(data, Mapping):
            raise ValidationError("data", f"must be a mapping or None, not {type(data).__name__}")
        change = SetAgentState(
            workflow_id=workflow_id,
            agent_id=agent_id,
            status=status,
            data={} if data is None else dict(data),
            at=0,
        )
        return self.commit([change], session=session)

    def add_output(
        self,
        workflow_id: str,
        step_id: str,
        data: JSONValue,
        *,
        agent_id: str | None = None,
        session: Session | None = None,
    ) -> int:
        """Append JSON-like ``data`` as step ``step_id``'s next output version (1 for the
        first), attributed to ``agent_id``; its LSN."""
        put = PutStepOutput(
            workflow_id=workflow_id, step_id=step_id, data=data, agent_id=agent_id, at=0
        )
        return self.commit([put], session=session)

    def save(self, state: WorkflowState, *, session: Session | None = None) -> int:
        """Store ``state`` whole (the workflow is created if absent); its LSN."""
        return self.store.save(state, session=session)

    def load(self, workflow_id: str) -> WorkflowState:
        """The committed, durable state of ``workflow_id``; ``NotFoundError`` if none."""
        return self.store.load(workflow_id)

    def delete(self, workflow_id: str, *, session: Session | None = None) -> int:
        """Delete ``workflow_id`` (``NotFoundError`` if absent); its LSN."""
        return self.store.delete(workflow_id, session=session)

    def list_workflows(self) -> list[str]:
        """Ids of every workflow, sorted."""
        return self.store.list_workflows()

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint(
        self, workflow_id: str, *, description: str = "", tags: Sequence[str] = ()
    ) -> CheckpointInfo:
        """Checkpoint the workflow's committed state (a ``manual`` checkpoint); its index entry,
        returned once the checkpoint is durable."""
        return self.store.checkpoint(workflow_id, description=description, tags=tags)

    def checkpoints(
        self, workflow_id: str | None = None, *, tag: str | None = None, limit: int | None = None
    ) -> list[CheckpointInfo]:
        """The checkpoints (of ``workflow_id``, carrying ``tag``), newest first."""
        return self.store.checkpoints(workflow_id, tag=tag, limit=limit)

    def restore(self, checkpoint_id: str) -> int:
        """Make the checkpoint's state its workflow's current state, as a logged batch (a
        later restore undoes it); its LSN. ``CorruptionError`` if the checkpoint does not read,
        and nothing changes."""
        return self.store.restore(checkpoint_id)

    def recovery_suggestions(self, workflow_id: str) -> RecoverySuggestion:
        """Which checkpoint to restore the workflow to, which are bad, what restoring undoes."""
        return self.store.recovery_suggestions(workflow_id)

    # -- sessions -----------------------------------------------------------------------------
    def start_session(self, user: str, metadata: Mapping[str, Any] | None = None) -> Session:
        """Start and own a session of ``user``; its start is durable when this returns. Pass
        the handle as ``session=`` to writes; end it with :meth:`end_session`."""
        return self.store.start_session(user, metadata)

    def resume_session(self, session_id: str) -> Session:
        """Take over a session whose owner died (``LockTimeoutError`` if it is alive); from
        then on the previous owner's writes raise ``StaleOwnerError``."""
        return self.store.resume_session(session_id)

    def end_session(self, session: Session, *, final_checkpoint: bool = True) -> str:
        """End ``session`` in one transaction (with a final checkpoint of each workflow it
        wrote); its transaction id. Afterwards the session accepts no writes."""
        return self.store.end_session(session, final_checkpoint)

    def sessions(self) -> list[SessionInfo]:
        """Every session the store knows, active or ended, sorted by id."""
        return self.store.sessions()

    def crashed_sessions(self) -> list[CrashedSession]:
        """Active sessions whose owner died, each with a plan per workflow it wrote."""
        return self.store.detect_crashed_sessions()

    # -- figures and lifetime -----------------------------------------------------------------
    def stats(self) -> StoreStats:
        """Sizes of the log and the checkpoints (see :class:`StoreStats`)."""
        return self.store.stats()

    def close(self) -> None:
        """Close the store (sessions this handle owns are released, not ended); idempotent."""
        self.store.close()

    def __enter__(self) -> WorkflowStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
