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

Hooks (:mod:`wfstate.hooks`)
    Events are emitted on :attr:`WorkflowStore.hooks` only after the call that caused them
    returned durably, on the calling thread, with no lock held: the workflow and step events
    of each batch written through this surface (:func:`~wfstate.hooks.events_for`, ``at`` the
    time the commit was acknowledged), ``CheckpointCreated`` for every checkpoint the store
    handle creates (through this surface, :class:`AutoCheckpoints`, the store's own policy,
    compaction, a session end's final ones; the store calls back once each is durable),
    ``SessionStarted`` / ``SessionEnded``, and ``Recovery`` from :func:`open_store` when the
    log's recovery repaired damage or sessions whose owner died are found. A
    subscriber that raises is reported by the registry (logged, counted, ``on_error``) and
    never fails the call.

Metrics (:mod:`wfstate.metrics`)
    Writes of a batch are timed as ``"commit"``, and ``save``, ``load``, ``checkpoint``,
    ``restore`` under their names (failed calls count as errors); the log reports each
    fdatasync as ``"fsync"``. :meth:`WorkflowStore.metrics` returns them with the store's
    sizes and checks them against the thresholds of the :class:`~wfstate.metrics.Metrics`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from wfstate.backends.local import LocalStore, Session
from wfstate.checkpointindex import CheckpointInfo, CheckpointType
from wfstate.checkpointreports import RecoverySuggestion, StoreStats
from wfstate.config import StoreConfig, resolve_config
from wfstate.errors import NotFoundError, ValidationError, WfstateError
from wfstate.hooks import (
    CheckpointCreated,
    Hooks,
    Recovery,
    SessionEnded,
    SessionStarted,
    events_for,
)
from wfstate.metrics import Metrics, MetricsSnapshot
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

LOGGER: Final = logging.getLogger("wfstate.api")

MILESTONE_TAG: Final = "milestone"
"""The tag of a checkpoint :class:`AutoCheckpoints` takes at a milestone step."""


class AutoCheckpoints(msgspec.Struct, frozen=True, kw_only=True):
    """Checkpoints :class:`WorkflowStore` takes on its own after a batch written through it
    completes steps, on top of the store's :class:`~wfstate.checkpointpolicy.CheckpointPolicy`
    (which already takes ``error`` checkpoints after a failure, with ``on_error``).

    ``every_completed_steps``: a checkpoint (type ``automatic``) each time a workflow's count
    of completed steps reaches a multiple of N, as this handle sees it (None: off).
    ``milestones``: step ids whose completion takes a checkpoint (type ``post_step``, tagged
    :data:`MILESTONE_TAG`, described ``"milestone <step id>"``). One checkpoint per workflow
    per batch. Taken after the batch is durable, by the committing thread; a checkpoint that
    fails is logged on ``wfstate.api`` and counted as a failed ``"checkpoint"`` in the
    metrics, and never fails the write that triggered it.
    """

    every_completed_steps: int | None = None
    milestones: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        n = self.every_completed_steps
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValidationError(
                "every_completed_steps", f"must be an int >= 1 or None, not {n!r}"
            )
        if not isinstance(self.milestones, frozenset) or not all(
            isinstance(step_id, str) for step_id in self.milestones
        ):
            raise ValidationError("milestones", "must be a frozenset of step ids")


def open_store(
    path: str,
    preset: str = "production",
    *,
    hooks: Hooks | None = None,
    metrics: Metrics | None = None,
    auto_checkpoints: AutoCheckpoints | None = None,
    **overrides: object,
) -> WorkflowStore:
    """Open (creating if needed) the store in directory ``path`` with the configuration
    ``resolve_config(preset, **overrides)`` (:mod:`wfstate.config`): the presets are
    ``"development"`` (``durability="none"``: an OS crash loses what the OS had not flushed; a
    checkpoint after every completed step), ``"production"`` (``"always"``: nothing
    acknowledged is ever lost; ``LocalStore.open``'s defaults) and ``"high_throughput"``
    (``"interval"``: an OS crash loses up to the last ~100 ms); ``overrides`` are
    :class:`~wfstate.config.StoreConfig` fields. An unknown preset or option, or a bad value,
    raises ``ValidationError`` naming it before anything is created on disk. Recovery runs
    before this returns; if it repaired damage (``LocalStore.log_damage``) or finds sessions
    whose owner died, a ``Recovery`` event naming them (with a plan per workflow) is emitted
    on ``hooks`` before this returns.
    ``hooks``, ``metrics``, ``auto_checkpoints``: as :class:`WorkflowStore` takes them.
    """
    config = resolve_config(preset, **overrides)
    _check_collaborators(hooks, metrics, auto_checkpoints)
    api = WorkflowStore(
        LocalStore.open(path, **config.open_kwargs()),
        config=config,
        hooks=hooks,
        metrics=metrics,
        auto_checkpoints=auto_checkpoints,
    )
    try:
        crashed = api.crashed_sessions()
    except BaseException:
        api.close()
        raise
    damage = api.store.log_damage
    if crashed or damage:
        api.hooks.emit(Recovery(at=time.time(), damage=damage, crashed_sessions=tuple(crashed)))
    return api


def _check_collaborators(hooks: object, metrics: object, auto_checkpoints: object) -> None:
    if hooks is not None and not isinstance(hooks, Hooks):
        raise ValidationError("hooks", f"must be a wfstate.hooks.Hooks, not {hooks!r}")
    if metrics is not None and not isinstance(metrics, Metrics):
        raise ValidationError("metrics", f"must be a wfstate.metrics.Metrics, not {metrics!r}")
    if auto_checkpoints is not None and not isinstance(auto_checkpoints, AutoCheckpoints):
        raise ValidationError(
            "auto_checkpoints", f"must be a wfstate.AutoCheckpoints, not {auto_checkpoints!r}"
        )


class WorkflowStore:
    """Workflows, steps, agents, outputs, checkpoints and sessions over one opened
    :class:`~wfstate.backends.local.LocalStore` (see the module docstring for the contract of
    every method). Thread-safe as the store is. Use :func:`open_store`, or wrap a store opened
    yourself; closing this closes the store. A context manager. ``config``: what
    :func:`open_store` opened the store with (None for a store the caller opened).

    ``hooks``: the registry events are emitted on (a new one if None; subscribe with
    ``api.hooks.subscribe``). ``metrics``: where operations are timed (a new one if None;
    pass your own for thresholds and ``on_alert``); it becomes the log's sync observer.
    ``auto_checkpoints``: see :class:`AutoCheckpoints` (None: none beyond the store's policy).
    """

    def __init__(
        self,
        store: LocalStore,
        *,
        config: StoreConfig | None = None,
        hooks: Hooks | None = None,
        metrics: Metrics | None = None,
        auto_checkpoints: AutoCheckpoints | None = None,
    ) -> None:
        if not isinstance(store, LocalStore):
            raise ValidationError("store", f"must be a LocalStore, not {type(store).__name__}")
        _check_collaborators(hooks, metrics, auto_checkpoints)
        self.store = store
        self.config = config
        self.hooks = hooks if hooks is not None else Hooks()
        self._metrics = metrics if metrics is not None else Metrics()
        self._auto = auto_checkpoints
        self._completed_seen: dict[str, int] = {}  # workflow -> completed steps last seen
        self._seen_lock = threading.Lock()
        # the log is the engine's; only it can time its fdatasyncs, and only the store sees
        # every checkpoint it takes (its policy's, compaction's, a session end's)
        store.set_sync_observer(self._metrics.observe_sync)
        store.set_checkpoint_observer(self._checkpoint_created)

    # -- workflows ----------------------------------------------------------------------------
    def commit(self, mutations: Sequence[Mutation], *, session: Session | None = None) -> int:
        """Apply ``mutations`` as one atomic batch; durable when this returns; its LSN. Then
        its events are emitted and automatic checkpoints taken (module docstring)."""
        with self._metrics.timed("commit"):
            lsn = self.store.commit(mutations, session=session)
        for event in events_for(mutations, time.time(), lsn=lsn):
            self.hooks.emit(event)
        if self._auto is not None:
            self._auto_checkpoint(self._auto, mutations)
        return lsn

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
        with self._metrics.timed("save"):
            return self.store.save(state, session=session)

    def load(self, workflow_id: str) -> WorkflowState:
        """The committed, durable state of ``workflow_id``; ``NotFoundError`` if none."""
        with self._metrics.timed("load"):
            return self.store.load(workflow_id)

    def delete(self, workflow_id: str, *, session: Session | None = None) -> int:
        """Delete ``workflow_id`` (``NotFoundError`` if absent); its LSN."""
        with self._metrics.timed("commit"):
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
        return self._checkpoint(workflow_id, description, tags, "manual")

    def _checkpoint(
        self, workflow_id: str, description: str, tags: Sequence[str], kind: CheckpointType
    ) -> CheckpointInfo:
        with self._metrics.timed("checkpoint"):
            return self.store.checkpoint(workflow_id, description=description, tags=tags, type=kind)

    def _checkpoint_created(self, info: CheckpointInfo) -> None:
        self.hooks.emit(
            CheckpointCreated(
                at=info.created, workflow_id=info.workflow_id, checkpoint_id=info.id, type=info.type
            )
        )

    def _auto_checkpoint(self, auto: AutoCheckpoints, mutations: Sequence[Mutation]) -> None:
        """Take the checkpoints ``auto`` asks for after the committed ``mutations``."""
        completed: dict[str, list[str]] = {}
        for m in mutations:
            if isinstance(m, SetStepStatus) and m.status == "completed":
                completed.setdefault(m.workflow_id, []).append(m.step_id)
        for workflow_id, step_ids in completed.items():
            reached = [s for s in step_ids if s in auto.milestones]
            every = auto.every_completed_steps
            try:
                if reached:
                    description = " ".join(f"milestone {s}" for s in reached)
                    self._checkpoint(workflow_id, description, (MILESTONE_TAG,), "post_step")
                    self._crossed(workflow_id, every, len(step_ids))  # one per batch
                elif self._crossed(workflow_id, every, len(step_ids)):
                    self._checkpoint(workflow_id, f"every {every} completed steps", (), "automatic")
            except NotFoundError:
                continue  # deleted meanwhile
            except (WfstateError, OSError) as exc:  # timed as a failed checkpoint
                LOGGER.warning("automatic checkpoint of %r failed: %s", workflow_id, exc)

    def _crossed(self, workflow_id: str, every: int | None, completed: int) -> bool:
        """Whether ``workflow_id``'s count of completed steps reached a new multiple of
        ``every`` since this handle last counted it (never counted: since before the batch,
        which completed ``completed`` steps)."""
        if every is None:
            return False
        steps = self.store.load(workflow_id).workflow.steps
        count = sum(1 for step in steps if step.status == "completed")
        with self._seen_lock:
            seen = self._completed_seen.get(workflow_id, max(count - completed, 0))
            self._completed_seen[workflow_id] = count
        return count > seen and count // every > seen // every

    def checkpoints(
        self, workflow_id: str | None = None, *, tag: str | None = None, limit: int | None = None
    ) -> list[CheckpointInfo]:
        """The checkpoints (of ``workflow_id``, carrying ``tag``), newest first."""
        return self.store.checkpoints(workflow_id, tag=tag, limit=limit)

    def restore(self, checkpoint_id: str, *, to_file: bool = False) -> int:
        """Make the checkpoint's state its workflow's current state, as a logged batch (a
        later restore undoes it); its LSN. With ``to_file``, the batch and the workflow state
        file ``workflows/<id>.state`` holding the restored state are one transaction (after
        any crash both happened or neither). ``CorruptionError`` if the checkpoint does not
        read, and nothing changes."""
        with self._metrics.timed("restore"):
            return self.store.restore(checkpoint_id, to_file=to_file)

    def recovery_suggestions(self, workflow_id: str) -> RecoverySuggestion:
        """Which checkpoint to restore the workflow to, which are bad, what restoring undoes."""
        return self.store.recovery_suggestions(workflow_id)

    # -- sessions -----------------------------------------------------------------------------
    def start_session(self, user: str, metadata: Mapping[str, Any] | None = None) -> Session:
        """Start and own a session of ``user``; its start is durable when this returns. Pass
        the handle as ``session=`` to writes; end it with :meth:`end_session` (``Session.end``
        ends it without the ``SessionEnded`` event)."""
        session = self.store.start_session(user, metadata)
        self.hooks.emit(SessionStarted(at=time.time(), session_id=session.id))
        return session

    def resume_session(self, session_id: str) -> Session:
        """Take over a session whose owner died (``LockTimeoutError`` if it is alive); from
        then on the previous owner's writes raise ``StaleOwnerError``."""
        session = self.store.resume_session(session_id)
        self.hooks.emit(SessionStarted(at=time.time(), session_id=session.id, resumed=True))
        return session

    def end_session(self, session: Session, *, final_checkpoint: bool = True) -> str:
        """End ``session`` in one transaction (with a final checkpoint of each workflow it
        wrote); its transaction id. Afterwards the session accepts no writes."""
        txn_id = self.store.end_session(session, final_checkpoint)
        info = next((i for i in self.store.sessions() if i.id == session.id), None)
        ended = info.ended if info is not None and info.ended is not None else time.time()
        workflows = info.workflows if info is not None else ()
        self.hooks.emit(SessionEnded(at=ended, session_id=session.id, workflows=workflows))
        return txn_id

    def export_session(self, session_id: str) -> bytes:
        """Session ``session_id`` as a self-checking bundle (docs/format.md §11.4): its record,
        the durable state of each live workflow it wrote and their checkpoints that read.
        Writes nothing. ``NotFoundError`` for an unknown session."""
        with self._metrics.timed("export_session"):
            return self.store.export_session(session_id)

    def import_session(self, data: bytes) -> SessionInfo:
        """Import a bundle from :meth:`export_session` (of any store) in one transaction: its
        workflows, checkpoints (as imported ones) and session; an imported active session is
        listed by :meth:`crashed_sessions` until resumed. Everything is checked before
        anything is written: ``CorruptionError`` for a damaged bundle, ``ValidationError``
        naming the part that clashes with this store (a known session, a live workflow, a
        known checkpoint). No event is emitted. Returns the session as this store has it."""
        with self._metrics.timed("import_session"):
            return self.store.import_session(data)

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

    def metrics(self) -> MetricsSnapshot:
        """The timings of every operation so far with the store's sizes (``stats()``), after
        checking them against the metrics' thresholds (an alert fires once per crossing, to
        its ``on_alert``)."""
        snapshot = self._metrics.snapshot(self.store.stats())
        self._metrics.check(snapshot)
        return snapshot

    def close(self) -> None:
        """Close the store (sessions this handle owns are released, not ended); idempotent."""
        self.store.close()

    def __enter__(self) -> WorkflowStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
