"""The asyncio twin of :class:`~wfstate.api.WorkflowStore`: :class:`AsyncWorkflowStore`.

Every blocking method of ``WorkflowStore`` has a coroutine of the same name and parameters
here that runs it with :func:`asyncio.to_thread`, so the event loop keeps running while the
call waits for the disk (an fdatasync, the writers' lock, recovery at open). Results, errors
and durability are the synchronous method's: when the coroutine returns, what it wrote is
durable; when it raises, the same typed error is raised.

Why threads of the default executor and not one dedicated thread per store: the store is
thread-safe and serializes commits itself, in LSN order; calls that overlap in time share one
fdatasync (group commit), which a single thread would forbid. Calls awaited one after the other
(one task) run in that order, as their synchronous twins would; calls of concurrent tasks
are concurrent, as calls of threads are, and each validates against the commits before it.

Cancelling a coroutine does not cancel its call: the thread finishes it (a commit may still
become durable); only the result is dropped. Hook subscribers run in the worker thread that
made the call, not on the event loop: one that touches the loop must use
``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from wfstate.api import AutoCheckpoints, WorkflowStore, open_store
from wfstate.backends.local import Session
from wfstate.checkpointindex import CheckpointInfo
from wfstate.checkpointreports import RecoverySuggestion, StoreStats
from wfstate.errors import ValidationError
from wfstate.hooks import Hooks
from wfstate.metrics import Metrics, MetricsSnapshot
from wfstate.model import (
    JSONValue,
    StepStatus,
    WorkflowContext,
    WorkflowState,
    WorkflowStatus,
    WorkflowStep,
)
from wfstate.mutations import Mutation
from wfstate.sessions import CrashedSession, SessionInfo


class AsyncWorkflowStore:
    """A :class:`~wfstate.api.WorkflowStore` for asyncio code (module docstring): each
    coroutine is its synchronous twin, run in a worker thread. ``sync``: the wrapped store,
    for code that runs in threads. Use :meth:`open`, or wrap a ``WorkflowStore``. An async
    context manager."""

    def __init__(self, api: WorkflowStore) -> None:
        if not isinstance(api, WorkflowStore):
            raise ValidationError("api", f"must be a WorkflowStore, not {type(api).__name__}")
        self.sync = api

    @classmethod
    async def open(
        cls,
        path: str,
        preset: str = "production",
        *,
        hooks: Hooks | None = None,
        metrics: Metrics | None = None,
        auto_checkpoints: AutoCheckpoints | None = None,
        **overrides: object,
    ) -> AsyncWorkflowStore:
        """:func:`~wfstate.api.open_store` in a worker thread (recovery can take a while)."""
        api = await asyncio.to_thread(
            open_store,
            path,
            preset,
            hooks=hooks,
            metrics=metrics,
            auto_checkpoints=auto_checkpoints,
            **overrides,
        )
        return cls(api)

    # -- workflows ----------------------------------------------------------------------------
    async def commit(self, mutations: Sequence[Mutation], *, session: Session | None = None) -> int:
        return await asyncio.to_thread(self.sync.commit, mutations, session=session)

    async def create_workflow(
        self,
        workflow_id: str,
        name: str,
        steps: Sequence[WorkflowStep],
        *,
        context: WorkflowContext | None = None,
        session: Session | None = None,
    ) -> int:
        return await asyncio.to_thread(
            self.sync.create_workflow, workflow_id, name, steps, context=context, session=session
        )

    async def update_workflow(
        self,
        workflow_id: str,
        status: WorkflowStatus,
        *,
        error: str | None = None,
        session: Session | None = None,
    ) -> int:
        return await asyncio.to_thread(
            self.sync.update_workflow, workflow_id, status, error=error, session=session
        )

    async def update_step(
        self,
        workflow_id: str,
        step_id: str,
        status: StepStatus,
        *,
        output: JSONValue = None,
        error: str | None = None,
        session: Session | None = None,
    ) -> int:
        return await asyncio.to_thread(
            self.sync.update_step,
            workflow_id,
            step_id,
            status,
            output=output,
            error=error,
            session=session,
        )

    async def update_agent(
        self,
        workflow_id: str,
        agent_id: str,
        status: str,
        *,
        data: Mapping[str, Any] | None = None,
        session: Session | None = None,
    ) -> int:
        return await asyncio.to_thread(
            self.sync.update_agent, workflow_id, agent_id, status, data=data, session=session
        )

    async def add_output(
        self,
        workflow_id: str,
        step_id: str,
        data: JSONValue,
        *,
        agent_id: str | None = None,
        session: Session | None = None,
    ) -> int:
        return await asyncio.to_thread(
            self.sync.add_output, workflow_id, step_id, data, agent_id=agent_id, session=session
        )

    async def save(self, state: WorkflowState, *, session: Session | None = None) -> int:
        return await asyncio.to_thread(self.sync.save, state, session=session)

    async def load(self, workflow_id: str) -> WorkflowState:
        return await asyncio.to_thread(self.sync.load, workflow_id)

    async def delete(self, workflow_id: str, *, session: Session | None = None) -> int:
        return await asyncio.to_thread(self.sync.delete, workflow_id, session=session)

    async def list_workflows(self) -> list[str]:
        return await asyncio.to_thread(self.sync.list_workflows)

    # -- checkpoints --------------------------------------------------------------------------
    async def checkpoint(
        self, workflow_id: str, *, description: str = "", tags: Sequence[str] = ()
    ) -> CheckpointInfo:
        return await asyncio.to_thread(
            self.sync.checkpoint, workflow_id, description=description, tags=tags
        )

    async def checkpoints(
        self, workflow_id: str | None = None, *, tag: str | None = None, limit: int | None = None
    ) -> list[CheckpointInfo]:
        return await asyncio.to_thread(self.sync.checkpoints, workflow_id, tag=tag, limit=limit)

    async def restore(self, checkpoint_id: str, *, to_file: bool = False) -> int:
        return await asyncio.to_thread(self.sync.restore, checkpoint_id, to_file=to_file)

    async def recovery_suggestions(self, workflow_id: str) -> RecoverySuggestion:
        return await asyncio.to_thread(self.sync.recovery_suggestions, workflow_id)

    # -- sessions -----------------------------------------------------------------------------
    async def start_session(self, user: str, metadata: Mapping[str, Any] | None = None) -> Session:
        return await asyncio.to_thread(self.sync.start_session, user, metadata)

    async def resume_session(self, session_id: str) -> Session:
        return await asyncio.to_thread(self.sync.resume_session, session_id)

    async def end_session(self, session: Session, *, final_checkpoint: bool = True) -> str:
        return await asyncio.to_thread(
            self.sync.end_session, session, final_checkpoint=final_checkpoint
        )

    async def export_session(self, session_id: str) -> bytes:
        return await asyncio.to_thread(self.sync.export_session, session_id)

    async def import_session(self, data: bytes) -> SessionInfo:
        return await asyncio.to_thread(self.sync.import_session, data)

    async def sessions(self) -> list[SessionInfo]:
        return await asyncio.to_thread(self.sync.sessions)

    async def crashed_sessions(self) -> list[CrashedSession]:
        return await asyncio.to_thread(self.sync.crashed_sessions)

    # -- figures and lifetime -----------------------------------------------------------------
    async def stats(self) -> StoreStats:
        return await asyncio.to_thread(self.sync.stats)

    async def metrics(self) -> MetricsSnapshot:
        return await asyncio.to_thread(self.sync.metrics)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncWorkflowStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
