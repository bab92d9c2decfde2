"""Which checkpoints a retention policy drops, and which it folds first: a pure plan.

:func:`plan_retention` decides; the store carries the plan out (docs/format.md §9.5): folds
first, each committed by its own ``CHECKPOINT`` record, then one ``CHECKPOINT_DROP`` record,
then the files. Planning reads nothing and changes nothing, which is what a dry run shows.

What a plan never drops, whatever the policy says:

- the newest checkpoint of each live workflow's incarnation that is not known to be bad, when
  it is usable (``lsn >=`` the workflow's floor): with the log before the floor discarded, it
  may be the only way to rebuild the workflow;
- the parent of a checkpoint that stays, unless that checkpoint is folded into a full one
  first (a fold makes a checkpoint depend on nothing).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Final

import msgspec

from wfstate.checkpointindex import CheckpointIndex, CheckpointInfo
from wfstate.errors import ValidationError


class RetentionPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How many checkpoints to keep. ``None`` turns a limit off.

    ``keep_last``: per workflow incarnation, the newest N. ``max_age``: seconds; older ones go.
    ``max_bytes``: the checkpoint files of the whole store; the oldest go first until the
    rest fit (the protected ones stay even if they alone exceed it).

    ``ended_sessions``: seconds an ended session stays in the store's session table after
    its end; a compaction leaves older ones out of its anchor, so the table (and every
    anchor) does not grow with every session ever run. A forgotten session is no longer
    listed, exported or resumable (``NotFoundError``); its record file
    ``sessions/<id>.session`` stays as the durable record of it. ``None``: never forget.
    """

    keep_last: int | None = 10
    max_age: float | None = None
    max_bytes: int | None = None
    ended_sessions: float | None = 30 * 24 * 3600.0

    def __post_init__(self) -> None:
        if self.keep_last is not None and (
            isinstance(self.keep_last, bool) or not isinstance(self.keep_last, int)
            or self.keep_last < 1
        ):  # fmt: skip
            raise ValidationError(
                "keep_last", f"must be an int >= 1 or None, not {self.keep_last!r}"
            )
        if self.max_age is not None and (
            isinstance(self.max_age, bool) or not isinstance(self.max_age, int | float)
            or not self.max_age > 0
        ):  # fmt: skip
            raise ValidationError("max_age", f"must be seconds > 0 or None, not {self.max_age!r}")
        if self.ended_sessions is not None and (
            isinstance(self.ended_sessions, bool)
            or not isinstance(self.ended_sessions, int | float)
            or not self.ended_sessions >= 0
        ):
            raise ValidationError(
                "ended_sessions", f"must be seconds >= 0 or None, not {self.ended_sessions!r}"
            )
        if self.max_bytes is not None and (
            isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int)
            or self.max_bytes < 0
        ):  # fmt: skip
            raise ValidationError(
                "max_bytes", f"must be an int >= 0 or None, not {self.max_bytes!r}"
            )


DEFAULT_RETENTION: Final = RetentionPolicy()


class RetentionPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What a policy does to an index: ``fold`` (rewritten as full checkpoints, committed
    first), then ``drop`` (leave the index; their files are deleted). ``bytes_before`` is the
    size of every checkpoint file now; ``bytes_dropped`` what the drops free."""

    drop: tuple[CheckpointInfo, ...]
    fold: tuple[CheckpointInfo, ...]
    kept: int
    bytes_before: int
    bytes_dropped: int


def plan_retention(
    index: CheckpointIndex,
    live: Mapping[str, tuple[int, int]],
    policy: RetentionPolicy,
    now: float,
    *,
    bad: Collection[str] = (),
) -> RetentionPlan:
    """The plan of ``policy`` for ``index`` at time ``now``.

    ``live``: each live workflow's ``(origin, floor)``. ``bad``: ids known not to read (they
    are dropped whatever the policy, unless something kept depends on them, and never
    protected).
    """
    entries = index.all()  # newest first
    protected = _protected(index, live, bad)
    drop: set[str] = {info.id for info in entries if info.id in bad and info.id not in protected}
    groups: dict[tuple[str, int], list[CheckpointInfo]] = {}
    for info in entries:
        groups.setdefault((info.workflow_id, info.origin), []).append(info)
    for group in groups.values():
        for rank, info in enumerate(group):
            if info.id in protected:
                continue
            too_many = policy.keep_last is not None and rank >= policy.keep_last
            too_old = policy.max_age is not None and info.created < now - policy.max_age
            if too_many or too_old:
                drop.add(info.id)
    if policy.max_bytes is not None:
        remaining = sum(info.size for info in entries if info.id not in drop)
        for info in sorted(entries, key=lambda i: (i.created, i.lsn)):  # oldest first
            if remaining <= policy.max_bytes:
                break
            if info.id not in drop and info.id not in protected:
                drop.add(info.id)
                remaining -= info.size
    fold = _folds(entries, drop)
    dropped = [info for info in entries if info.id in drop]
    return RetentionPlan(
        drop=tuple(dropped),
        fold=tuple(fold),
        kept=len(entries) - len(dropped),
        bytes_before=sum(info.size for info in entries),
        bytes_dropped=sum(info.size for info in dropped),
    )


def _protected(
    index: CheckpointIndex, live: Mapping[str, tuple[int, int]], bad: Collection[str]
) -> set[str]:
    protected: set[str] = set()
    for workflow_id, (origin, floor) in live.items():
        for info in index.of_workflow(workflow_id, origin):
            if info.lsn >= floor and info.id not in bad:
                protected.add(info.id)
                break
    return protected


def _folds(entries: Sequence[CheckpointInfo], drop: set[str]) -> list[CheckpointInfo]:
    """The kept incremental checkpoints whose parent is dropped: each becomes full first."""
    return [
        info
        for info in entries
        if info.id not in drop and info.parent is not None and info.parent in drop
    ]
