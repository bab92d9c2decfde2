"""An in-memory store: the Store contract with no durability at all (tests, prototypes).

Same validation, stamping and LSNs as the durable backends; everything is lost with the
process. Thread-safe.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext

from wfstate.mutations import Mutation
from wfstate.statetable import BatchLogger, Clock, StateTable, TableStore


class MemoryStore(TableStore):
    """A :class:`wfstate.store.Store` held in memory."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        super().__init__(StateTable(), clock=clock, name="<memory>")
        self._last_lsn = 0

    def _writing(self) -> AbstractContextManager[BatchLogger]:
        return nullcontext(self._log_batch)

    def _log_batch(self, stamped: list[Mutation]) -> tuple[int, int]:
        self._last_lsn += 1
        return self._last_lsn, 0

    def _catch_up(self) -> None:
        return

    def _wait_durable(self, lsn: int) -> None:
        return

    def close(self) -> None:
        """Release the store; idempotent."""
        self._mark_closed()
