"""When a store takes checkpoints and compacts on its own: :class:`CheckpointPolicy`.

Automatic checkpoints are taken right after the commit that triggers them, by the committing
thread, and only once that commit is durable; a failure to take one is reported (logged and
counted in the store's stats) but never turns the successful commit into an error. Turn a
trigger off with ``None``/``False``.
"""

from __future__ import annotations

from typing import Final

import msgspec

from wfstate.errors import ValidationError
from wfstate.retention import DEFAULT_RETENTION, RetentionPolicy
from wfstate.wal.codec import Compression

CHECKPOINT_COMPRESSION: Final = Compression(codec="zstd", level=1)
"""zstd level 1: on the 1,000-step reference state it compresses 1.2 MB about 1.4x faster
than the log's level 3 for a file 9 % larger (checkpoints are written whole, often)."""


class CheckpointPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """What a store does on its own (module docstring).

    ``every_batches``: checkpoint a workflow once this many batches changed it since its newest
    checkpoint (bounds the replay a load does). ``every_log_bytes``: compact (checkpoint what
    the log holds uncovered, discard the log before, apply ``retention``) once this many bytes
    of batches were logged since the last compaction this process saw (bounds the log, and so
    the scan every open and every recovery makes of it: 16 MiB by default, as SQLite bounds
    its WAL; the bench's P5b, reopen and one load, takes 1.0-1.5 s on the big store's 70 MB
    log-only store, 138-199 ms on the default-policy one as a crash leaves it).
    ``compact_on_close_bytes``: :meth:`~wfstate.backends.local.LocalStore.close` first
    compacts (and applies ``retention``) when at least this many bytes of batches were logged
    or read since the last compaction the handle saw, so that the next open scans no log, as
    SQLite checkpoints its WAL when its last connection closes (1 MiB by default: a close after
    little work stays instant; after heavy work it takes as long as a compaction, about 3 s
    for BENCHMARKS.md's big store of 100 workflows, and P5b after it 8-9 ms). After a crash
    there was no such close: the open scans up to ``every_log_bytes`` of log.
    ``on_step_start`` / ``on_step_end``: a ``pre_step`` checkpoint after a batch that starts a
    step (status ``running``), a ``post_step`` one after a batch that ends one (``completed``,
    ``skipped``). ``on_error``: an ``error`` checkpoint after a batch that fails a step or the
    workflow. ``incremental``: write incremental checkpoints when this process holds the
    parent's state, at most ``max_chain`` links deep; full ones otherwise. ``compression``:
    how checkpoint files are compressed (the log's setting is separate). ``retention``: what
    :meth:`~wfstate.backends.local.LocalStore.retain` keeps by default and after an
    automatic compaction.
    """

    every_batches: int | None = 1000
    every_log_bytes: int | None = 16 * 1024 * 1024
    compact_on_close_bytes: int | None = 1024 * 1024
    on_step_start: bool = False
    on_step_end: bool = False
    on_error: bool = True
    incremental: bool = True
    max_chain: int = 8
    compression: Compression = CHECKPOINT_COMPRESSION
    retention: RetentionPolicy = DEFAULT_RETENTION

    def __post_init__(self) -> None:
        for field in ("every_batches", "every_log_bytes", "compact_on_close_bytes"):
            value = getattr(self, field)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValidationError(field, f"must be an int >= 1 or None, not {value!r}")
        for field in ("on_step_start", "on_step_end", "on_error", "incremental"):
            if not isinstance(getattr(self, field), bool):
                raise ValidationError(field, f"must be a bool, not {getattr(self, field)!r}")
        if (
            isinstance(self.max_chain, bool)
            or not isinstance(self.max_chain, int)
            or not (1 <= self.max_chain <= 64)
        ):
            raise ValidationError("max_chain", f"must be an int in 1..64, not {self.max_chain!r}")
        if not isinstance(self.compression, Compression):
            raise ValidationError("compression", "must be a wfstate.wal.Compression")
        if not isinstance(self.retention, RetentionPolicy):
            raise ValidationError("retention", "must be a wfstate.retention.RetentionPolicy")


DEFAULT_POLICY: Final = CheckpointPolicy()

MANUAL_ONLY: Final = CheckpointPolicy(
    every_batches=None,
    every_log_bytes=None,
    compact_on_close_bytes=None,
    on_error=False,
    incremental=True,
)
"""No automatic checkpoints or compaction (not on close either): only what the application
asks for."""
