"""A real full disk (DESIGN.md §10 tier 4): a store on a 512 KiB tmpfs, filled up with a
filler file written first, so ENOSPC hits a batch's log append, a checkpoint's file or a
two-phase commit's prepare (:mod:`tests.faultinject`, section "real ENOSPC").

Each scenario checks: the failing call raises the error the store's contract names, caused by
ENOSPC (``StorePoisonedError`` for the log, after which every write is refused;
``StorageIOError``, a ``WfstateError`` and an ``OSError`` with ``errno`` ENOSPC, for a
checkpoint file and ``TransactionError`` for a prepare, after which the store goes on and
leaves no temp file: a full disk fails a write, before any sync, so it is not fatal); nothing
acknowledged is lost; and once the filler is deleted a reopened store holds every
acknowledged batch and takes new ones.

Mounting needs root. Without it the tests are skipped, saying why, except under ``CI=true``
(CI runs as root on this machine kind), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faultinject import ENOSPC_SCENARIOS, EnospcOutcome, MountRefused, fill, small_disk


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    try:
        with small_disk(tmp_path / "disk") as mounted:
            yield mounted
    except MountRefused as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must be able to mount a small tmpfs: {exc}")
        pytest.skip(str(exc))


RAISED = {
    "enospc_log_append": "StorePoisonedError",
    "enospc_checkpoint": "StorageIOError",
    "enospc_prepare": "TransactionError",
}
"""What the failing call of each scenario raises (the module docstring's contract)."""


@pytest.mark.parametrize("scenario", ENOSPC_SCENARIOS, ids=lambda f: f.__name__)
def test_a_full_disk_loses_nothing_acknowledged_and_the_store_recovers_once_space_is_freed(
    disk: Path, scenario: Callable[[Path], EnospcOutcome], crash_report: list[str]
) -> None:
    outcome = scenario(disk)
    crash_report.append(
        f"ENOSPC in {outcome.scenario}: {outcome.error}, later writes {outcome.later_writes}, "
        f"{outcome.recovered}/{outcome.acknowledged} acknowledged batches recovered"
    )
    assert not outcome.problems, outcome.problems
    assert outcome.error == f"{RAISED[scenario.__name__]} (ENOSPC)"
    assert outcome.recovered == outcome.acknowledged > 0


def test_the_filler_leaves_the_free_space_asked_for(disk: Path) -> None:
    """The scenarios rely on it: without it no ENOSPC would come where they expect it."""
    fill(disk, 48 * 1024)
    st = os.statvfs(disk)
    assert 40 * 1024 <= st.f_bavail * st.f_frsize <= 48 * 1024


def test_without_root_mounting_is_refused_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the fixture turns into a skip (or, under CI, a failure)."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(MountRefused, match="needs root"), small_disk(tmp_path / "disk"):
        pass
