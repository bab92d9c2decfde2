"""Typed store configuration and named presets: :class:`StoreConfig`, :data:`PRESETS`,
:func:`resolve_config`.

A :class:`StoreConfig` holds every option of :meth:`~wfstate.backends.local.LocalStore.open`
a user tunes, validated when the config is built: an invalid config cannot exist, so nothing
is created on disk for one (``LocalStore.open`` itself creates the store's directories before
the log validates some of these options). ``LocalStore.open(path, **config.open_kwargs())``
opens a store with exactly this configuration.

Not here: ``upgrades``, ``clock`` and ``fs`` (code, not configuration), and the log's
``sync_interval_ms`` (``LocalStore.open`` does not take it; ``interval`` durability syncs
every 100 ms, the log's default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, TypedDict

import msgspec

from wfstate.checkpointpolicy import DEFAULT_POLICY, CheckpointPolicy
from wfstate.errors import ValidationError
from wfstate.format import MAX_PAYLOAD
from wfstate.retention import RetentionPolicy
from wfstate.statetable import DEFAULT_CACHE_BYTES
from wfstate.wal.codec import Compression
from wfstate.wal.log import (
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_MAX_RECORD_SIZE,
    DEFAULT_SEGMENT_SIZE,
    DURABILITY_LEVELS,
    Durability,
)
from wfstate.wal.reader import RecoveryMode, check_mode

MIN_SEGMENT_SIZE: Final = 4096
"""The smallest ``segment_size`` the log accepts."""


class OpenOptions(TypedDict):
    """The keyword arguments of ``LocalStore.open`` a :class:`StoreConfig` sets."""

    durability: Durability
    compression: Compression
    segment_size: int
    max_record_size: int
    checkpoints: CheckpointPolicy
    lock_timeout: float
    cache_bytes: int
    mode: RecoveryMode


class StoreConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How a store is opened. Defaults are ``LocalStore.open``'s own (the ``production`` preset).

    ``durability``: when a commit is acknowledged (``always``: after fdatasync; ``interval``:
    after write, synced every 100 ms; ``none``: after write, the OS flushes when it likes).
    ``compression``: how log records are compressed (checkpoint files follow
    ``checkpoints.compression``). ``segment_size``: bytes per log segment file (>= 4096).
    ``max_record_size``: the largest batch, encoded, the log accepts (1..2**30).
    ``checkpoints``: automatic checkpoints, compaction and retention. ``lock_timeout``: seconds
    to wait for the writers' lock (finite, >= 0). ``cache_bytes``: about how much materialized
    state to keep (>= 0). ``mode``: how recovery treats damage at open; anything but
    ``tolerate_torn_tail`` may discard valid records and is for a store no other process has
    open (docs/format.md §8).

    Construction validates every field and raises :class:`~wfstate.errors.ValidationError`
    naming the first bad one. Immutable, so safe to share between threads.
    """

    durability: Durability = "always"
    compression: Compression = Compression()
    segment_size: int = DEFAULT_SEGMENT_SIZE
    max_record_size: int = DEFAULT_MAX_RECORD_SIZE
    checkpoints: CheckpointPolicy = DEFAULT_POLICY
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    cache_bytes: int = DEFAULT_CACHE_BYTES
    mode: RecoveryMode = "tolerate_torn_tail"

    def __post_init__(self) -> None:
        if self.durability not in DURABILITY_LEVELS:
            raise ValidationError(
                "durability",
                f"must be one of {list(DURABILITY_LEVELS)}, not {self.durability!r}",
            )
        if not isinstance(self.compression, Compression):
            raise ValidationError(
                "compression", f"must be a wfstate.Compression, not {self.compression!r}"
            )
        _check_int("segment_size", self.segment_size, MIN_SEGMENT_SIZE, None)
        _check_int("max_record_size", self.max_record_size, 1, MAX_PAYLOAD)
        if not isinstance(self.checkpoints, CheckpointPolicy):
            raise ValidationError(
                "checkpoints", f"must be a wfstate.CheckpointPolicy, not {self.checkpoints!r}"
            )
        timeout = self.lock_timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (timeout >= 0 and math.isfinite(timeout))
        ):
            raise ValidationError(
                "lock_timeout", f"must be seconds >= 0 and finite, not {timeout!r}"
            )
        _check_int("cache_bytes", self.cache_bytes, 0, None)
        check_mode(self.mode)

    def open_kwargs(self) -> OpenOptions:
        """Exactly the keyword arguments for ``LocalStore.open(path, **...)``: a new dict."""
        return OpenOptions(
            durability=self.durability,
            compression=self.compression,
            segment_size=self.segment_size,
            max_record_size=self.max_record_size,
            checkpoints=self.checkpoints,
            lock_timeout=self.lock_timeout,
            cache_bytes=self.cache_bytes,
            mode=self.mode,
        )


def _check_int(field: str, value: object, minimum: int, maximum: int | None) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bounds = f"in {minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ValidationError(field, f"must be an int {bounds}, not {value!r}")


OPTIONS: Final[tuple[str, ...]] = StoreConfig.__struct_fields__
"""The option names :func:`resolve_config` accepts, in declaration order."""

_MiB: Final = 1024 * 1024

DEVELOPMENT: Final = StoreConfig(
    durability="none",
    compression=Compression(codec="lz4", level=0),
    segment_size=4 * _MiB,
    checkpoints=CheckpointPolicy(
        every_batches=100,
        every_log_bytes=16 * _MiB,
        on_step_end=True,
        retention=RetentionPolicy(keep_last=3),
    ),
    lock_timeout=5.0,
    cache_bytes=64 * _MiB,
)
"""For a laptop or a test run: fast commits, small files, a checkpoint after every step.

``durability="none"``: a commit returns after ``write()``. A crash of the process loses
nothing; a crash of the OS or a power loss loses every commit since the OS last flushed
(on Linux, typically up to about 30 s). lz4 (fast mode) costs the least CPU. 4 MiB segments
and compaction every 16 MiB of log exercise rotation and compaction early and keep the
directory small. A ``post_step`` checkpoint after each completed step, keeping the newest 3
per workflow, gives a restore point per step while debugging. A 5 s lock timeout surfaces a
forgotten second process quickly instead of hanging.
"""

PRODUCTION: Final = StoreConfig()
"""The defaults of ``LocalStore.open``: nothing acknowledged is ever lost.

``durability="always"``: a commit returns once an fdatasync covers it (concurrent commits
share one), so neither a process crash nor an OS crash or power loss loses an acknowledged
commit. zstd level 3 for a dense log. The default checkpoint policy (a checkpoint per
workflow every 1,000 batches, compaction every 16 MiB of log and on a close after at least
1 MiB, an ``error`` checkpoint after a failure) with retention keeping the newest 10
checkpoints per workflow.
"""

HIGH_THROUGHPUT: Final = StoreConfig(
    durability="interval",
    compression=Compression(codec="lz4", level=0),
    segment_size=64 * _MiB,
    checkpoints=CheckpointPolicy(
        every_batches=10_000,
        every_log_bytes=1024 * _MiB,
        compact_on_close_bytes=None,
        retention=RetentionPolicy(keep_last=5),
    ),
    cache_bytes=512 * _MiB,
)
"""For many small commits per second where losing the last instant to an OS crash is
acceptable.

``durability="interval"``: a commit returns after ``write()``; a background thread syncs every
100 ms. A process crash loses nothing; an OS crash or power loss loses up to the last
~100 ms of acknowledged commits (more if a sync is slow). lz4 (fast mode) keeps compression
off the commit path's critical CPU. 64 MiB segments rotate (and fsync on rotation) less
often. Automatic checkpoints every 10,000 batches and compaction every 1 GiB of log take
less time from commits, at the price of longer replays on load and a larger log between
compactions; retention keeps the newest 5. No compaction on close: a shutdown (a deploy)
stays instant, and the next open scans the log since the last compaction instead. A 512 MiB
cache rebuilds states less often.
"""

PRESETS: Final[Mapping[str, StoreConfig]] = MappingProxyType(
    {"development": DEVELOPMENT, "production": PRODUCTION, "high_throughput": HIGH_THROUGHPUT}
)
"""Named configurations (read-only); each one's docstring says what a crash loses."""


def resolve_config(preset: str = "production", **overrides: object) -> StoreConfig:
    """The preset named ``preset`` with ``overrides`` (option name → value) applied.

    Raises :class:`~wfstate.errors.ValidationError`: at ``preset`` for an unknown preset
    name (listing the valid ones); at the option's name for an unknown option (listing the
    valid ones) or for a value of the wrong type or range. Opens and writes nothing.
    """
    base = PRESETS.get(preset) if isinstance(preset, str) else None
    if base is None:
        raise ValidationError(
            "preset", f"unknown preset {preset!r}; valid: {', '.join(sorted(PRESETS))}"
        )
    for name in overrides:
        if name not in OPTIONS:
            raise ValidationError(name, f"unknown option; valid: {', '.join(OPTIONS)}")
    if not overrides:
        return base
    values: dict[str, object] = {name: getattr(base, name) for name in OPTIONS}
    values.update(overrides)
    return StoreConfig(**values)  # type: ignore[arg-type]  # validated by __post_init__
